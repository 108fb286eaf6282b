"""Exact cosine top-k retrieval over an eval corpus, scored with IR metrics."""

from __future__ import annotations

import numpy as np

from finetuner.data import EvalSet
from finetuner.metrics import retrieval_metrics


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the k nearest corpus rows for each query, best first.

    Rows are unit length, so the dot product is the cosine. Queries go in chunks so the
    score matrix stays at chunk x corpus.
    """
    import torch

    k = min(k, len(corpus))
    corpus_t = torch.from_numpy(corpus)
    out = []
    for start in range(0, len(queries), chunk):
        scores = torch.from_numpy(queries[start : start + chunk]) @ corpus_t.T
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out)


def evaluate(model, eval_set: EvalSet, k: int = 10, batch_size: int = 64) -> dict[str, float]:
    """Metrics@k of a model (from finetuner.models) on an eval set."""
    from finetuner.models import sides

    query_side, document_side = sides(model)
    query_emb = query_side.encode(eval_set.queries, batch_size=batch_size)
    corpus_emb = document_side.encode(eval_set.corpus, batch_size=batch_size)
    rankings = top_k(query_emb, corpus_emb, k)
    return retrieval_metrics(rankings.tolist(), eval_set.relevant, k)
