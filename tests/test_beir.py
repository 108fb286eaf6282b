"""BEIR-format data (finetuner.data.beir): a folder of corpus.jsonl, queries.jsonl and graded
qrels, trained on its positives and evaluated with graded nDCG over the whole corpus; the
figures checked against trec_eval (pytrec_eval)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from finetuner.data import beir, dataset, formats
from finetuner.errors import FinetunerError
from finetuner.evaluation.metrics import graded_query_metrics, query_metrics

EXAMPLES = Path(__file__).parent.parent / "examples" / "wordnet_pairs.csv"
N_QUERIES, N_TRAIN, N_DOCS = 60, 40, 75  # docs beyond the queries' are judged by none
K = 10


def wordnet(n: int) -> list[tuple[str, str]]:
    with open(EXAMPLES, encoding="utf-8") as f:
        return [tuple(row) for row in list(csv.reader(f))[1 : n + 1]]


def judgements(first: int, last: int) -> list[tuple[str, str, int]]:
    """Grade 2 for a query's own definition, 1 for a neighbour's, 0 for one judged not
    relevant."""
    rows = []
    for i in range(first, last):
        rows.append((f"q{i}", f"d{i}", 2))
        if i % 3 == 0:
            rows.append((f"q{i}", f"d{(i + 1) % N_DOCS}", 1))
        if i % 4 == 0:
            rows.append((f"q{i}", f"d{(i + 5) % N_DOCS}", 0))
    return rows


def write_qrels(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore", *("\t".join(map(str, row)) for row in rows)]
    path.write_text("\n".join(lines) + "\n")


def make_beir(folder: Path, test: bool = True) -> Path:
    """A BEIR folder from the WordNet sample: terms as queries, definitions as documents
    (every other one with a title)."""
    pairs = wordnet(N_DOCS)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = [
        {"_id": f"d{i}", "title": "WordNet" if i % 2 else "", "text": definition}
        for i, (_, definition) in enumerate(pairs)
    ]
    queries = [{"_id": f"q{i}", "text": term} for i, (term, _) in enumerate(pairs[:N_QUERIES])]
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_qrels(folder / "qrels" / "train.tsv", judgements(0, N_TRAIN))
    if test:
        write_qrels(folder / "qrels" / "test.tsv", judgements(N_TRAIN, N_QUERIES))
    return folder


def preprocess(folder, tmp_path, val_split=0.2, eval_data="", **options):
    spec = _spec()
    opts = formats.options(options)
    train_out, eval_out = tmp_path / "train", tmp_path / "eval"
    result = beir.preprocess(
        spec, str(folder), eval_data, val_split, 42, opts, str(train_out), str(eval_out)
    )
    return result, dataset.load(train_out), dataset.load(eval_out)


def _spec():
    from finetuner.catalogue import lookup

    return lookup("minilm-l6-en", max_length=32)


# ---------------------------------------------------------------- graded metrics


def trec_eval(qrels: dict, run: dict, k: int) -> dict:
    measures = {f"ndcg_cut.{k}", f"P.{k}", f"recall.{k}", f"map_cut.{k}"}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    names = {"ndcg": f"ndcg_cut_{k}", "precision": f"P_{k}", "recall": f"recall_{k}"}
    names["map"] = f"map_cut_{k}"
    return {q: {ours: s[theirs] for ours, theirs in names.items()} for q, s in scores.items()}


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_graded_metrics_match_trec_eval(k):
    """Grades 0/1/2 on a hand-made set, rankings without ties."""
    rng = random.Random(k)
    qrels, run, cases = {}, {}, []
    for q in range(100):
        judged = rng.sample(range(30), rng.randint(1, 8))
        gains = {d: rng.choice((0, 1, 2)) for d in judged}
        gains[judged[0]] = rng.choice((1, 2))  # something to find
        ranking = rng.sample(range(30), rng.randint(1, 15))
        qrels[f"q{q}"] = {f"d{d}": g for d, g in gains.items()}
        run[f"q{q}"] = {f"d{d}": float(30 - r) for r, d in enumerate(ranking[:k])}
        cases.append((ranking, gains))
    expected = trec_eval(qrels, run, k)
    for q, (ranking, gains) in enumerate(cases):
        got = graded_query_metrics(ranking, gains, k)
        for name, value in expected[f"q{q}"].items():
            assert got[name] == pytest.approx(value, abs=1e-9), (name, ranking, gains)


def test_graded_metrics_of_binary_grades_are_the_binary_metrics():
    rng = random.Random(0)
    for _ in range(200):
        relevant = set(rng.sample(range(20), rng.randint(1, 6)))
        ranking = rng.sample(range(20), 10)
        gains = dict.fromkeys(relevant, 1) | dict.fromkeys(rng.sample(range(20), 3), 0)
        gains.update(dict.fromkeys(relevant, 1))
        assert graded_query_metrics(ranking, gains, 5) == query_metrics(ranking, relevant, 5)


# ---------------------------------------------------------------- reading and preprocess


def figures_of(model, folder: Path, test_rows, k: int = K) -> dict:
    """trec_eval's mean figures for the model's cosine ranking of the whole corpus."""
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())
    }
    qrels: dict[str, dict[str, int]] = {}
    for q, d, grade in test_rows:
        qrels.setdefault(q, {})[d] = grade
    qrels = {q: judged for q, judged in qrels.items() if max(judged.values()) > 0}
    texts = [f"{doc['title']} {doc['text']}".strip() for doc in corpus]
    doc_emb = model.encode(texts)
    ids = sorted(qrels)
    query_emb = model.encode([queries[q] for q in ids])
    scores = query_emb @ doc_emb.T
    run = {
        q: {doc["_id"]: float(s) for doc, s in zip(corpus, row, strict=True)}
        for q, row in zip(ids, scores, strict=True)
    }
    per_query = trec_eval(qrels, run, k)
    return {f"{name}@{k}": float(np.mean([m[name] for m in per_query.values()])) for name in
            ("precision", "recall", "ndcg", "map")}  # fmt: skip


def test_beir_folder_trains_on_positives_and_evaluates_the_whole_corpus_as_trec_eval(tmp_path):
    from finetuner import models
    from finetuner.evaluation.evaluate import evaluate_dataset

    folder = make_beir(tmp_path / "beir")
    result, train, evaluation = preprocess(folder, tmp_path)
    train_rows = judgements(0, N_TRAIN)
    positives = [(q, d) for q, d, grade in train_rows if grade > 0]
    assert len(train) == result.counts["train_rows"] == len(positives)
    pairs = wordnet(N_DOCS)
    # A document is its title and text; judgements graded 0 do not train.
    assert train.rows([0])[0] == (pairs[0][0], pairs[0][1])
    assert train.rows([1])[0] == (pairs[0][0], "WordNet " + pairs[1][1])
    assert evaluation.kind == "graded"
    assert len(evaluation.corpus) == N_DOCS  # the whole corpus, not the judged documents
    assert len(evaluation) == len(judgements(N_TRAIN, N_QUERIES))
    assert result.counts["corpus_documents"] == N_DOCS
    report = result.report(str(folder), "")
    assert "format: BEIR" in report and "| corpus documents | 75 |" in report

    model = models.pretrained(_spec())
    ours = evaluate_dataset(model, evaluation, K)
    expected = figures_of(model, folder, judgements(N_TRAIN, N_QUERIES))
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    # Graded: the same ranking scored with every grade as 1 gives another nDCG.
    grades = evaluation.table.column("score").cast("bool").cast("float64")
    binary = dataset.Dataset(
        "graded", evaluation.table.set_column(3, "score", grades), evaluation.corpus
    )
    assert evaluate_dataset(model, binary, K)["ndcg@10"] != pytest.approx(ours["ndcg@10"])


def test_bad_rows_name_file_line_and_column_and_max_bad_rows_holds(tmp_path):
    folder = make_beir(tmp_path / "beir")
    with open(folder / "corpus.jsonl", "a") as f:
        f.write('{"title": "x", "text": "no id"}\n')  # line 76
    with open(folder / "queries.jsonl", "a") as f:
        f.write("{not json\n")  # line 61
    with open(folder / "qrels" / "train.tsv", "a") as f:
        f.write("q1\td2\thigh\n")
    with open(folder / "qrels" / "test.tsv", "a") as f:
        f.write("q45\tnowhere\t1\n")
    train_lines = len(judgements(0, N_TRAIN)) + 2
    test_lines = len(judgements(N_TRAIN, N_QUERIES)) + 2
    messages = [
        f"{folder}/corpus.jsonl, line 76, column _id: '_id' is missing.",
        f"{folder}/queries.jsonl, line 61: not valid JSON",
        f"{folder}/qrels/train.tsv, line {train_lines}, column 3 (score): 'high' is not a "
        "grade; valid: an integer, 0 or more",
        f"{folder}/qrels/test.tsv, line {test_lines}, column 2 (corpus-id): document "
        f"'nowhere' is not in {folder}/corpus.jsonl.",
    ]
    result, train, _ = preprocess(folder, tmp_path / "a", max_bad_rows=4)
    assert result.counts["bad_rows_skipped"] == 4
    report = result.report(str(folder), "")
    for message in messages:
        assert message in report
    with pytest.raises(FinetunerError) as error:
        preprocess(folder, tmp_path / "b", max_bad_rows=3)
    assert "4 bad rows, more than max_bad_rows=3" in str(error.value)
    with pytest.raises(FinetunerError, match="queries.jsonl, line 61: not valid JSON"):
        preprocess(folder, tmp_path / "c")


@pytest.mark.parametrize(
    "line, message",
    [
        ("q1\td1", "expected 3 tab-separated columns (query-id, corpus-id, score), found 2"),
        ("q1\td1\t-1", "column 3 (score): '-1' is not a grade"),
        ("q1\td1\t1.5", "column 3 (score): '1.5' is not a grade"),
        ("\td1\t1", "column 1 (query-id): empty query-id"),
        ("q0\td0\t1", "column 1 (query-id): query 'q0' and document 'd0' are judged twice"),
        ("nobody\td1\t1", "column 1 (query-id): query 'nobody' is not in"),
    ],
)
def test_bad_qrels_rows(tmp_path, line, message):
    folder = make_beir(tmp_path / "beir")
    with open(folder / "qrels" / "train.tsv", "a") as f:
        f.write(line + "\n")
    with pytest.raises(FinetunerError, match="train.tsv, line") as error:
        preprocess(folder, tmp_path)
    assert message in str(error.value)


def test_duplicate_ids_and_empty_texts_are_bad_rows(tmp_path):
    folder = make_beir(tmp_path / "beir")
    with open(folder / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d3", "text": "again"}) + "\n")
        f.write(json.dumps({"_id": "d99", "title": "", "text": "  "}) + "\n")
        f.write(json.dumps({"_id": "d98", "text": ["a", "list"]}) + "\n")
    result, _, _ = preprocess(folder, tmp_path, max_bad_rows=3)
    report = result.report(str(folder), "")
    assert "corpus.jsonl, line 76, column _id: _id 'd3' appears twice." in report
    assert "corpus.jsonl, line 77, column text: empty text." in report
    assert "corpus.jsonl, line 78, column text: 'text' is a list, not text." in report


def test_from_s3_without_test_qrels_holds_out_train_queries(tmp_path, s3):
    from finetuner.io import storage

    folder = make_beir(tmp_path / "beir", test=False)
    uri = f"s3://{s3}/data/beir/"
    storage.upload_dir(folder, uri)
    assert beir.is_beir(uri) and beir.is_beir(uri.rstrip("/"))
    assert not beir.is_beir(f"s3://{s3}/data/beir/corpus.jsonl")
    result, train, evaluation = preprocess(uri, tmp_path, val_split=0.25)
    held = set(evaluation.column("query_id"))
    assert len(held) == round(N_TRAIN * 0.25)
    train_queries = set(train.column("query"))
    queries = dict((f"q{i}", term) for i, (term, _) in enumerate(wordnet(N_QUERIES)))
    assert train_queries.isdisjoint({queries[q] for q in held})  # none leaks into training
    assert len(evaluation.corpus) == N_DOCS
    # val_split 0 and no test judgements: nothing to evaluate.
    with pytest.raises(FinetunerError, match="no evaluation data"):
        preprocess(uri, tmp_path / "x", val_split=0)


def test_missing_files_and_the_format_named(tmp_path):
    folder = make_beir(tmp_path / "beir")
    (folder / "qrels" / "train.tsv").unlink()
    with pytest.raises(FinetunerError, match=r"has no qrels/train.tsv; BEIR data is a BEIR"):
        preprocess(folder, tmp_path)
    plain = tmp_path / "pairs.csv"
    plain.write_text("query,document\na,b\n")
    assert not beir.is_beir(str(plain))
    with pytest.raises(FinetunerError, match="has no corpus.jsonl"):
        beir.locate(str(plain))
    with pytest.raises(FinetunerError, match="data_options.format: beir names a folder"):
        formats.read_rows(str(plain), formats.options({"format": "beir"}))


def test_fit_rejects_bad_beir_data_before_the_run(tmp_path):
    import finetuner

    folder = make_beir(tmp_path / "beir")
    with open(folder / "qrels" / "test.tsv", "a") as f:
        f.write("q45\td1\tx\n")
    output = tmp_path / "out"
    with pytest.raises(FinetunerError, match=r"test.tsv, line \d+, column 3 \(score\)"):
        finetuner.fit("minilm-l6-en", str(folder), output=str(output), max_length=32)
    assert not output.exists()
    with pytest.raises(FinetunerError, match="BEIR data holds text queries"):
        finetuner.fit("mlp", str(folder), output=str(output), model_options={"input_size": 4})


def test_fit_on_a_beir_folder_through_the_pipeline(tmp_path):
    """The pipeline's evaluation is trec_eval's graded figures over the whole corpus."""
    import finetuner
    from finetuner import models

    folder = make_beir(tmp_path / "beir")
    run = finetuner.fit(
        "minilm-l6-en", str(folder), output=str(tmp_path / "model"), epochs=1, batch_size=16,
        max_length=32, data_options={"format": "beir"},
    )  # fmt: skip
    metrics = run.metrics()
    assert set(metrics["after"]) == {
        f"{name}@{K}" for name in ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")
    }
    expected = figures_of(models.pretrained(_spec()), folder, judgements(N_TRAIN, N_QUERIES))
    for name, value in expected.items():
        assert metrics["before"][name] == pytest.approx(value, abs=1e-5), name


def test_cli_names_what_a_folder_lacks(tmp_path):
    import subprocess
    import sys

    folder = make_beir(tmp_path / "beir")
    (folder / "queries.jsonl").unlink()
    other = tmp_path / "other"
    other.mkdir()
    for train_data, message in (
        (folder, f"error: parameter train_data: {folder} has no queries.jsonl; BEIR data is"),
        (other, f"error: parameter train_data: {other} is a folder; expected a CSV, JSONL or "
         "Parquet file, or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)."),
    ):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "finetuner", "run", "--model", "minilm-l6-en",
             "--train-data", str(train_data), "--output", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
