"""Metrics of Matryoshka embeddings at each width they were trained for: the first N
dimensions of every embedding, renormalised. Each metric at a width is keyed like its
full-width name with `@dim<N>` after it (ndcg@10@dim128, spearman@dim64); the full-width
keys stay as they are."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from finetuner.errors import FinetunerError


def truncate(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` dimensions of each row, at unit length (float32)."""
    prefix = np.asarray(embeddings, dtype=np.float32)[:, :dim]
    norms = np.linalg.norm(prefix, axis=1, keepdims=True)
    return prefix / np.maximum(norms, 1e-12)  # as torch's normalize: a zero row stays zero


def check_dim(dim, width: int, parameter: str = "truncate_dim") -> int:
    """A width to truncate `width`-d embeddings to: a whole number from 1 to width."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= width:
        raise FinetunerError(
            f"parameter {parameter}: invalid value {dim!r}. Valid: a whole number from 1 to "
            f"{width}, the model's embedding width."
        )
    return dim


def at_dims(
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    first: np.ndarray,
    second: np.ndarray,
    dims=(),
) -> dict[str, float]:
    """`score(first, second)` at full width, then at each of `dims` narrower than it, on
    both sides truncated."""
    metrics = score(first, second)
    width = first.shape[1]
    for dim in dims:
        dim = int(dim)  # KFP may hand a list's numbers over as floats
        if dim < width:
            at = score(truncate(first, dim), truncate(second, dim))
            metrics |= {f"{name}@dim{dim}": value for name, value in at.items()}
    return metrics
