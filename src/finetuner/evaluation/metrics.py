"""Information-retrieval metrics at a cut-off k, with binary relevance.

Definitions follow trec_eval (the tests check them against pytrec_eval): average
precision is normalised by the number of relevant documents, and nDCG's ideal ranking
puts min(k, |relevant|) relevant documents first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

METRICS = ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")


def query_metrics(ranking: Sequence[int], relevant: set[int], k: int) -> dict[str, float]:
    """Metrics of one ranked list of document ids against its relevant ids."""
    hits = [doc in relevant for doc in ranking[:k]]
    n_hits = sum(hits)
    first = hits.index(True) if n_hits else None
    dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
    idcg = sum(1 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
    precisions_at_hits = []
    seen = 0
    for rank, hit in enumerate(hits):
        if hit:
            seen += 1
            precisions_at_hits.append(seen / (rank + 1))
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(relevant),
        "hit_rate": float(n_hits > 0),
        "mrr": 0.0 if first is None else 1 / (first + 1),
        "ndcg": dcg / idcg,
        "map": sum(precisions_at_hits) / len(relevant),
    }


def retrieval_metrics(
    rankings: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int = 10
) -> dict[str, float]:
    """Mean metrics over queries, keyed like `ndcg@10`."""
    if len(rankings) != len(relevant) or not rankings:
        raise ValueError("need one ranking per query, and at least one query")
    totals = dict.fromkeys(METRICS, 0.0)
    for ranking, rel in zip(rankings, relevant, strict=True):
        if not rel:
            raise ValueError("every query needs at least one relevant document")
        for name, value in query_metrics(ranking, rel, k).items():
            totals[name] += value
    return {f"{name}@{k}": totals[name] / len(rankings) for name in METRICS}
