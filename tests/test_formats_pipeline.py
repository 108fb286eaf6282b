"""Each data format and kind end to end through `finetuner run`: labeled CSV, scored JSONL
and Parquet pairs (CSV pairs of text, images, text-image and meshes have their own tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

RETRIEVAL = {"precision@10", "recall@10", "hit_rate@10", "mrr@10", "ndcg@10", "map@10"}


def run(*args, tmp_path):
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "finetuner", "run", *args, "--output", str(tmp_path / "out"),
         "--summary-json", str(summary)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return result, summary


def vectors(n: int, classes: int, dim: int, seed: int = 0):
    """Noisy copies of one random centre per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.arange(n) % classes
    return centres[labels] + 0.3 * rng.normal(size=(n, dim)), labels


def test_labeled_csv_with_a_skipped_bad_row_and_choices_by_name(tmp_path):
    points, labels = vectors(60, 4, 6)
    rows = [
        " ".join(f"{x:.4f}" for x in p) + f",class{c}" for p, c in zip(points, labels, strict=True)
    ]
    rows.insert(10, "1 2 3,class0")  # a vector of the wrong length: skipped and counted
    (tmp_path / "items.csv").write_text("item,label\n" + "\n".join(rows) + "\n")
    result, summary = run(
        "--model", "mlp", "--model-options", '{"input_size": 6, "hidden_sizes": [16]}',
        "--train-data", str(tmp_path / "items.csv"), "--data-options", '{"is_labeled": true}',
        "--max-bad-rows", "1", "--epochs", "3", "--batch-size", "16", "--learning-rate", "1e-2",
        "--loss", "ArcFaceLoss", "--loss-options", '{"margin": 20}', "--optimizer", "SGD",
        "--optimizer-options", '{"momentum": 0.9}', "--scheduler", "cosine",
        "--scheduler-step", "epoch", tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads(summary.read_text())["metrics"]
    assert set(metrics["after"]) == RETRIEVAL
    assert "rows: ArcFaceLoss, class batches" in result.stderr + result.stdout


def test_labeled_csv_with_one_bad_row_too_many_fails_and_writes_nothing(tmp_path):
    (tmp_path / "items.csv").write_text("1 2,a\n3 4,a\n5,b\n6 7,b\n8,b\n")
    result, _ = run(
        "--model", "mlp", "--model-options", '{"input_size": 2}', "--train-data",
        str(tmp_path / "items.csv"), "--data-options", '{"is_labeled": true, "max_bad_rows": 1}',
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "2 bad rows, more than max_bad_rows=1" in result.stderr
    assert "items.csv, line 3, column 1: expected a vector of 2 finite numbers" in result.stderr
    assert not (tmp_path / "out").exists()


def test_scored_jsonl_text_pairs(tmp_path, tiny_bert):
    weights = tiny_bert(tmp_path / "bert")
    words = ["cat", "dog", "car", "bus", "tree", "rose", "milk", "bread"]
    rows = [
        {"sentence1": f"a {a}", "sentence2": f"the {b}", "score": float(a == b)}
        for a in words for b in words
    ]  # fmt: skip
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result, summary = run(
        "--model", "minilm-l6-en", "--weights", str(weights), "--train-data", str(path),
        "--epochs", "1", "--batch-size", "16", "--max-length", "16", tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads(summary.read_text())["metrics"]
    assert set(metrics["after"]) == {"spearman", "pearson"}
    assert -1 <= metrics["after"]["spearman"] <= 1


def test_parquet_pairs_of_vectors_with_wiseft(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 5))  # each pair: two noisy copies of one centre
    anchors = centres + 0.2 * rng.normal(size=centres.shape)
    positives = centres + 0.2 * rng.normal(size=centres.shape)
    table = pa.table({"anchor": anchors.tolist(), "positive": positives.tolist()})
    pq.write_table(table, tmp_path / "pairs.parquet")
    result, summary = run(
        "--model", "mlp", "--model-options", '{"input_size": 5, "hidden_sizes": [8]}',
        "--train-data", str(tmp_path / "pairs.parquet"), "--epochs", "1",
        "--batch-size", "8", "--val-split", "0.25", "--wiseft-alpha", "0.5", tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert set(json.loads(summary.read_text())["metrics"]["after"]) == RETRIEVAL
