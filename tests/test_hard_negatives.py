"""Hard negatives mined from the corpus of the train pairs (finetuner.synthesis.hard_negatives)."""

import pytest
import torch
from conftest import wordnet

from finetuner.data import dataset
from finetuner.errors import FinetunerError
from finetuner.synthesis import hard_negatives
from finetuner.synthesis.hard_negatives import MiningOptions, mine_negatives
from finetuner.synthesis.synthesize import RunningTopK
from finetuner.training.loop import TrainConfig


def _pairs() -> list[tuple[str, str]]:
    """30 WordNet pairs, two of whose queries have a second positive (the definition of
    another term), and one query that is also a document."""
    pairs = wordnet(30)
    return [*pairs, (pairs[0][0], pairs[5][1]), (pairs[1][0], pairs[7][1]),
            (pairs[2][1], pairs[3][1])]  # fmt: skip


@pytest.fixture(scope="module")
def miner(minilm_spec):
    from finetuner import models

    return models.pretrained(minilm_spec)


def _reference(model, rows, opts: MiningOptions, scorer=None):
    """Each query's negatives from the whole queries x corpus matrix: the plain definition."""
    queries = list(dict.fromkeys(q for q, _ in rows))
    corpus = list(dict.fromkeys(d for _, d in rows))
    scores = torch.from_numpy(model.encode(queries)) @ torch.from_numpy(model.encode(corpus)).T
    out = {}
    for i, query in enumerate(queries):
        positives = {corpus.index(d) for q, d in rows if q == query}
        ranked = [j for j in scores[i].argsort(descending=True).tolist()
                  if j not in positives and corpus[j] != query]  # fmt: skip
        window = ranked[opts.range_min : opts.range_max]
        row = {j: scorer(query, corpus[j]) if scorer else float(scores[i, j])
               for j in [*positives, *window]}  # fmt: skip
        score = row.__getitem__
        lowest = min(score(j) for j in positives)
        margin = opts.margin if opts.margin is not None else (0.0 if scorer else None)
        if margin is not None:
            bound = lowest - (abs(lowest) * margin if opts.margin_kind == "relative" else margin)
            window = [j for j in window if score(j) <= bound + 1e-6]
        out[query] = [corpus[j] for j in window[: opts.num]]
    return out


@pytest.mark.parametrize(
    "opts",
    [
        MiningOptions(num=3, range_min=1, range_max=8, margin=0.05),
        MiningOptions(num=4, range_min=0, range_max=6, margin=0.2, margin_kind="relative"),
        MiningOptions(num=2, range_min=2, range_max=4),
    ],
)
def test_mined_negatives_respect_window_margin_and_positives(miner, opts):
    rows, model = _pairs(), miner
    negatives, mined = mine_negatives(dataset.from_rows(rows), model, opts)
    expected = _reference(model, rows, opts)
    positives: dict[str, set] = {}
    for query, document in rows:
        positives.setdefault(query, set()).add(document)
    assert len(negatives) == len(rows)
    for (query, _), found in zip(rows, negatives, strict=True):
        assert not set(found) & positives[query] and query not in found
        assert found == expected[query], query
    assert any(negatives) and mined.counts["queries"] == len(positives)
    if opts.margin:  # the margin dropped some candidates: the test shows it at work
        assert mined.counts["candidates_dropped_by_margin"] > 0


def test_cross_encoder_scores_the_margin(miner, cross_encoder_dir):
    from finetuner.synthesis.synthesize import load_cross_encoder, score_pairs

    rows, model = _pairs(), miner
    cross_encoder = load_cross_encoder(str(cross_encoder_dir))
    opts = MiningOptions(num=3, range_max=10, margin=0.01)
    negatives, mined = mine_negatives(
        dataset.from_rows(rows), model, opts, cross_encoder=cross_encoder
    )

    def scorer(query, document):
        return float(score_pairs(cross_encoder, [(query, document)])[0])

    expected = _reference(model, rows, opts, scorer)
    assert [expected[q] for q, _ in rows] == negatives
    assert mined.counts["margin"] == "0.01 (absolute)"


def test_running_top_k_excludes_pairs_over_chunks_and_keeps_their_scores():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(7, 4, generator=generator), dim=1)
    corpus = torch.nn.functional.normalize(torch.randn(23, 4, generator=generator), dim=1)
    excluded = [(0, 3), (0, 17), (2, 0), (6, 22), (6, 5)]
    q, d = (torch.tensor(x) for x in zip(*excluded, strict=True))
    top = RunningTopK(queries, 5, exclude=(q, d))
    for start in range(0, 23, 4):  # chunks of 4 over the 23 rows
        top.add(corpus[start : start + 4], start)
    full = queries @ corpus.T
    torch.testing.assert_close(top.excluded_scores, full[q, d])
    full[q, d] = -torch.inf
    assert top.indices.tolist() == full.topk(5, dim=1).indices.tolist()


def test_options_are_checked_before_training(minilm_spec):
    def check(**options):
        config = TrainConfig(**options).validate()
        return hard_negatives.check_options(config, minilm_spec, "pairs")

    assert check() is None  # off by default
    assert check(hard_negatives=3).range_max == 50
    with pytest.raises(FinetunerError, match="hard_negatives_range_max: 5 leaves 3 ranks"):
        check(hard_negatives=4, hard_negatives_range_min=2, hard_negatives_range_max=5)
    with pytest.raises(FinetunerError, match="parameter loss: mined hard negatives train with"):
        check(hard_negatives=2, loss="TripletMarginLoss")
    with pytest.raises(FinetunerError, match="parameter hard_negatives_miner: .*not a text"):
        check(hard_negatives=2, hard_negatives_miner="crossencoder-base-en")
    with pytest.raises(FinetunerError, match="parameter hard_negatives_cross_encoder: .*Valid"):
        check(hard_negatives=2, hard_negatives_cross_encoder="minilm-l6-en")
    config = TrainConfig(hard_negatives=2).validate()
    with pytest.raises(FinetunerError, match="mined for query,document pairs; this data is"):
        hard_negatives.check_options(config, minilm_spec, "scored")
    with pytest.raises(Exception, match="hard_negatives_margin"):
        TrainConfig(hard_negatives=2, hard_negatives_margin=-0.1)


def test_mnrl_takes_the_negatives_and_leaves_out_excluded_ones():
    from finetuner.training.losses import build_loss

    generator = torch.Generator().manual_seed(0)
    q, d, n = (torch.nn.functional.normalize(torch.randn(s, 8, generator=generator), dim=1)
               for s in (3, 3, 4))  # fmt: skip
    mnrl = build_loss("MultipleNegativesRankingLoss")
    plain, with_negatives = mnrl(q, d), mnrl(q, d, n)
    assert with_negatives > plain  # more candidates to beat
    none_count = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(mnrl(q, d, n, none_count), plain)


def test_the_pipeline_mines_hard_negatives_before_training(pairs_csv, tmp_path):
    """One kfp.local run of the finetune pipeline (what `fit` runs), with its pipeline root
    kept to read the dataset that the train step got."""
    import pyarrow.dataset as ds

    import finetuner
    from finetuner.launch.local import run_pipeline

    output, root = tmp_path / "model", tmp_path / "root"
    run = run_pipeline(
        dict(
            model="minilm-l6-en", train_data=str(pairs_csv(40)), output_uri=str(output),
            batch_size=8, max_length=24, epochs=1, eval_k=3, hard_negatives=2,
            hard_negatives_range_min=1, hard_negatives_range_max=6, hard_negatives_margin=0.05,
        ),
        pipeline_root=str(root),
    )  # fmt: skip
    assert run.status == "FINISHED" and (output / "manifest.json").exists()
    [mined] = [p for p in root.rglob("mined_dataset") if p.is_dir()]
    table = ds.dataset(str(mined), format="parquet").to_table()
    negatives = table.column("negatives").to_pylist()
    documents = dict.fromkeys(table.column("document").to_pylist())
    assert any(negatives) and all(len(n) <= 2 and set(n) <= set(documents) for n in negatives)
    for _query, document, found in zip(*table.columns, strict=True):
        assert document.as_py() not in found.as_py()
    # Refused through fit before anything runs: the loss does not take the mined negatives.
    with pytest.raises(FinetunerError, match="mined hard negatives train with"):
        finetuner.fit(
            "minilm-l6-en", str(pairs_csv(40)), str(tmp_path / "m2"), hard_negatives=2,
            loss="TripletMarginLoss",
        )  # fmt: skip
