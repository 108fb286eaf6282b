"""Evaluation: exact cosine top-k retrieval scored with IR metrics (pairs, labeled and
margins data: a query's positive among all positives and hard negatives; graded data:
BEIR judgements over the whole corpus, with graded nDCG),
or the rank correlation of cosines with the scores (scored data)."""

from __future__ import annotations

import numpy as np

from finetuner.data.pairs import EvalSet
from finetuner.evaluation.matryoshka import at_dims
from finetuner.evaluation.metrics import retrieval_metrics


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    chunk: int = 1024,
    exclude: list[int] | None = None,
) -> np.ndarray:
    """Indices of the k nearest corpus rows for each query, best first.

    Rows are unit length, so the dot product is the cosine. Queries go in chunks so the
    score matrix stays at chunk x corpus. `exclude[i]` is a corpus row that query i must
    not find (itself, when the queries are corpus items).
    """
    import torch

    k = min(k, len(corpus) - (1 if exclude is not None else 0))
    corpus_t = torch.from_numpy(corpus)
    out = []
    for start in range(0, len(queries), chunk):
        scores = torch.from_numpy(queries[start : start + chunk]) @ corpus_t.T
        if exclude is not None:
            rows = torch.arange(len(scores))
            scores[rows, torch.tensor(exclude[start : start + chunk])] = -torch.inf
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out)


def evaluate(
    model, eval_set: EvalSet, k: int = 10, batch_size: int = 64, device: str = "cpu", dims=()
) -> dict[str, float]:
    """Metrics@k of a model (from finetuner.models) on an eval set; also at each of `dims`,
    the embeddings truncated (finetuner.evaluation.matryoshka)."""
    from finetuner.models import sides

    query_side, document_side = sides(model)
    corpus_emb = document_side.encode(eval_set.corpus, batch_size=batch_size, device=device)
    if eval_set.self_index is not None:  # the queries are corpus items
        query_emb = corpus_emb[eval_set.self_index]
    else:
        query_emb = query_side.encode(eval_set.queries, batch_size=batch_size, device=device)

    def score(queries, corpus):
        rankings = top_k(queries, corpus, k, exclude=eval_set.self_index)
        return retrieval_metrics(rankings.tolist(), eval_set.relevant, k, eval_set.gains)

    return at_dims(score, query_emb, corpus_emb, dims)


def correlation(
    model, rows: list[tuple], batch_size: int = 64, device: str = "cpu", dims=()
) -> dict[str, float]:
    """Spearman and Pearson correlation of the cosine of (text1, text2) with the score; also
    at each of `dims`, the embeddings truncated."""
    first = model.encode([r[0] for r in rows], batch_size=batch_size, device=device)
    second = model.encode([r[1] for r in rows], batch_size=batch_size, device=device)
    scores = np.array([r[2] for r in rows], dtype=np.float64)

    def score(a, b):
        cosines = (a * b).sum(axis=1)
        return {
            "spearman": _pearson(_ranks(cosines), _ranks(scores)),
            "pearson": _pearson(cosines, scores),
        }

    return at_dims(score, first, second, dims)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged, as Spearman's coefficient needs."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    ordered = np.sort(values)
    for value in np.unique(ordered[1:][np.diff(ordered) == 0]):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def evaluate_dataset(model, data, k: int = 10, device: str = "cpu", dims=()) -> dict[str, float]:
    """The metrics of a model on an eval dataset (finetuner.data.dataset) of any kind; also
    at each of `dims` narrower than the model, keyed like ndcg@10@dim128."""
    rows = data.rows(list(range(len(data))))
    if data.kind == "scored":
        return correlation(model, rows, device=device, dims=dims)
    if data.kind == "labeled":
        return evaluate(model, EvalSet.from_labeled(rows), k, device=device, dims=dims)
    if data.kind == "margins":
        return evaluate(model, EvalSet.from_margins(rows), k, device=device, dims=dims)
    if data.kind == "graded":  # BEIR: graded judgements over a whole corpus
        graded = EvalSet.from_graded(rows, *data.corpus_items())
        return evaluate(model, graded, k, device=device, dims=dims)
    return evaluate(model, EvalSet.from_pairs(rows), k, device=device, dims=dims)
