"""retrieval_metrics against trec_eval (through pytrec_eval) and a few hand-computed cases."""

import math
import random

import pytest
import pytrec_eval

from finetuner.evaluation.metrics import METRICS, query_metrics, retrieval_metrics

N_QUERIES = 200
N_DOCS = 50
TOL = 1e-9


def random_case(seed, k, rel_sizes=(1, 5), ranking_sizes=None):
    """Random relevant sets and top-k rankings (distinct doc ids, so no ties)."""
    rng = random.Random(seed)
    rankings, relevant = [], []
    for _ in range(N_QUERIES):
        relevant.append(set(rng.sample(range(N_DOCS), rng.randint(*rel_sizes))))
        size = k if ranking_sizes is None else rng.randint(*ranking_sizes)
        # Rank relevant documents a little higher than chance, so that queries with several
        # hits at varied ranks occur as well as queries with none.
        rel = relevant[-1]
        pool = sorted(range(N_DOCS), key=lambda d: 0.7 * (d not in rel) + rng.random())
        rankings.append(pool[:size])
    return rankings, relevant


def trec_eval(rankings, relevant, k):
    """Per-query trec_eval measures of the rankings, renamed to Finetuner's metric names."""
    qrels = {f"q{i}": {f"d{d}": 1 for d in rel} for i, rel in enumerate(relevant)}
    # The run holds only the top k, with strictly descending scores, so trec_eval's sort
    # keeps the given order and recip_rank is computed over the truncated ranking.
    run = {
        f"q{i}": {f"d{d}": float(len(ranking) - rank) for rank, d in enumerate(ranking[:k])}
        for i, ranking in enumerate(rankings)
    }
    measures = {f"P.{k}", f"recall.{k}", f"success.{k}", f"ndcg_cut.{k}", f"map_cut.{k}"}
    measures.add("recip_rank")
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    names = {
        "precision": f"P_{k}",
        "recall": f"recall_{k}",
        "hit_rate": f"success_{k}",
        "mrr": "recip_rank",
        "ndcg": f"ndcg_cut_{k}",
        "map": f"map_cut_{k}",
    }
    return [
        {ours: scores[f"q{i}"][theirs] for ours, theirs in names.items()}
        for i in range(len(rankings))
    ]


@pytest.mark.parametrize(
    "k, rel_sizes, ranking_sizes",
    [
        (10, (1, 5), None),
        (5, (1, 5), None),
        (1, (1, 5), None),
        (5, (6, 15), None),  # more relevant documents than k
        (3, (1, 8), None),
        (10, (1, 5), (1, 10)),  # rankings shorter than k (a corpus smaller than k)
        (10, (1, 5), (15, 30)),  # rankings longer than k: only the top k count
    ],
)
def test_matches_trec_eval(k, rel_sizes, ranking_sizes):
    rankings, relevant = random_case(
        seed=k * 100 + rel_sizes[1], k=k, rel_sizes=rel_sizes, ranking_sizes=ranking_sizes
    )
    expected = trec_eval(rankings, relevant, k)

    # Per query...
    for ranking, rel, want in zip(rankings, relevant, expected, strict=True):
        got = query_metrics(ranking, rel, k)
        assert set(got) == set(METRICS)
        for name in METRICS:
            assert got[name] == pytest.approx(want[name], abs=TOL), (name, ranking, rel)

    # ...and the means.
    result = retrieval_metrics(rankings, relevant, k)
    assert set(result) == {f"{name}@{k}" for name in METRICS}
    for name in METRICS:
        mean = sum(q[name] for q in expected) / len(expected)
        assert result[f"{name}@{k}"] == pytest.approx(mean, abs=TOL), name

    # The random cases are not degenerate: perfect, partial and (mostly) empty top-k occur.
    ndcgs = [q["ndcg"] for q in expected]
    assert max(ndcgs) == pytest.approx(1.0)
    assert k == 1 or any(0 < x < 1 for x in ndcgs)
    assert rel_sizes[0] > k or min(ndcgs) == 0.0


def test_perfect_ranking_scores_one():
    relevant = [{3, 7}, {1}, {0, 2, 4}]
    rankings = [[7, 3, 9, 8, 6], [1, 2, 3, 4, 5], [4, 0, 2, 9, 8]]
    result = retrieval_metrics(rankings, relevant, k=5)
    for name in ("recall", "hit_rate", "mrr", "ndcg", "map"):
        assert result[f"{name}@5"] == pytest.approx(1.0), name
    # 2/5, 1/5 and 3/5 of the top 5 are relevant.
    assert result["precision@5"] == pytest.approx((0.4 + 0.2 + 0.6) / 3)


def test_no_hits_scores_zero():
    result = retrieval_metrics([[5, 6, 7], [0, 1, 2]], [{1}, {3, 4}], k=3)
    assert result == {f"{name}@3": 0.0 for name in METRICS}


def test_relevant_document_below_k_does_not_count():
    result = retrieval_metrics([[5, 6, 7, 1]], [{1}], k=3)
    assert result == {f"{name}@3": 0.0 for name in METRICS}


def test_hand_computed_query():
    # Relevant {1, 2, 3}; hits at ranks 2 and 4 of the top 4.
    got = query_metrics([9, 1, 8, 2], {1, 2, 3}, k=4)
    assert got["precision"] == pytest.approx(2 / 4)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["hit_rate"] == 1.0
    assert got["mrr"] == pytest.approx(1 / 2)
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg"] == pytest.approx(dcg / idcg)


def test_ideal_ranking_is_capped_at_k():
    # Five relevant documents but k = 2: two hits in two places is a perfect nDCG@2,
    # while recall is 2/5 and AP is normalised by all 5 relevant documents.
    got = query_metrics([0, 1], {0, 1, 2, 3, 4}, k=2)
    assert got["ndcg"] == pytest.approx(1.0)
    assert got["recall"] == pytest.approx(2 / 5)
    assert got["map"] == pytest.approx(2 / 5)
    assert got["precision"] == pytest.approx(1.0)


def test_default_k_is_10():
    result = retrieval_metrics([list(range(20))], [{15}])
    assert set(result) == {f"{name}@10" for name in METRICS}
    assert result["hit_rate@10"] == 0.0


@pytest.mark.parametrize(
    "rankings, relevant, message",
    [
        ([], [], "at least one query"),
        ([[1, 2]], [], "one ranking per query"),
        ([[1, 2]], [{1}, {2}], "one ranking per query"),
        ([[1, 2], [3]], [{1}, set()], "at least one relevant"),
    ],
)
def test_invalid_input_raises(rankings, relevant, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(rankings, relevant, k=2)
