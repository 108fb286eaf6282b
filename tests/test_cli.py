"""Bad input to `finetuner run`: a clear message, a non-zero exit, nothing written."""

import subprocess
import sys
import time

import pytest


def finetuner(*args, env_update=None, timeout=120):
    import os

    env = {**os.environ, **(env_update or {})}
    return subprocess.run(
        [sys.executable, "-m", "finetuner", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def output(tmp_path):
    return tmp_path / "out"


def assert_refused(result, output, *phrases):
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_unknown_model_fails_fast_and_lists_valid_names(pairs_csv, output):
    start = time.perf_counter()
    result = finetuner(
        "run", "--model", "resnet9000", "--train-data", str(pairs_csv()), "--output", str(output)
    )
    assert time.perf_counter() - start < 5
    assert_refused(result, output, "unknown model 'resnet9000'", "minilm-l6-en", "bert-base-en")


def test_missing_train_data(tmp_path, output):
    missing = tmp_path / "nope.csv"
    result = finetuner("run", "--train-data", str(missing), "--output", str(output))
    assert_refused(result, output, "parameter train_data", str(missing), "does not exist")


def test_missing_s3_train_data(s3, output):
    uri = f"s3://{s3}/data/absent.csv"
    result = finetuner("run", "--train-data", uri, "--output", str(output))
    assert_refused(result, output, uri, "does not exist")


@pytest.mark.parametrize("p", ["0", "-2"])
def test_non_positive_pooler_p(pairs_csv, output, p):
    result = finetuner(
        "run", "--pooler", "GeM", "--pooler-p", p, "--train-data", str(pairs_csv()),
        "--output", str(output),
    )  # fmt: skip
    assert_refused(result, output, "parameter pooler_p: must be > 0")


def test_wrong_s3_secret_names_the_endpoint(s3, s3_server, pairs_csv, output):
    from finetuner.io import storage

    uri = f"s3://{s3}/data/pairs.csv"
    storage.upload_file(pairs_csv(), uri)
    result = finetuner(
        "run", "--train-data", uri, "--output", str(output),
        env_update={"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
    )  # fmt: skip
    assert_refused(result, output, s3_server.endpoint, "refused the credentials")
    assert "not-the-secret" not in result.stderr


def test_empty_csv(tmp_path, output):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = finetuner("run", "--train-data", str(empty), "--output", str(output))
    assert_refused(result, output, str(empty), "is empty")


def test_bad_row_names_file_and_line(tmp_path, output):
    bad = tmp_path / "bad.csv"
    bad.write_text("query,document\nsun,the star at the centre\nmoon,earth's satellite,extra\n")
    result = finetuner("run", "--train-data", str(bad), "--output", str(output))
    assert_refused(result, output, f"{bad}, line 3", "expected 2 columns")


def test_an_existing_export_is_refused_before_any_work(pairs_csv, tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    result = finetuner("run", "--train-data", str(pairs_csv()), "--output", str(out))
    assert result.returncode == 2 and "already holds an exported model" in result.stderr
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_help_lists_the_contract_options():
    result = finetuner("run", "--help")
    for option in (
        "--model", "--train-data", "--eval-data", "--val-split", "--loss", "--epochs",
        "--batch-size", "--learning-rate", "--pooler", "--pooler-p", "--pooler-eps",
        "--seed", "--output", "--summary-json",
    ):  # fmt: skip
        assert option in result.stdout


def test_no_evaluation_data_is_refused(pairs_csv, output):
    result = finetuner(
        "run", "--train-data", str(pairs_csv()), "--val-split", "0", "--output", str(output)
    )
    assert_refused(result, output, "no evaluation data")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://", "parameter output_uri: 's3://' names no bucket"),
        ("s3:/bucket/out", "parameter output_uri: 's3:/bucket/out' is not a valid URI"),
        ("S3://bucket/out", "parameter output_uri: 'S3://bucket/out' is not a valid URI"),
        ("s3://bucket", "parameter output_uri: 's3://bucket' names no key"),
        ("s3://Bad_Bucket/out", "'Bad_Bucket' is not a valid bucket name"),
    ],
)
def test_an_output_uri_that_is_not_one_is_refused(pairs_csv, tmp_path, monkeypatch, uri, message):
    # Once, `--output s3://` wrote a local folder named `s3:` and reported success.
    monkeypatch.chdir(tmp_path)
    result = finetuner("run", "--train-data", str(pairs_csv()), "--output", uri)
    assert_refused(result, tmp_path / "s3:", message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]


def test_bad_output_locations_are_refused_and_left_as_they_were(pairs_csv, tmp_path):
    train = str(pairs_csv())
    a_file = tmp_path / "model.bin"
    a_file.write_text("mine")
    result = finetuner("run", "--train-data", train, "--output", str(a_file))
    assert result.returncode == 2 and f"{a_file} is a file" in result.stderr, result.stderr
    assert a_file.read_text() == "mine"

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my notes")
    result = finetuner("run", "--train-data", train, "--output", str(notes))
    assert result.returncode == 2, result.stderr
    assert "holds other files (README.md) and no export" in result.stderr
    assert [p.name for p in notes.iterdir()] == ["README.md"]
    assert (notes / "README.md").read_text() == "my notes"

    under_a_file = a_file / "out"
    result = finetuner("run", "--train-data", train, "--output", str(under_a_file))
    assert result.returncode == 2 and f"{a_file} is a file" in result.stderr, result.stderr


def test_summary_json_is_checked_before_the_run(pairs_csv, tmp_path, output):
    train = str(pairs_csv())
    missing = tmp_path / "no-such-folder" / "summary.json"
    result = finetuner("run", "--train-data", train, "--output", str(output),
                       "--summary-json", str(missing))  # fmt: skip
    assert_refused(result, output, "parameter summary_json", "no-such-folder does not exist")
    result = finetuner("run", "--train-data", train, "--output", str(output),
                       "--summary-json", str(tmp_path))  # fmt: skip
    assert_refused(result, output, "parameter summary_json", "is a folder; expected a file")
    result = finetuner("run", "--train-data", train, "--output", str(output),
                       "--summary-json", "s3:/bucket/summary.json")  # fmt: skip
    assert_refused(result, output, "parameter summary_json", "is not a valid URI")


def test_train_data_that_is_a_folder_is_called_a_folder(tmp_path, output):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    result = finetuner("run", "--train-data", str(folder), "--output", str(output))
    assert_refused(result, output, f"parameter train_data: {folder} is a folder")
    result = finetuner("run", "--train-data", "s3:data.csv", "--output", str(output))
    assert_refused(result, output, "parameter train_data: 's3:data.csv' is not a valid URI")


def test_a_failed_run_releases_its_claim(tmp_path):
    # Bad data fails after the claim: the claim goes, and so does the folder it made.
    bad = tmp_path / "bad.csv"
    bad.write_text("query,document\nsun,the star\nmoon,a satellite,extra\n")
    output = tmp_path / "out"
    result = finetuner("run", "--train-data", str(bad), "--output", str(output))
    assert_refused(result, output, "expected 2 columns")
    output.mkdir()
    result = finetuner("run", "--train-data", str(bad), "--output", str(output))
    assert result.returncode == 2 and list(output.iterdir()) == []
