"""Information-retrieval metrics at a cut-off k, with binary or graded relevance.

Definitions follow trec_eval (the tests check them against pytrec_eval): average
precision is normalised by the number of relevant documents, and nDCG's ideal ranking
puts min(k, |relevant|) relevant documents first. With graded relevance (BEIR qrels),
nDCG takes the grade as the gain, as trec_eval's ndcg_cut does (linear gain, log2
discount, the ideal ranking of all judged grades); the other metrics count the documents
graded above 0 as relevant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def graded_query_metrics(
    ranking: Sequence[int], gains: Mapping[int, float], k: int
) -> dict[str, float]:
    """Metrics of one ranked list against graded judgements (document id -> grade >= 0)."""
    metrics = query_metrics(ranking, {doc for doc, gain in gains.items() if gain > 0}, k)
    dcg = sum(gains.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    metrics["ndcg"] = dcg / sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return metrics


def retrieval_metrics(
    rankings: Sequence[Sequence[int]],
    relevant: Sequence[set[int]],
    k: int = 10,
    gains: Sequence[Mapping[int, float]] | None = None,
) -> dict[str, float]:
    """Mean metrics over queries, keyed like `ndcg@10`; with `gains` (each query's graded
    judgements, whose documents graded above 0 are its `relevant`), nDCG is graded."""
    if len(rankings) != len(relevant) or not rankings:
        raise ValueError("need one ranking per query, and at least one query")
    if gains is not None and len(gains) != len(rankings):
        raise ValueError("need one set of graded judgements per query")
    totals = dict.fromkeys(METRICS, 0.0)
    for i, (ranking, rel) in enumerate(zip(rankings, relevant, strict=True)):
        if not rel:
            raise ValueError("every query needs at least one relevant document")
        if gains is None:
            metrics = query_metrics(ranking, rel, k)
        else:
            metrics = graded_query_metrics(ranking, gains[i], k)
        for name, value in metrics.items():
            totals[name] += value
    return {f"{name}@{k}": totals[name] / len(rankings) for name in METRICS}
