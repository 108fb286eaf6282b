"""One output, one writer: the claim on an output, locally and on the S3 server."""

import hashlib
import json
import subprocess
import sys
import time

import pytest

from finetuner.errors import FinetunerError
from finetuner.io import claim, storage
from finetuner.io.claim import CLAIM_FILE, MANIFEST
from finetuner.orchestration import steps


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return f"s3://{request.getfixturevalue('s3')}"


def test_a_second_run_is_refused_and_names_the_first(base):
    out = storage.join(base, "models", "run")
    claim.claim_output(out, "run-a")
    assert claim.holder(out)["run_id"] == "run-a"
    with pytest.raises(FinetunerError, match=r"output_uri: .* being written by run run-a"):
        claim.claim_output(out, "run-b")
    claim.claim_output(out, "run-a")  # a retry of the same run resumes
    claim.claim_output(out + "/", "run-a")  # the same folder, however it is written
    claim.check_held(out, "run-a")
    with pytest.raises(FinetunerError, match="run run-b no longer holds its claim"):
        claim.check_held(out, "run-b")
    claim.release(out, "run-b")  # another run's claim is left alone
    assert claim.holder(out)["run_id"] == "run-a"


def test_a_crashed_runs_claim_is_taken_over_only_when_forced(base, capsys):
    out = storage.join(base, "run")
    claim.claim_output(out, "crashed")
    storage.write_text(storage.join(out, "checkpoints", "step-5", "state.pt"), "x")
    with pytest.raises(FinetunerError, match="--force-claim"):
        claim.claim_output(out, "rerun")
    claim.claim_output(out, "rerun", force=True)
    assert "taking over" in capsys.readouterr().out
    claim.check_held(out, "rerun")
    # The crashed run, were it alive after all, stops before it writes.
    with pytest.raises(FinetunerError, match="held by run rerun"):
        claim.check_held(out, "crashed")
    claim.release(out, "rerun")
    assert claim.holder(out) is None


def test_concurrent_claims_let_exactly_one_run_through(base):
    from concurrent.futures import ThreadPoolExecutor

    out = storage.join(base, "contested")

    def run(i):
        try:
            claim.claim_output(out, f"run-{i}")
            return f"run-{i}"
        except FinetunerError as error:
            return str(error)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, range(6)))
    winners = [r for r in results if r.startswith("run-")]
    assert len(winners) == 1 and claim.holder(out)["run_id"] == winners[0]
    losers = [r for r in results if not r.startswith("run-")]
    assert all(f"being written by run {winners[0]}" in r for r in losers), losers


def test_the_output_checks(base):
    # A file where the export would go.
    storage.write_text(storage.join(base, "file"), "x")
    with pytest.raises(FinetunerError, match="parameter output_uri: .*file is a file"):
        claim.claim_output(storage.join(base, "file"), "a")
    # A folder with the user's own files: nothing is claimed or overwritten.
    mine = storage.join(base, "notes")
    storage.write_text(storage.join(mine, "README.md"), "my notes")
    with pytest.raises(FinetunerError, match=r"holds other files \(README.md\) and no export"):
        claim.claim_output(mine, "a")
    assert storage.list_files(mine) == [storage.join(mine, "README.md")]
    # A finished export is taken for good.
    done = storage.join(base, "done")
    storage.write_text(storage.join(done, MANIFEST), "{}")
    with pytest.raises(FinetunerError, match="already holds an exported model"):
        claim.claim_output(done, "a", force=True)
    # What a failed run left (checkpoints, synthesized rows) is resumed from.
    left = storage.join(base, "left")
    storage.write_text(storage.join(left, "checkpoints", "step-1", "x.pt"), "x")
    storage.write_text(storage.join(left, "synthesized", "margins.parquet"), "x")
    claim.claim_output(left, "a")


def test_the_pipeline_steps_claim_under_the_kfp_run_id(base):
    out = storage.join(base, "models", "{run_id}")
    shared = storage.join(base, "models", "shared")
    assert steps.claim_output(out, "kfp-1", "", False) == "kfp-1"
    assert claim.holder(storage.join(base, "models", "kfp-1"))["run_id"] == "kfp-1"
    # `finetuner run` claims under its own id and hands it to the steps as claim_id.
    assert steps.claim_output(shared, "kfp-2", "local-x", False) == "local-x"
    with pytest.raises(FinetunerError, match="being written by run local-x"):
        steps.claim_output(shared, "kfp-3", "", False)
    steps.check_claim(shared, "kfp-2", "local-x")
    with pytest.raises(FinetunerError, match="no longer holds"):
        steps.check_claim(shared, "kfp-3", "kfp-3")
    assert steps.claim_output(shared, "kfp-3", "", True) == "kfp-3"


def test_export_publishes_only_while_it_holds_the_claim(tiny_model, tmp_path):
    from finetuner.export.publish import export

    metrics = {"k": 10, "before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.6}}
    out = str(tmp_path / "out")
    claim.claim_output(out, "other")
    with pytest.raises(FinetunerError, match="run mine no longer holds its claim"):
        export(tiny_model(), metrics, out, run_id="mine")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [CLAIM_FILE]

    claim.claim_output(out, "mine", force=True)
    export(tiny_model(), metrics, out, run_id="mine")
    # The whole export, and the claim gone: the manifest now keeps the folder for good.
    assert (tmp_path / "out" / MANIFEST).exists() and claim.holder(out) is None
    assert_whole(out)


def assert_whole(out: str) -> None:
    """Every file of the export is the one its manifest lists, and nothing else is there."""
    manifest = json.loads(storage.read_text(storage.join(out, MANIFEST)))
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    found = {claim._relative(uri, out) for uri in storage.list_files(out)}
    assert found == {*listed, MANIFEST}
    for path, sha in listed.items():
        assert hashlib.sha256(storage.read_bytes(storage.join(out, path))).hexdigest() == sha


def test_promotion_claims_latest(tmp_path):
    from finetuner.export.promote import promote

    values = {"k": 10, "kind": "pairs", "before": {"ndcg@10": 0.4}, "after": {"ndcg@10": 0.6}}
    run = tmp_path / "models" / "run-1"
    storage.write_text(run / "m.bin", "one")
    storage.write_text(run / "metrics.json", json.dumps(values))
    files = [{"path": "m.bin"}, {"path": "metrics.json"}]
    storage.write_text(run / MANIFEST, json.dumps({"files": files}))
    latest = str(tmp_path / "models" / "latest")
    claim.take(latest, "a-crashed-promotion")
    with pytest.raises(FinetunerError, match="being written by run a-crashed-promotion"):
        promote(str(run), values, enabled=True, run_id="run-1")
    assert not (tmp_path / "models" / "latest" / "m.bin").exists()
    result = promote(str(run), values, enabled=True, run_id="run-1", force_claim=True)
    assert result["promoted"] and (tmp_path / "models" / "latest" / "m.bin").read_text() == "one"
    assert claim.holder(latest) is None


# ---------------------------------------------------------------- two real runs


def finetuner_run(output: str, train: str, weights: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "finetuner", "run", "--train-data", train,
            "--weights", weights, "--val-split", "0.25", "--epochs", "1", "--batch-size", "8",
            "--max-length", "24", "--output", output, *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_with_one_output(where, request, tmp_path, pairs_csv, tiny_bert):
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3')}"
    out = storage.join(base, "models", "shared")
    weights = str(tiny_bert(tmp_path / "tiny"))
    train = str(pairs_csv(40))
    first = finetuner_run(out, train, weights)
    try:
        # The second run starts once the first holds the output.
        while claim.holder(out) is None and first.poll() is None:
            time.sleep(0.2)
        holder = claim.holder(out)
        assert holder is not None, first.communicate()
        second = finetuner_run(out, train, weights)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert err.startswith("error: ") and "Traceback" not in err
        assert f"being written by run {holder['run_id']}" in err and "--force-claim" in err
        stdout, stderr = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert claim.holder(out) is None
    assert_whole(out)
    # The published output is now refused to every later run.
    third = finetuner_run(out, train, weights, "--force-claim")
    _, err = third.communicate(timeout=300)
    assert third.returncode == 2 and "already holds an exported model" in err
