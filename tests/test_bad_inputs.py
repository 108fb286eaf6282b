"""The bad-input corpus: malformed data through `finetuner run`, each with its clear error
(what, where, what is valid), exit status 2, and nothing written to the output; or, with
max_bad_rows, a counted skip.

`finetuner run` checks everything before the pipeline starts, so these run in-process and
fail in well under a second each; preprocess runs the same checks on a cluster.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest

from finetuner.catalogue import lookup
from finetuner.cli import main
from finetuner.data import dataset, formats
from finetuner.errors import FinetunerError

MLP = ["--model", "mlp", "--model-options", '{"input_size": 2}']
LITE0 = ["--model", "efficientnet-lite0"]
POINTNET = ["--model", "pointnet-base"]


def parquet_bytes(columns: dict | list[tuple[str, list]]) -> bytes:
    """A Parquet file of these columns; a list of (name, values) may name one twice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    if isinstance(columns, dict):
        columns = list(columns.items())
    table = pa.Table.from_arrays([pa.array(v) for _, v in columns], [n for n, _ in columns])
    pq.write_table(table, buffer)
    return buffer.getvalue()


# name: (files {relative path: content}, data file, extra arguments, expected error regex).
# `{dir}` in a regex is the data folder.
SIX_PAIRS = "a,b\nc,d\ne,f\ng,h\ni,j\nk,l\n"

CORPUS = {
    "empty file": ({"d.csv": ""}, "d.csv", [], r"d.csv is empty"),
    "blank lines only": ({"d.csv": "\n  \n\t\n"}, "d.csv", [], r"d.csv is empty"),
    "header only": ({"d.csv": "query,document\n"}, "d.csv", [], r"header but no data rows"),
    "ragged row": ({"d.csv": "a,b\nc,d\ne,f,g\n"}, "d.csv", [],
                   r"d.csv, line 3: expected 2 columns like the first row, found 3"),
    "one column": ({"d.csv": "just one\nand another\n"}, "d.csv", [],
                   r"line 1: expected 2 columns .*found 1"),
    "wrong delimiter": ({"d.csv": "a;b\nc;d\n"}, "d.csv",
                        ["--data-options", '{"dialect": "excel"}'],
                        r"line 1: .*found 1 with delimiter ','.*data_options.dialect"),
    "bad delimiter option": ({"d.csv": "a,b\n"}, "d.csv", ["--data-options", '{"dialect": "ab"}'],
                             r"dialect: invalid value 'ab': valid: one of auto, excel"),
    "bad utf-8": ({"d.csv": b"a,b\nc,caf\xe9\n"}, "d.csv", [],
                  r"line 2, column 2: bytes that are not valid utf-8"),
    "NUL byte": ({"d.csv": b"a,b\nc,d\x00\n"}, "d.csv", [], r"line 2: NUL byte"),
    "unclosed quote": ({"d.csv": 'a,b\nc,"d\ne,f\n'}, "d.csv", [], r"line 2: malformed CSV"),
    "10 MB field": ({"d.csv": "a," + "x" * 10_000_000 + "\n"}, "d.csv", [],
                    r"line 1, column 2 \(document\): 10000000 characters, more than the limit"),
    "empty document": ({"d.csv": "a,b\nc,  \n"}, "d.csv", [],
                       r"line 2, column 2 \(document\): empty document"),
    "missing label": ({"d.csv": "1 2,a\n3 4,\n"}, "d.csv",
                      [*MLP, "--data-options", '{"is_labeled": true}'],
                      r"line 2, column 2 \(label\): empty label"),
    "score is text": ({"d.csv": "a,b,0.5\nc,d,high\n"}, "d.csv", [],
                      r"line 2, column 3 \(score\): 'high' is not a finite number"),
    "score is NaN": ({"d.csv": "a,b,0.5\nc,d,NaN\n"}, "d.csv", [],
                     r"line 2, column 3 \(score\): 'NaN' is not a finite number"),
    "score with wrong loss": ({"d.csv": "".join(f"a{i},b,0.5\n" for i in range(6))}, "d.csv",
                              ["--loss", "TripletMarginLoss"],
                              r"TripletMarginLoss does not train on scored data"),
    "class sampler on pairs": ({"d.csv": "a,b\nc,d\n"}, "d.csv", ["--sampler", "class"],
                               r"the class sampler needs labeled data"),
    "vector too short": ({"d.csv": "1 2,3 4\n5,6 7\n"}, "d.csv", MLP,
                         r"line 2, column 1: expected a vector of 2 finite numbers"),
    "vector with text": ({"d.csv": "1 2,3 x\n"}, "d.csv", MLP,
                         r"line 1, column 2: expected a vector of 2 finite numbers"),
    "bad JSON line": ({"d.jsonl": '{"query": "a", "document": "b"}\n{"query": "a",\n'},
                      "d.jsonl", [], r"d.jsonl, line 2: not valid JSON"),
    "JSON without columns": ({"d.jsonl": '{"q": "a", "d": "b"}\n'}, "d.jsonl", [],
                             r"no column for 'query' among \['d', 'q'\]"),
    "not Parquet": ({"d.parquet": b"PAR1 junk"}, "d.parquet", [], r"not a readable Parquet"),
    "path traversal": ({"d.csv": "../../etc/passwd,x.png\n"}, "d.csv", LITE0,
                       r"line 1, column 1: '../../etc/passwd' must be a path inside the data"),
    "absolute path": ({"d.csv": "/etc/passwd,x.png\n"}, "d.csv", LITE0,
                      r"line 1, column 1: '/etc/passwd' must be a path inside"),
    "missing image": ({"d.csv": "nothere.png,nothere2.png\n"}, "d.csv", LITE0,
                      r"line 1, column 1: .*nothere.png does not exist"),
    "missing mesh": ({"d.csv": "a.off,b.off\n"}, "d.csv", POINTNET,
                     r"line 1, column 1: .*a.off does not exist"),
    "Parquet without columns": ({"d.parquet": parquet_bytes({"a": ["x"], "b": ["y"]})},
                                "d.parquet", [], r"no column for 'query' among \['a', 'b'\]"),
    "unknown data option": ({"d.csv": "a,b\n"}, "d.csv", ["--data-options", '{"sep": ";"}'],
                            r"unknown option 'sep'. Valid options: size, dialect"),
    "too many bad rows": ({"d.csv": "a,b\nc,\ne,\ng,h\n"}, "d.csv", ["--max-bad-rows", "1"],
                          r"2 bad rows, more than max_bad_rows=1\. The first:"),
    "held-out split too big": ({"d.csv": "a,b\nc,d\n"}, "d.csv", ["--val-split", "0.9"],
                               r"val_split: 0.9 of 2 distinct queries leaves no queries"),
    "unknown optimizer": ({"d.csv": "a,b\nc,d\n"}, "d.csv", ["--optimizer", "Adamm"],
                          r"optimizer.*Adamm"),
    "bad optimizer option": ({"d.csv": "a,b\nc,d\n"}, "d.csv",
                             ["--optimizer", "SGD", "--optimizer-options", '{"betas": [0.9]}'],
                             r"optimizer_options: SGD has no option betas. Its options: .*mom"),
    "unknown scheduler": ({"d.csv": "a,b\nc,d\n"}, "d.csv", ["--scheduler", "step"],
                          r"scheduler.*'step'"),
    "unknown miner": ({"d.csv": "a,b\nc,d\n"}, "d.csv", ["--miner", "HardMiner"],
                      r"miner.*HardMiner"),
    "best-model metric not reported": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--best-model-metric", "ndcg@5"],
        r"best_model_metric: no metric 'ndcg@5' is reported each epoch. Valid: train_loss, "
        r"precision@10"),
    "monitor without per-epoch evaluation": (
        {"d.csv": SIX_PAIRS}, "d.csv",
        ["--early-stopping-patience", "2", "--evaluate-every-epoch", "false",
         "--early-stopping-options", '{"monitor": "ndcg@10"}'],
        r"early_stopping_options.monitor: no metric 'ndcg@10' .*need per-epoch evaluation"),
    "bad early-stopping option": (
        {"d.csv": SIX_PAIRS}, "d.csv",
        ["--early-stopping-patience", "2", "--early-stopping-options", '{"patience": 3}'],
        r"unknown option\(s\) patience; valid: monitor, mode, min_delta, baseline"),
    "model artifact that is no export": (
        {"d.csv": "a,b\nc,d\n", "old/model/x": "x"}, "d.csv", ["--model-artifact", "old"],
        r"model_artifact: old/ is not a finished export \(manifest.json is missing\)"),
    # Options of odd values and types: each names the option, its value and what is valid.
    "unknown encoding": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"encoding": "nope"}'],
        r"data_options.encoding: invalid value 'nope': not an encoding"),
    "a bytes codec as encoding": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"encoding": "rot13"}'],
        r"data_options.encoding: invalid value 'rot13': not a text encoding"),
    "UTF-16 without its byte-order mark": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"encoding": "utf-16"}'],
        r"d.csv: cannot decode as utf-16 .*set data_options.encoding"),
    "encoding of another type": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"encoding": 8}'],
        r"data_options.encoding: invalid value 8: Input should be a valid string"),
    "a quote as delimiter": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"dialect": "\\""}'],
        r"data_options.dialect: invalid value '\"': valid: one of auto"),
    "dialect of another type": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"dialect": [","]}'],
        r"data_options.dialect: invalid value \[','\]"),
    "size beyond any file": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"size": 1%s}' % ("0" * 30)],
        r"data_options.size: invalid value 10+: .*less than or equal to 9223372036854775807"),
    "max_file_bytes beyond the media cache": (
        {"d.csv": "1 2,3 4\n"}, "d.csv", [*LITE0, "--data-options", '{"max_file_bytes": 1e12}'],
        r"max_file_bytes: invalid value 1000000000000.0: .*2147483648 .*media cache"),
    "max_bad_rows not a count": (
        {"d.csv": SIX_PAIRS}, "d.csv", ["--data-options", '{"max_bad_rows": "many"}'],
        r"data_options.max_bad_rows: invalid value 'many': Input should be a valid integer"),
    # Data files that are not files, and contents that are not what they claim.
    "data is a folder": ({"d.csv/x.csv": SIX_PAIRS}, "d.csv", [],
                         r"train_data: .*d.csv is a folder; expected a CSV, JSONL or Parquet"),
    "JSON integer of 5000 digits": (
        {"d.jsonl": '{"query": 1' + "0" * 5000 + ', "document": "b"}\n'}, "d.jsonl", [],
        r"d.jsonl, line 1: a number Python cannot read"),
    "JSON nested too deeply": ({"d.jsonl": '{"query": "a", "document": "b"}\n'
                                           + '{"query": ' + "[" * 100_000 + "]" * 100_000 + "}\n"},
                               "d.jsonl", [], r"d.jsonl, line 2: (JSON nested too deeply|'query')"),
    "JSON vector of a huge integer": (
        {"d.jsonl": '{"query": [1' + "0" * 400 + ', 1], "document": [1, 2]}\n'}, "d.jsonl", MLP,
        r"line 1, column 1: 'query' holds a number too large for a float"),
    "Parquet column twice": (
        {"d.parquet": parquet_bytes([("query", ["a"]), ("query", ["b"]), ("document", ["c"])])},
        "d.parquet", [], r"d.parquet: the column\(s\) query appear more than once"),
    "Parquet column of the wrong type": (
        {"d.parquet": parquet_bytes({"query": [{"x": 1}], "document": ["b"]})}, "d.parquet", [],
        r"d.parquet, row 1, column 1: 'query' is a dict, not a value"),
    # Finite numbers that are not finite once training reads them (float32).
    "vector that overflows float32": ({"d.csv": "1e308 1e308,1 2\n3 4,5 6\n"}, "d.csv", MLP,
                                      r"line 1, column 1: the vector is too large for float32"),
    "vector whose length overflows float32": (
        {"d.csv": "3e38 3e38,1 2\n3 4,5 6\n"}, "d.csv", MLP,
        r"line 1, column 1: the vector is too large for float32.*length \(L2 norm\)"),
    "vector with inf as text": ({"d.csv": "1 2,3 4\ninf 1,5 6\n"}, "d.csv", MLP,
                                r"line 2, column 1: expected a vector of 2 finite numbers"),
    "score beyond float32": ({"d.csv": "a,b,0.5\nc,d,1e39\n"}, "d.csv", [],
                             r"line 2, column 3 \(score\): '1e39' is not a finite number \(valid: "
                             r"magnitude up to 3.4e\+38"),
    "margin beyond float32": ({"d.csv": "q,p,n,0.5\nq2,p,n,-1e300\n"}, "d.csv", [],
                              r"line 2, column 4 \(margin\): '-1e300' is not a finite number"),
    # Known before training: what the batches and the evaluation need of the data.
    "labeled data without a label twice": (
        {"d.csv": "".join(f"item {i},label {i}\n" for i in range(8))}, "d.csv",
        ["--data-options", '{"is_labeled": true}'],
        r"no label of the train data has two items \(8 labels, one item each\): the class sampler"),
    "more items per class than a batch holds": (
        {"d.csv": "".join(f"item {i},label {i % 2}\n" for i in range(8))}, "d.csv",
        ["--data-options", '{"is_labeled": true}', "--batch-size", "4",
         "--num-items-per-class", "8"],
        r"num_items_per_class: 8 is more than batch_size 4; valid: 2 to batch_size"),
    "labeled eval data without a label twice": (
        {"d.csv": "".join(f"item {i},label {i % 2}\n" for i in range(8)),
         "e.csv": "x,1\ny,2\n"}, "d.csv",
        ["--data-options", '{"is_labeled": true}', "--eval-data", "{dir}/e.csv"],
        r"e.csv: no label of the eval data has two items \(2 items, 2 labels\)"),
    "pairs of one query for the no_duplicates sampler": (
        {"d.csv": "a,b\na,c\na,d\n", "e.csv": "x,y\n"}, "d.csv", ["--eval-data", "{dir}/e.csv"],
        r"1 distinct queries and 3 distinct documents: the no_duplicates sampler needs two rows"),
    "one pair": ({"d.csv": "a,b\n", "e.csv": "x,y\n"}, "d.csv", ["--eval-data", "{dir}/e.csv"],
                 r"the train data has 1 distinct row\(s\); training needs at least 2"),
    "batch of one": ({"d.csv": SIX_PAIRS}, "d.csv", ["--batch-size", "1"],
                     r"parameter batch_size: invalid value 1. Valid: an integer >= 2 \(in-batch "
                     r"negatives and positives need two or more rows in a batch\)"),
    "learning rate of 2": ({"d.csv": SIX_PAIRS}, "d.csv", ["--learning-rate", "2"],
                           r"learning_rate: invalid value 2.0. Valid: a number in \(0, 1\)"),
    "model option of the wrong type": (
        {"d.csv": SIX_PAIRS}, "d.csv",
        ["--model", "mlp", "--model-options", '{"input_size": "x"}'],
        r"parameter input_size: invalid value 'x': Input should be a valid integer"),
}  # fmt: skip


@pytest.mark.parametrize("files, data, extra, message", CORPUS.values(), ids=CORPUS.keys())
def test_corpus(tmp_path, capsys, files, data, extra, message):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    output = tmp_path / "out"
    extra = [arg.replace("{dir}", str(tmp_path)) for arg in extra]
    code = main(["run", "--train-data", str(tmp_path / data), "--output", str(output), *extra])
    out, stderr = capsys.readouterr()
    assert code == 2, stderr
    assert stderr.startswith("error: ") and "Traceback" not in stderr + out
    assert re.search(message, stderr), stderr
    assert not output.exists()


def test_the_corpus_is_big_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("where", ["key", "bucket"])
def test_missing_s3_data(s3, s3_server, capsys, tmp_path, where):
    uri = f"s3://{s3}/no/such.csv" if where == "key" else "s3://no-such-bucket-x/d.csv"
    code = main(["run", "--train-data", uri, "--output", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and f"{uri}" in stderr and "does not exist" in stderr
    assert not (tmp_path / "out").exists()


def test_wrong_s3_credentials(s3, s3_server, capsys, tmp_path, monkeypatch):
    from finetuner.io import storage

    storage.write_text(f"s3://{s3}/d.csv", "a,b\nc,d\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage._clients.clear()
    code = main(["run", "--train-data", f"s3://{s3}/d.csv", "--output", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    storage._clients.clear()
    assert code == 2 and s3_server.endpoint in stderr and "not-the-secret" not in stderr
    assert not (tmp_path / "out").exists()


def test_bad_rows_within_the_limit_are_skipped_and_counted_in_the_report(tmp_path):
    (tmp_path / "d.csv").write_text("".join(f"q{i},d{i}\n" for i in range(20)) + "x,\ny,\n")
    spec = lookup("minilm-l6-en")
    result = dataset.preprocess(spec, str(tmp_path / "d.csv"), "", 0.2, 0,
                                formats.DataOptions(max_bad_rows=2),
                                tmp_path / "tr", tmp_path / "ev")  # fmt: skip
    assert result.counts["bad_rows_skipped"] == 2
    assert result.counts["train_rows"] + result.counts["eval_rows"] == 20
    report = result.report(str(tmp_path / "d.csv"), "")
    assert "## Bad rows skipped: 2" in report and "line 21, column 2 (document)" in report


# ---------------------------------------------------------------- media


def png(index: int = 0) -> bytes:
    from conftest import fashion_mnist
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(fashion_mnist(index + 1)[0][index]).save(buffer, format="PNG")
    return buffer.getvalue()


MEDIA = {
    "truncated PNG": (lambda: png()[:60], r"x.png: truncated or corrupt PNG image"),
    "bytes that are not an image": (lambda: b"not an image at all" * 10,
                                    r"x.png: not an image: PIL does not recognise"),
    "empty image file": (lambda: b"", r"x.png"),
}  # fmt: skip


@pytest.mark.parametrize("content, message", MEDIA.values(), ids=MEDIA.keys())
def test_bad_images_are_bad_rows(tmp_path, capsys, content, message):
    (tmp_path / "good.png").write_bytes(png(1))
    (tmp_path / "x.png").write_bytes(content())
    (tmp_path / "d.csv").write_text("good.png,good.png\nx.png,good.png\n")
    code = main(["run", *LITE0, "--train-data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "out")])  # fmt: skip
    out, stderr = capsys.readouterr()
    assert code == 2 and re.search(r"d.csv, line 2, column 1: .*" + message, stderr), stderr
    assert "Traceback" not in out + stderr
    assert not (tmp_path / "out").exists()


def test_an_image_over_the_pixel_cap_is_a_bad_row(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(png())  # 28 x 28
    (tmp_path / "d.csv").write_text("x.png,x.png\n")
    code = main(["run", *LITE0, "--train-data", str(tmp_path / "d.csv"), "--output",
                 str(tmp_path / "out"), "--data-options", '{"max_image_pixels": 500}'])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2 and "more than max_image_pixels=500" in stderr


def test_media_urls_to_metadata_addresses_are_refused(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("http://169.254.169.254/latest/x.png,http://b/y.png\n")
    code = main(["run", *LITE0, "--train-data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "out")])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2 and "line 1, column 1" in stderr and "169.254.169.254" in stderr


INVALID_MESHES = "/usr/share/assimp/models/invalid"
# These two load as point clouds: a missing material, and a valid OFF body.
LOADABLE = {"malformed2.obj", "readme.txt"}


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in Path(INVALID_MESHES).iterdir()
           if p.name not in LOADABLE),
)  # fmt: skip
def test_assimps_invalid_meshes_are_bad_rows(tmp_path, capsys, name):
    shutil.copy(f"{INVALID_MESHES}/{name}", tmp_path / name)
    (tmp_path / "d.csv").write_text(f"{name},{name}\n")
    code = main(["run", *POINTNET, "--train-data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "out")])  # fmt: skip
    out, stderr = capsys.readouterr()
    assert code == 2 and "d.csv, line 1, column 1: " in stderr and "Traceback" not in out + stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- files that are not files


def _loop(folder: Path, a: str, b: str) -> None:
    (folder / a).symlink_to(b)
    (folder / b).symlink_to(a)


# name: (setup(folder) -> `finetuner run` arguments, expected error regex). These need
# symbolic links, named pipes and folders, which CORPUS's file contents cannot make.
SPECIAL = {
    "images in a symlink loop": (
        lambda d: (_loop(d, "a.png", "b.png"), "a.png,a.png\n", LITE0)[1:],
        r"d.csv, line 1, column 1: .*a.png is a loop of symbolic links"),
    "meshes in a symlink loop": (
        lambda d: (_loop(d, "a.off", "b.off"), "a.off,a.off\n", POINTNET)[1:],
        r"d.csv, line 1, column 1: .*a.off is a loop of symbolic links"),
    "an image that is a named pipe": (
        lambda d: (os.mkfifo(d / "x.png"), "x.png,x.png\n", LITE0)[1:],
        r"line 1, column 1: .*x.png is not a regular file \(a named pipe"),
    "an image that is a folder": (
        lambda d: ((d / "x.png").mkdir(), "x.png,x.png\n", LITE0)[1:],
        r"line 1, column 1: .*x.png is a folder; expected an image or mesh file"),
    "an image under a file": (
        lambda d: ((d / "f").write_text("x"), "f/x.png,f/x.png\n", LITE0)[1:],
        r"line 1, column 1: cannot read .*f/x.png \(Not a directory\)"),
    "an image path too long": (
        lambda d: ("x" * 5000 + ".png,x.png\n", LITE0),
        r"line 1, column 1: cannot read .*\(File name too long\)"),
    "a mesh of huge coordinates": (
        lambda d: ((d / "x.off").write_text("OFF\n3 0 0\n1e308 0 0\n1.5e308 0 0\n1.7e308 1 0\n"),
                   "x.off,x.off\n", POINTNET)[1:],
        r"line 1, column 1: .*x.off: the coordinates are too large to sample and normalise"),
}  # fmt: skip


@pytest.mark.parametrize("setup, message", SPECIAL.values(), ids=SPECIAL.keys())
def test_special_files(tmp_path, capsys, setup, message):
    content, extra = setup(tmp_path)
    (tmp_path / "d.csv").write_text(content)
    code = main(["run", *extra, "--train-data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "out")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "Traceback" not in out + err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["named pipe", "symlink loop"])
def test_a_data_file_that_cannot_be_read(tmp_path, capsys, kind):
    data = tmp_path / "d.csv"
    if kind == "named pipe":
        os.mkfifo(data)  # opening it to read would wait for a writer forever
    else:
        _loop(tmp_path, "d.csv", "e.csv")
    code = main(["run", "--train-data", str(data), "--output", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    expected = "is not a regular file" if kind == "named pipe" else "Too many levels of symbolic"
    assert code == 2 and "Traceback" not in out + err
    assert err.startswith("error: parameter train_data: ") and expected in err, err
    # preprocess, on a cluster, reads without the preflight: the same error, not a hang
    with pytest.raises(FinetunerError, match=expected):
        dataset.preprocess(lookup("minilm-l6-en"), str(data), "", 0.2, 0,
                           formats.DataOptions(), tmp_path / "tr", tmp_path / "ev")  # fmt: skip
