"""The promotion gate of recurring retrains, against the S3 server and a local folder."""

import json

import pytest

from finetuner.errors import FinetunerError
from finetuner.export.promote import (
    check_metric_name,
    decide,
    latest_uri,
    monitored_metric,
    promote,
    run_output,
)
from finetuner.export.publish import MANIFEST
from finetuner.io import storage


def metrics(ndcg: float, k: int = 10) -> dict:
    return {
        "k": k,
        "kind": "pairs",
        "rows": 20,
        "before": {f"ndcg@{k}": 0.4, f"mrr@{k}": 0.3},
        "after": {f"ndcg@{k}": ndcg, f"mrr@{k}": 0.5},
    }


def fake_export(uri: str, values: dict, files: dict[str, str]) -> str:
    """An export in export.py's layout: its files, metrics.json, then the manifest."""
    files = {**files, "metrics.json": json.dumps(values)}
    for path, text in files.items():
        storage.write_text(storage.join(uri, path), text)
    listed = [{"path": p, "bytes": len(t)} for p, t in sorted(files.items())]
    manifest = {"format": 1, "metrics": values, "files": listed}
    storage.write_text(storage.join(uri, MANIFEST), json.dumps(manifest))
    return uri


def test_first_run_promotes_then_only_improvements_do(s3):
    base = f"s3://{s3}/models/minilm"
    latest = f"{base}/latest"
    first = fake_export(f"{base}/run-1", metrics(0.60), {"model/a.bin": "one", "old.txt": "x"})
    result = promote(first, metrics(0.60), enabled=True)
    assert result["promoted"] and result["reason"] == "nothing was promoted yet"
    assert result["metric"] == "ndcg@10" and result["latest"] == latest
    assert storage.read_text(f"{latest}/model/a.bin") == "one"
    assert json.loads(storage.read_text(f"{latest}/metrics.json"))["after"]["ndcg@10"] == 0.60

    # Worse: latest/ keeps the first model, and the decision says why.
    worse = fake_export(f"{base}/run-2", metrics(0.55), {"model/a.bin": "two"})
    result = promote(worse, metrics(0.55), enabled=True)
    assert not result["promoted"] and result["current"] == 0.60 and result["new"] == 0.55
    assert "-0.0500" in result["reason"]
    assert storage.read_text(f"{latest}/model/a.bin") == "one"

    # Better, but by less than min_delta: kept.
    small = fake_export(f"{base}/run-3", metrics(0.61), {"model/a.bin": "three"})
    assert not promote(small, metrics(0.61), enabled=True, min_delta=0.05)["promoted"]
    assert storage.read_text(f"{latest}/model/a.bin") == "one"

    # Better by min_delta: replaces latest/ whole, the old model's extra files included.
    better = fake_export(f"{base}/run-4", metrics(0.70), {"model/a.bin": "four"})
    result = promote(better, metrics(0.70), enabled=True, min_delta=0.05)
    assert result["promoted"] and result["current"] == 0.60
    assert storage.read_text(f"{latest}/model/a.bin") == "four"
    published = {u.removeprefix(latest + "/") for u in storage.list_files(latest)}
    assert published == {"model/a.bin", "metrics.json", MANIFEST}
    assert storage.read_text(f"{latest}/{MANIFEST}") == storage.read_text(f"{better}/{MANIFEST}")


def test_a_tie_keeps_the_promoted_model(tmp_path):
    base = tmp_path / "models"
    fake_export(str(base / "a"), metrics(0.6), {"m.bin": "a"})
    promote(str(base / "a"), metrics(0.6), enabled=True)
    fake_export(str(base / "b"), metrics(0.6), {"m.bin": "b"})
    result = promote(str(base / "b"), metrics(0.6), enabled=True)
    assert not result["promoted"] and (base / "latest" / "m.bin").read_text() == "a"


def test_an_incomplete_latest_counts_as_nothing_promoted(tmp_path):
    # A copy that died before its manifest: no comparison against half a model.
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "metrics.json").write_text(json.dumps(metrics(0.99)))
    fake_export(str(tmp_path / "run"), metrics(0.5), {"m.bin": "new"})
    result = promote(str(tmp_path / "run"), metrics(0.5), enabled=True)
    assert result["promoted"] and result["current"] is None


def test_off_promotes_nothing(tmp_path):
    fake_export(str(tmp_path / "run"), metrics(0.5), {"m.bin": "new"})
    # Off, a metric that this data lacks cannot fail the run.
    result = promote(str(tmp_path / "run"), metrics(0.5), enabled=False, metric="spearman")
    assert not result["promoted"] and "off" in result["reason"] and result["new"] is None
    assert not (tmp_path / "latest").exists()


def test_monitored_metric_names():
    assert monitored_metric("auto", metrics(0.5, k=5)) == "ndcg@5"
    assert monitored_metric("mrr", metrics(0.5)) == "mrr@10"
    assert monitored_metric("mrr@10", metrics(0.5)) == "mrr@10"
    scored = {"k": 10, "kind": "scored", "after": {"spearman": 0.8, "pearson": 0.7}}
    assert monitored_metric("auto", scored) == "spearman"
    with pytest.raises(FinetunerError, match=r"promotion_metric.*'recall@10'.*mrr@10, ndcg@10"):
        monitored_metric("recall", metrics(0.5))
    # KFP hands a dict's numbers back as floats.
    assert monitored_metric("auto", {**metrics(0.5), "k": 10.0}) == "ndcg@10"
    check_metric_name("mrr@5")
    with pytest.raises(FinetunerError, match="unknown metric 'ndgc'; valid: auto, precision"):
        check_metric_name("ndgc")


def test_decide_and_bad_min_delta(tmp_path):
    assert decide(0.7, 0.6, 0.1)[0] and not decide(0.69, 0.6, 0.1)[0]
    with pytest.raises(FinetunerError, match="promotion_min_delta: must be >= 0, got -0.1"):
        promote(str(tmp_path / "run"), metrics(0.5), enabled=True, min_delta=-0.1)


def test_run_folders_and_latest_location():
    assert run_output("s3://bkt/models/{run_id}", "abc") == "s3://bkt/models/abc"
    assert run_output("s3://bkt/models/x", "abc") == "s3://bkt/models/x"
    with pytest.raises(FinetunerError, match="no id"):
        run_output("s3://bkt/{run_id}", "")
    assert latest_uri("s3://bkt/models/minilm/abc/") == "s3://bkt/models/minilm/latest"
    with pytest.raises(FinetunerError, match="parent folder"):
        latest_uri("s3://bkt/")
