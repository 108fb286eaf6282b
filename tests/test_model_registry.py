"""The register step: an export recorded in Kubeflow Model Registry by the real
`model-registry` client, against a loopback server that follows the registry's REST schema
(tests/model_registry_server.py)."""

import hashlib
import json

import pytest
from model_registry_server import Registry

import finetuner
from finetuner.errors import FinetunerError
from finetuner.export import model_registry
from finetuner.export.model_registry import RegistryFault, check_registry, enabled, register
from finetuner.io import storage

MANIFEST = {
    "model": "minilm-l6-en",
    "onnx": "onnx/model.onnx",
    "files": [{"path": "model/model.safetensors"}, {"path": "onnx/model.onnx"}],
}
METRICS = {
    "k": 10,
    "before": {"ndcg@10": 0.5, "mrr@10": 0.4},
    "after": {"ndcg@10": 0.6, "mrr@10": 0.5},
}
PROMOTION = {"promoted": True, "reason": "nothing was promoted yet", "latest": "s3://b/m/latest"}
SOURCES = {"train_data": {"uri": "s3://b/train.csv", "sha256": "ab" * 32}}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(model_registry, "BACKOFF_S", 0.01)
    monkeypatch.delenv(model_registry.TOKEN_ENV, raising=False)
    server = Registry()
    server.url = server.start()
    yield server
    server.stop()


def record(registry, version="run-1", export="s3://b/m/run-1/", promotion=PROMOTION):
    return register(
        registry.url, "search", version, export, MANIFEST, METRICS, promotion, SOURCES, version
    )


def props(version: dict) -> dict:
    """A version's custom properties as plain values."""
    return {k: next(x for n, x in v.items() if n != "metadataType")
            for k, v in version["customProperties"].items()}  # fmt: skip


def test_a_version_records_the_export_its_lineage_and_the_decision(registry):
    result = record(registry)
    assert result["storage_uri"] == "model-registry://search/run-1"
    version = registry.version("search", "run-1")
    assert version["author"] == "finetuner"
    assert (
        version["description"] == "minilm-l6-en fine-tuned by run run-1: ndcg@10 0.5000 -> 0.6000"
    )
    assert props(version) == {
        "finetuner.model": "minilm-l6-en",
        "finetuner.export_uri": "s3://b/m/run-1/",
        "finetuner.formats": "onnx,safetensors",
        "finetuner.kfp_run_id": "run-1",
        "finetuner.metric.before.ndcg@10": 0.5,
        "finetuner.metric.before.mrr@10": 0.4,
        "finetuner.metric.after.ndcg@10": 0.6,
        "finetuner.metric.after.mrr@10": 0.5,
        "finetuner.data.train_data.uri": "s3://b/train.csv",
        "finetuner.data.train_data.sha256": "ab" * 32,
        "finetuner.promoted": True,
        "finetuner.promotion_reason": "nothing was promoted yet",
        "finetuner.promoted_to": "s3://b/m/latest",
    }
    # One model artifact, the export folder: what model-registry://search/run-1 resolves to.
    (artifact,) = registry.artifacts_of(version["id"])
    assert (artifact["uri"], artifact["modelFormatName"], artifact["artifactType"]) == (
        "s3://b/m/run-1/", "onnx", "model-artifact",
    )  # fmt: skip
    # What the client sent, in order: a ping, then look before create at each level.
    sent = [
        (r["method"], r["path"].removeprefix("/api/model_registry/v1")) for r in registry.requests
    ]
    assert sent[0] == ("GET", "/registered_models")
    creates = [path for method, path in sent if method == "POST"]
    artifacts = f"/model_versions/{version['id']}/artifacts"
    assert creates == ["/registered_models", "/model_versions", artifacts]
    assert all(r["authorization"] is None for r in registry.requests)  # no token was set


def test_a_second_version_joins_the_registered_model(registry):
    record(registry, "run-1", "s3://b/m/run-1/")
    record(registry, "run-2", "s3://b/m/run-2/", promotion=None)
    assert len(registry.registered_models) == 1 and len(registry.versions) == 2
    assert "finetuner.promoted" not in props(registry.version("search", "run-2"))


def test_a_retried_step_completes_its_version_and_never_registers_twice(registry):
    # The artifact's creation fails with a 503 once: the next attempt finds the version it
    # created and adds only the artifact.
    registry.fail(503, "POST", "/artifacts")
    record(registry)
    version = registry.version("search", "run-1")
    assert len(registry.versions) == 1 and len(registry.artifacts_of(version["id"])) == 1
    # The step runs again whole (a KFP retry): nothing new is created.
    posts = sum(r["method"] == "POST" for r in registry.requests)
    record(registry)
    assert sum(r["method"] == "POST" for r in registry.requests) == posts
    # The same version name from another export is refused.
    with pytest.raises(FinetunerError, match="already has a version 'run-1'"):
        record(registry, export="s3://b/m/other/")


def test_server_faults_are_retried_then_reported(registry, capsys):
    registry.fail(503, times=2)
    record(registry)
    assert capsys.readouterr().out.count("retrying") == 2
    registry.fail(500, times=model_registry.ATTEMPTS)
    with pytest.raises(RegistryFault, match="the server answered 500") as failed:
        record(registry, "run-2", "s3://b/m/run-2/")
    assert failed.value.exit_status == 1


def test_the_token_is_sent_and_a_refused_one_is_named(registry, monkeypatch):
    registry.token = "s3cret-token"
    with pytest.raises(FinetunerError, match="refused the credentials.*MODEL_REGISTRY_TOKEN") as e:
        record(registry)
    assert e.value.exit_status == 2 and len(registry.requests) == 1  # a 401 is not retried
    monkeypatch.setenv(model_registry.TOKEN_ENV, "s3cret-token")
    record(registry)
    assert registry.requests[-1]["authorization"] == "Bearer s3cret-token"


def test_settings_are_checked_before_training(registry):
    assert not enabled("", "")
    with pytest.raises(FinetunerError, match="parameter registered_model_name"):
        enabled(registry.url, "")
    with pytest.raises(FinetunerError, match="parameter model_registry_url"):
        enabled("", "search")
    with pytest.raises(FinetunerError, match="not an http:// or https:// address"):
        enabled("model-registry:8080", "search")
    check_registry(registry.url, "search")  # answers
    registry.stop()
    with pytest.raises(RegistryFault, match="cannot reach the server"):
        check_registry(registry.url, "search")


def test_sha256_of_a_file_and_of_a_folder(s3, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.csv").write_text("q,d\n")
    (tmp_path / "d" / "sub" / "b.csv").write_text("x,y\n")
    assert storage.sha256(tmp_path / "d" / "a.csv") == hashlib.sha256(b"q,d\n").hexdigest()
    storage.upload_dir(tmp_path / "d", f"s3://{s3}/d")
    assert storage.sha256(f"s3://{s3}/d/a.csv") == hashlib.sha256(b"q,d\n").hexdigest()
    folder = storage.sha256(tmp_path / "d")
    assert storage.sha256(f"s3://{s3}/d/") == folder  # the same files, wherever they are
    (tmp_path / "d" / "sub" / "b.csv").write_text("x,z\n")
    assert storage.sha256(tmp_path / "d") != folder


@pytest.mark.e2e
def test_the_pipeline_registers_its_export(registry, pairs_csv, tmp_path):
    train = pairs_csv(40)
    output = tmp_path / "models" / "run"
    run = finetuner.fit(
        model="minilm-l6-en",
        train_data=str(train),
        output=str(output),
        batch_size=16,
        epochs=1,
        promote=True,
        model_registry_url=registry.url,
        registered_model_name="wordnet-search",
    )
    ((version_id, version),) = registry.versions.items()
    recorded = props(version)
    assert recorded["finetuner.export_uri"].rstrip("/") == str(output)
    assert (
        recorded["finetuner.data.train_data.sha256"]
        == hashlib.sha256(train.read_bytes()).hexdigest()
    )
    for when in ("before", "after"):
        for name, value in run.metrics()[when].items():
            assert recorded[f"finetuner.metric.{when}.{name}"] == pytest.approx(value)
    assert recorded["finetuner.promoted"] is True
    assert recorded["finetuner.kfp_run_id"] == version["name"]
    (artifact,) = registry.artifacts_of(version_id)
    assert artifact["uri"].rstrip("/") == str(output) and artifact["modelFormatName"] == "onnx"
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["model"] == recorded["finetuner.model"] == "minilm-l6-en"


def test_a_run_refuses_half_the_registry_settings_before_training(pairs_csv, tmp_path):
    with pytest.raises(FinetunerError, match="parameter model_registry_url"):
        finetuner.fit(model="minilm-l6-en", train_data=str(pairs_csv(20)),
                      output=str(tmp_path / "m"), registered_model_name="x")  # fmt: skip
    assert not (tmp_path / "m").exists()
