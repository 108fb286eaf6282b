"""The data layer: formats, kinds, bad rows, the streaming preprocess, samplers, losses and
the evaluation of each kind."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from finetuner.catalogue import lookup
from finetuner.data import dataset, formats, samplers
from finetuner.data.formats import DataOptions
from finetuner.errors import FinetunerError


@pytest.fixture(scope="module")
def text_spec():
    return lookup("minilm-l6-en", max_length=32)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def read(uri, spec, **options):
    bad = dataset.BadRows(options.get("max_bad_rows", 0))
    kind, rows = dataset.checked_rows(uri, spec, DataOptions(**options), bad)
    return kind, list(rows), bad


# ---------------------------------------------------------------- formats and kinds


@pytest.mark.parametrize(
    "content, delimiter",
    [("q1;d one\nq2;d two\n", ";"), ("q1\td one\nq2\td two\n", "\t"), ("q1|d\nq2|e\n", "|")],
)
def test_csv_dialect_is_detected(tmp_path, text_spec, content, delimiter):
    kind, rows, _ = read(write(tmp_path, "a.csv", content), text_spec)
    assert kind == "pairs" and len(rows) == 2 and rows[0][0] == "q1"


def test_a_given_dialect_that_does_not_fit_names_the_delimiter(tmp_path, text_spec):
    uri = write(tmp_path, "a.csv", "q1;d one\nq2;d two\n")
    with pytest.raises(FinetunerError, match=r"line 1: expected 2 columns .* found 1 with "
                       r"delimiter ','.*data_options.dialect"):  # fmt: skip
        read(uri, text_spec, dialect="excel")


def test_kinds_by_columns_and_is_labeled(tmp_path, text_spec):
    labeled = write(tmp_path, "l.csv", "item,label\na cat,animal\na dog,animal\n")
    scored = write(tmp_path, "s.csv", "text1,text2,score\na,b,0.5\nc,d,1\n")
    assert read(labeled, text_spec, is_labeled=True)[:2] == (
        "labeled",
        [("a cat", "animal"), ("a dog", "animal")],
    )
    assert read(labeled, text_spec)[0] == "pairs"  # without is_labeled: pairs, as Finetuner
    assert read(scored, text_spec)[:2] == ("scored", [("a", "b", 0.5), ("c", "d", 1.0)])


def test_jsonl_and_parquet_with_named_columns(tmp_path, text_spec):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"anchor": "q1", "positive": "d1", "extra": 1}, {"anchor": "q2", "positive": "d2"}]
    jsonl = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read(jsonl, text_spec)[:2] == ("pairs", [("q1", "d1"), ("q2", "d2")])
    parquet = str(tmp_path / "a.parquet")
    pq.write_table(pa.table({"text1": ["a", "b"], "text2": ["c", "d"], "score": [0.1, 0.9]}),
                   parquet)  # fmt: skip
    assert read(parquet, text_spec)[:2] == ("scored", [("a", "c", 0.1), ("b", "d", 0.9)])


def test_vectors_in_jsonl_are_lists_of_numbers(tmp_path):
    spec = lookup("mlp", model_options={"input_size": 2, "hidden_sizes": [4]})
    uri = write(tmp_path, "v.jsonl", '{"item": [1, 2.5], "label": "a"}\n{"item": [0, 1], '
                '"label": "b"}\n')  # fmt: skip
    assert read(uri, spec)[:2] == ("labeled", [("1.0 2.5", "a"), ("0.0 1.0", "b")])


# Each: a file name, its content, data options, and what the error says (file, place, why).
BAD_FILES = {
    "scored text": ("s.csv", "a,b,0.5\nc,d,high\n", {}, r"line 2, column 3 \(score\): 'high' "
                    "is not a finite number"),
    "scored NaN": ("s.csv", "a,b,0.5\nc,d,nan\n", {}, "line 2, column 3 .*'nan' is not a finite"),
    "missing label": ("l.csv", "a cat,animal\na dog,\n", {"is_labeled": True},
                      r"line 2, column 2 \(label\): empty label"),
    "json not an object": ("a.jsonl", '{"query": "q", "document": "d"}\n[1, 2]\n', {},
                           "line 2: expected a JSON object, got list"),
    "json broken": ("a.jsonl", '{"query": "q", "document": "d"}\n{"query": \n', {},
                    "line 2: not valid JSON"),
    "json missing field": ("a.jsonl", '{"query": "q", "document": "d"}\n{"query": "q2"}\n', {},
                           "line 2, column 2: 'document' is missing"),
    "json nested": ("a.jsonl", '{"query": "q", "document": {"a": 1}}\n', {},
                    "line 1, column 2: 'document' is a dict"),
    "no known columns": ("a.jsonl", '{"foo": "q", "bar": "d"}\n', {},
                         "no column for 'query' among"),
    "five columns": ("a.csv", "a,b,c,d,e\n", {}, "line 1: expected 2 columns .* or 4 "
                     r"\(query,positive,negative,margin\), found 5"),
    "margin text": ("m.csv", "q,p,n,0.5\nq,p,n2,big\n", {}, r"line 2, column 4 \(margin\): "
                    "'big' is not a finite number"),
    "field too long": ("a.csv", "q,0123456789x\n", {"max_field_chars": 10},
                       r"line 1, column 2 \(document\): 11 characters, more than the limit of 10"),
}  # fmt: skip


@pytest.mark.parametrize("name, content, options, message", BAD_FILES.values(),
                         ids=BAD_FILES.keys())  # fmt: skip
def test_bad_rows_are_errors_that_say_where_and_why(tmp_path, text_spec, name, content,
                                                    options, message):  # fmt: skip
    uri = write(tmp_path, name, content)
    with pytest.raises(FinetunerError, match=message) as err:
        read(uri, text_spec, **options)
    assert str(err.value).startswith(uri)


def test_parquet_that_is_not_parquet(tmp_path, text_spec):
    uri = write(tmp_path, "a.parquet", b"PAR1 not really")
    with pytest.raises(FinetunerError, match="not a readable Parquet file"):
        read(uri, text_spec)


def test_unknown_data_options_name_the_valid_ones():
    with pytest.raises(FinetunerError, match="unknown option 'delimiter'. Valid options: size"):
        formats.options({"delimiter": ";"})
    with pytest.raises(FinetunerError, match="point_cloud_size: here it is a model option"):
        formats.options({"point_cloud_size": 1024})
    with pytest.raises(FinetunerError, match="data_options.max_bad_rows"):
        formats.options({"max_bad_rows": -1})


def test_size_reads_only_the_first_rows(tmp_path, text_spec):
    uri = write(tmp_path, "a.csv", "".join(f"q{i},d{i}\n" for i in range(10)))
    assert len(read(uri, text_spec, size=3)[1]) == 3


# ---------------------------------------------------------------- bad rows and preprocess


def test_bad_rows_up_to_the_limit_are_skipped_and_counted(tmp_path, text_spec):
    content = "q1,d1\nq2,\nq3,d3,x\nq4,d4\n"
    uri = write(tmp_path, "a.csv", content)
    _, rows, bad = read(uri, text_spec, max_bad_rows=2)
    assert rows == [("q1", "d1"), ("q4", "d4")] and bad.count == 2
    assert bad.samples[0].startswith(f"{uri}, line 2, column 2 (document): empty document")
    with pytest.raises(FinetunerError, match=r"2 bad rows, more than max_bad_rows=1\. The first:"
                       r"\n  - .*line 2.*\n  - .*line 3"):  # fmt: skip
        read(uri, text_spec, max_bad_rows=1)
    with pytest.raises(FinetunerError, match=r"line 2, .*empty document.*max_bad_rows is 0"):
        read(uri, text_spec)


def test_preprocess_streams_to_shards_dedups_splits_and_reports(tmp_path, text_spec,
                                                                monkeypatch):  # fmt: skip
    monkeypatch.setattr(dataset, "ROWS_PER_SHARD", 50)
    monkeypatch.setattr(dataset, "BATCH_ROWS", 16)
    lines = [f"query {i // 2},document {i}\n" for i in range(200)]
    lines += lines[:10] + ["bad row,\n"]  # 10 duplicates and a bad row
    uri = write(tmp_path, "a.csv", "".join(lines))
    opts = DataOptions(max_bad_rows=1)
    result = dataset.preprocess(text_spec, uri, "", 0.2, 7, opts, tmp_path / "tr", tmp_path / "ev")
    assert result.counts == {
        "kind": "pairs", "rows_read": 211, "bad_rows_skipped": 1, "duplicates_dropped": 10,
        "train_rows": 160, "eval_rows": 40,
    }  # fmt: skip
    # 160 rows in shards of 50 and more (a shard ends after the batch that fills it)
    assert len(list((tmp_path / "tr").glob("part-*.parquet"))) == 3
    train, evaluation = dataset.load(tmp_path / "tr"), dataset.load(tmp_path / "ev")
    train_queries = {q for q, _ in train.rows(list(range(len(train))))}
    eval_queries = {q for q, _ in evaluation.rows(list(range(len(evaluation))))}
    assert len(eval_queries) == 20 and not train_queries & eval_queries  # whole queries
    again = dataset.preprocess(text_spec, uri, "", 0.2, 7, opts, tmp_path / "t2", tmp_path / "e2")
    assert again.counts == result.counts
    assert dataset.load(tmp_path / "e2").table.equals(evaluation.table)  # the seed decides
    report = result.report(uri, "")
    assert "| bad rows skipped | 1 |" in report and "| 1-1 | 0 | 0 |" in report
    assert "| 2-3 | 160 | 160 |" in report and "empty document" in report


def test_labeled_report_counts_labels(tmp_path, text_spec):
    uri = write(tmp_path, "l.csv", "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(20)))
    result = dataset.preprocess(text_spec, uri, "", 0.25, 1, DataOptions(is_labeled=True),
                                tmp_path / "tr", tmp_path / "ev")  # fmt: skip
    assert result.counts["train_rows"] == 15 and result.counts["eval_rows"] == 5
    assert sum(result.stats.labels.values()) == 15
    assert "## Labels" in result.report(uri, "")


# ---------------------------------------------------------------- samplers


def test_class_batches_hold_items_per_class():
    labels = [i % 5 for i in range(100)]
    out = samplers.class_batches(labels, 16, 4, torch.Generator().manual_seed(0))
    assert sum(len(b) for b in out) == 100
    for batch in out:  # four items of each label, no label twice
        counts = np.unique([labels[i] for i in batch], return_counts=True)[1]
        assert set(counts) == {4}
    # full batches of four labels, until the last groups left are of too few labels
    assert [len(b) for b in out][:4] == [16] * 4
    with pytest.raises(FinetunerError, match="no label has two items"):
        samplers.class_batches(list(range(10)), 4, 4, torch.Generator())


def test_no_duplicate_batches_never_repeat_a_text():
    rows = [(f"q{i % 7}", f"d{i}") for i in range(70)]  # each query ten times
    out = samplers.no_duplicate_batches(rows, 8, torch.Generator().manual_seed(0))
    assert sorted(i for b in out for i in b) == list(range(70))
    for batch in out:
        texts = [t for i in batch for t in rows[i]]
        assert len(texts) == len(set(texts))
    assert max(len(b) for b in out) == 7  # only 7 distinct queries fit a batch


def padded_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


@pytest.mark.parametrize("sampler", ["random", "no_duplicates"])
def test_length_grouped_batches_cut_the_padding_and_keep_every_row(sampler):
    gen = random.Random(0)
    lengths = [gen.randint(3, 60) for _ in range(640)]
    rows = [(f"q{i % 600}", f"d{i}") for i in range(640)]  # 40 queries twice

    def batches(window):
        generator = torch.Generator().manual_seed(1)
        if sampler == "random":
            return samplers.random_batches(640, 32, generator, lengths, window)
        return samplers.no_duplicate_batches(rows, 32, generator, lengths, window)

    plain, grouped = batches(1), batches(4)
    assert sorted(i for b in grouped for i in b) == list(range(640))
    assert padded_fraction(grouped, lengths) < padded_fraction(plain, lengths) / 2
    if sampler == "no_duplicates":
        assert all(len({t for i in b for t in rows[i]}) == 2 * len(b) for b in grouped)
    # Batches are not in length order: long and short ones alternate through the epoch.
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)
    assert grouped == batches(4)  # the seed decides


def test_samplers_are_checked_against_the_data():
    with pytest.raises(FinetunerError, match="the class sampler needs labeled data"):
        samplers.check_sampler("class", "pairs")
    with pytest.raises(FinetunerError, match="unknown sampler 'shuffle'"):
        samplers.check_sampler("shuffle")


# ---------------------------------------------------------------- losses and evaluation


def test_cosent_prefers_the_order_of_the_scores():
    from finetuner.training.losses import cosent

    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)))
    b = a.clone()
    b[3:] = -b[3:]  # pairs 0-2 have cosine 1, pairs 3-5 cosine -1
    right = cosent(a, b, torch.tensor([1.0, 1, 1, 0, 0, 0]))
    wrong = cosent(a, b, torch.tensor([0.0, 0, 0, 1, 1, 1]))
    assert right < 1e-6 < 1 < wrong


def test_losses_follow_the_kind_of_data():
    from finetuner.training.losses import loss_for

    assert loss_for("text", "auto", "labeled") == "TripletMarginLoss"
    assert loss_for("text", "auto", "scored") == "CoSENTLoss"
    with pytest.raises(FinetunerError, match="MultipleNegativesRankingLoss does not train on "
                       "labeled data"):  # fmt: skip
        loss_for("text", "MultipleNegativesRankingLoss", "labeled")
    with pytest.raises(FinetunerError, match="does not train on scored data. Valid losses for "
                       "scored data: CoSENTLoss, CosineSimilarityLoss"):  # fmt: skip
        loss_for("text", "TripletMarginLoss", "scored")


def test_correlation_matches_scipy():
    from scipy.stats import pearsonr, spearmanr

    from finetuner.evaluation.evaluate import _pearson, _ranks

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50).astype(float)
    b = a + rng.normal(size=50)
    assert _pearson(_ranks(a), _ranks(b)) == pytest.approx(spearmanr(a, b).statistic)
    assert _pearson(a, b) == pytest.approx(pearsonr(a, b).statistic)


def test_labeled_eval_finds_the_other_items_of_a_label_not_itself():
    from finetuner.data.pairs import EvalSet
    from finetuner.evaluation.evaluate import top_k

    rows = [("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c")]
    ev = EvalSet.from_labeled(rows)
    assert ev.queries == ["a1", "a2"] and ev.relevant == [{2}, {0}] and ev.self_index == [0, 2]
    corpus = np.eye(4, dtype=np.float32)
    ranked = top_k(corpus[[0, 2]], corpus, 3, exclude=ev.self_index)
    assert 0 not in ranked[0] and 2 not in ranked[1]


def test_preprocess_checks_what_training_and_evaluation_need_after_the_split(tmp_path):
    """On a cluster preprocess is the first check: a held-out split whose labeled eval
    rows have no label twice, or that leaves one train row, fails there."""
    spec = lookup("mlp", model_options={"input_size": 2})
    labeled = tmp_path / "labeled.csv"
    # Ten labels of two items, and ten items alone: the held-out items are drawn one by one.
    labeled.write_text("".join(f"{i} 0,label {i % 10 if i < 20 else i}\n" for i in range(30)))
    opts = DataOptions(is_labeled=True)
    with pytest.raises(FinetunerError, match="no label of the eval data has two items"):
        dataset.preprocess(spec, str(labeled), "", 0.1, 0, opts, tmp_path / "a", tmp_path / "b")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("1 2,3 4\n5 6,7 8\n")
    with pytest.raises(FinetunerError, match=r"1 train row\(s\) after duplicates and the held"):
        dataset.preprocess(spec, str(pairs), "", 0.5, 0, DataOptions(), tmp_path / "c",
                           tmp_path / "d")  # fmt: skip
