"""Matryoshka embeddings (Kusupati et al. 2022, as sentence-transformers' MatryoshkaLoss):
the loss is applied to the first N dimensions of the embeddings, renormalised, for each N
of `matryoshka_dims`, and the weighted losses are summed. The model then ranks well with
its embeddings cut to any of those widths.

The embeddings are computed once per batch; only the loss runs once per width. It wraps
any loss that takes the embeddings alone (finetuner.training.losses): ours and the
parameter-free pytorch-metric-learning losses. A loss that learns a weight per class
(ArcFace and the like) holds class centres of the full width, which a truncated embedding
cannot be compared with: it is refused.

torch is imported inside the functions, so checking the options stays instant.
"""

from __future__ import annotations

from finetuner.errors import FinetunerError
from finetuner.training.losses import OWN_LOSS_OPTIONS, Loss, learns_class_weights

# How many of a loss's first arguments are embeddings, by the kind of data (see losses).
EMBEDDING_ARGS = {"pairs": 2, "labeled": 1, "scored": 2, "margins": 3}


def _whole(value) -> int | None:
    """An integer given as one (or, as KFP may hand a list over, as a float like 128.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if float(value).is_integer() else None


def check_options(dims: list, weights: list) -> tuple[list[int], list[float]]:
    """The dims as integers and their weights (1 each when none are given), checked for
    what needs no model: positive, distinct whole numbers, and one positive weight each."""
    if not dims:
        if weights:
            raise FinetunerError(
                "parameter matryoshka_weights: given without matryoshka_dims; give the "
                "dimensions they weigh, or leave both empty."
            )
        return [], []
    if not isinstance(dims, list):
        raise FinetunerError(
            f"parameter matryoshka_dims: invalid value {dims!r}. Valid: a list of "
            "dimensions, e.g. [384, 256, 128, 64], or empty (off)."
        )
    ints = [_whole(d) for d in dims]
    bad = [d for d, i in zip(dims, ints, strict=True) if i is None or i < 1]
    if bad:
        raise FinetunerError(
            f"parameter matryoshka_dims: invalid dimension {bad[0]!r} in {dims}. Valid: "
            "whole numbers from 1 to the model's embedding width, e.g. [384, 256, 128, 64]."
        )
    if len(set(ints)) != len(ints):
        raise FinetunerError(
            f"parameter matryoshka_dims: {dims} names a dimension twice; give each once "
            "(its weight is matryoshka_weights')."
        )
    if not weights:
        return ints, [1.0] * len(ints)
    if not isinstance(weights, list) or len(weights) != len(ints):
        raise FinetunerError(
            f"parameter matryoshka_weights: {weights!r} is not one weight per dimension of "
            f"matryoshka_dims {dims}. Valid: a list of {len(ints)} numbers > 0, or empty "
            "(1 each)."
        )
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < float("inf"):
            raise FinetunerError(
                f"parameter matryoshka_weights: invalid weight {w!r} in {weights}. Valid: "
                "finite numbers > 0, one per dimension of matryoshka_dims."
            )
    return ints, [float(w) for w in weights]


def check(dims: list, weights: list, loss: str, width: int) -> tuple[list[int], list[float]]:
    """check_options, and what needs the model and the loss: every dim at most the model's
    embedding `width`, and a loss that can be truncated (`loss` may still be auto, which
    resolves to one that can)."""
    dims, weights = check_options(dims, weights)
    if not dims:
        return dims, weights
    wide = [d for d in dims if d > width]
    if wide:
        raise FinetunerError(
            f"parameter matryoshka_dims: {wide[0]} is wider than the model's {width}-d "
            f"embeddings. Valid: dimensions from 1 to {width}."
        )
    check_loss(loss)
    return dims, weights


def check_loss(loss: str) -> None:
    """Refuse a loss that cannot train on truncated embeddings (see the module docstring)."""
    if loss == "auto" or loss in OWN_LOSS_OPTIONS:
        return
    if learns_class_weights(loss):
        raise FinetunerError(
            f"parameter matryoshka_dims: {loss} learns class weights as wide as the "
            "embeddings, so it cannot train on them truncated. Matryoshka training takes "
            f"{', '.join(OWN_LOSS_OPTIONS)}, TripletMarginLoss or another "
            "pytorch-metric-learning loss without class weights."
        )


def truncate(embeddings, dim: int):
    """The first `dim` dimensions of each embedding (a torch tensor), at unit length."""
    import torch.nn.functional as F

    return F.normalize(embeddings[..., :dim], dim=-1)


def wrap(loss: Loss, kind: str, dims: list, weights: list, width: int) -> Loss:
    """`loss` (for data of `kind`) at every dim of `dims`: sum of weight x the loss of the
    truncated, renormalised embeddings. `width` is the model's embedding width."""
    dims, weights = check(dims, weights, loss.name, width)
    count = EMBEDDING_ARGS[kind]

    def matryoshka(*args):
        # Pairs may also carry the mined hard negatives' embeddings, then their mask.
        n = count + 1 if kind == "pairs" and len(args) > count else count
        embeddings, rest = args[:n], args[n:]
        total = 0.0
        for dim, weight in zip(dims, weights, strict=True):
            total = total + weight * loss.fn(*(truncate(e, dim) for e in embeddings), *rest)
        return total

    # The same module: a loss's own weights (none here) stay in optimizers and checkpoints.
    return Loss(loss.name, matryoshka, module=loss.module)
