"""The KFP pipeline: compiled YAML kept current and valid, and a real kfp.local run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from finetuner.catalogue import CATALOGUE, PIPELINE_TASKS
from finetuner.evaluation.metrics import METRICS
from finetuner.export import inference
from finetuner.io import storage
from finetuner.launch.compile import compile_pipelines

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def test_compiled_yaml_is_current(tmp_path):
    for fresh in compile_pipelines(tmp_path):
        committed = PIPELINES / fresh.name
        assert committed.read_text() == fresh.read_text(), f"stale {fresh.name}: `make compile`"


def test_compiled_yaml_parses_strictly_with_dropdowns_and_descriptions():
    pipeline, platform = yaml.safe_load_all((PIPELINES / "finetune.yaml").read_text())
    spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    # Strict: an unknown field in the Kubernetes settings fails here, not on the cluster.
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    parameters = spec.root.input_definitions.parameters
    literals = {name: [v.string_value for v in parameters[name].literals] for name in parameters}
    trainable = [e.name for e in CATALOGUE if e.task in PIPELINE_TASKS]
    assert literals["model"] == trainable
    assert {"minilm-l6-en", "efficientnet-lite0", "clip-base-en", "mlp"} <= set(trainable)
    assert "crossencoder-base-en" not in trainable  # data synthesis only
    assert literals["pooler"] == ["auto", "mean", "cls", "max", "GeM"]
    assert literals["loss"][:4] == [
        "auto", "MultipleNegativesRankingLoss", "TripletMarginLoss", "CLIPLoss",
    ]  # fmt: skip
    assert {"CoSENTLoss", "CosineSimilarityLoss"} <= set(literals["loss"])
    assert literals["sampler"] == ["auto", "random", "class", "no_duplicates"]
    for name in ("model", "train_data", "eval_data", "val_split", "loss", "epochs",
                 "batch_size", "learning_rate", "pooler", "pooler_p", "pooler_eps",
                 "weights", "data_options", "sampler", "num_items_per_class", "output_uri",
                 "seed"):  # fmt: skip
        assert parameters[name].description, name
    tasks = spec.root.dag.tasks
    assert set(tasks) == {
        "catalogue-lookup", "claim-output", "preprocess", "mine-negatives", "train",
        "evaluate", "export", "promote", "condition-1",
    }  # fmt: skip
    # The register step runs only when a registered model is named, after promote.
    (register,) = spec.components["comp-condition-1"].dag.tasks.values()
    assert register.task_info.name == "register"
    assert "promote" in tasks["condition-1"].dependent_tasks
    assert "registered_model_name" in tasks["condition-1"].trigger_policy.condition
    assert not tasks["train"].caching_options.enable_cache
    # The output is claimed, by a step that always runs, before the data is read; every step
    # that writes under it gets the claim's id to check.
    assert not tasks["claim-output"].caching_options.enable_cache
    assert "claim-output" in tasks["preprocess"].dependent_tasks
    for step in ("train", "export", "promote"):
        claim = tasks[step].inputs.parameters["claim"].task_output_parameter
        assert claim.producer_task == "claim-output", step


def test_local_pipeline_run_end_to_end_on_s3(s3, s3_server, pairs_csv, tmp_path):
    train_uri = f"s3://{s3}/data/pairs.csv"
    storage.upload_file(pairs_csv(80), train_uri)
    output = f"s3://{s3}/runs/e2e/"
    summary_path = tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable, "-m", "finetuner", "run", "--model", "minilm-l6-en",
            "--train-data", train_uri, "--val-split", "0.25", "--epochs", "1",
            "--batch-size", "16", "--max-length", "32", "--output", output,
            "--summary-json", str(summary_path), "--promote",
            # The int8 file is kept whatever its drop on this tiny eval set (tests/test_int8.py
            # tests the gate).
            "--int8-max-drop", "1",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[train] step" in result.stdout + result.stderr  # progress from the train step
    # The steps read the credentials from their environment and never print them.
    assert s3_server.secret_key not in result.stdout + result.stderr
    # The first promotion: latest/ beside the export now holds the same model.
    assert "promoted to " + f"s3://{s3}/runs/latest" in result.stdout + result.stderr
    latest = json.loads(storage.read_text(f"s3://{s3}/runs/latest/manifest.json"))
    assert latest == json.loads(storage.read_text(output + "manifest.json"))

    summary = json.loads(summary_path.read_text())
    for stage in ("before", "after"):
        metrics = summary["metrics"][stage]
        assert set(metrics) == {f"{name}@10" for name in METRICS}
        assert all(0 <= v <= 1 for v in metrics.values())
    assert summary["metrics"]["before"]["ndcg@10"] > 0.3  # real pretrained weights
    assert summary["artifacts"]["onnx"] == f"s3://{s3}/runs/e2e/onnx/model.onnx"
    assert summary["artifacts"]["model"] == f"s3://{s3}/runs/e2e/model/"

    texts = ["aardvark", "a four-legged animal", "the smallest prime number"]
    torch_model = inference.get_model(output)
    onnx_model = inference.get_model(output, is_onnx=True)
    np.testing.assert_allclose(onnx_model.encode(texts), torch_model.encode(texts), atol=1e-4)
    manifest = json.loads(storage.read_text(output + "manifest.json"))
    assert manifest["metrics"]["after"] == summary["metrics"]["after"]
    # The export step gated the int8 file on the eval dataset, and published it.
    assert summary["artifacts"]["onnx_int8"] == f"s3://{s3}/runs/e2e/onnx/model.int8.onnx"
    assert manifest["int8"]["written"] and manifest["int8"]["eval_rows"] == 20
    int8_model = inference.get_model(output, is_onnx=True, int8=True)
    assert int8_model.encode(texts).shape == (3, 384)


def test_fit_runs_the_pipeline_with_eval_data_gem_and_triplet_loss(pairs_csv, tmp_path):
    import finetuner
    from finetuner.training.callbacks import BestModelCheckpoint, EarlyStopping

    train_csv, eval_csv = pairs_csv(60, "train.csv"), tmp_path / "eval.csv"
    eval_csv.write_text(
        "query,document\n"
        "hotelier,an owner or manager of hotels\n"
        "nonmember,a person who is not a member\n"
        "microdot,photograph reduced to the size of a dot\n"
    )
    output = tmp_path / "model"
    run = finetuner.fit(
        model="minilm-l6-en",
        train_data=str(train_csv),
        eval_data=str(eval_csv),
        output=str(output),
        loss="TripletMarginLoss",
        pooler="GeM",
        pooler_p=2.0,
        batch_size=16,
        max_length=32,
        eval_k=3,
        epochs=4,
        callbacks=[
            BestModelCheckpoint(monitor="ndcg@3", mode="max"),
            # No epoch lowers the loss by 10: training stops after the second.
            EarlyStopping(monitor="train_loss", patience=1, min_delta=10.0),
        ],
    )
    assert run.status == "FINISHED" and run.artifact_uri == str(output)
    assert set(run.metrics()["after"]) == {f"{name}@3" for name in METRICS}
    history = json.loads((output / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    best = max(history, key=lambda h: h["ndcg@3"])  # the first of equals, as the monitor
    # The exported model is the best epoch's: the evaluate step measures what it measured.
    assert run.metrics()["after"] == {k: v for k, v in best.items() if "@" in k}
    model = finetuner.get_model(str(output))
    assert (model.spec.pooler, model.spec.pooler_p) == ("GeM", 2.0)
    emb = finetuner.encode(model, ["hotelier", "an owner or manager of hotels"])
    assert emb.shape == (2, 384)

    # A second run continues from the export: it starts where the first one ended.
    common = dict(model="minilm-l6-en", train_data=str(train_csv), eval_data=str(eval_csv),
                  pooler="GeM", pooler_p=2.0, batch_size=16, max_length=32, eval_k=3)  # fmt: skip
    second = finetuner.fit(**common, output=str(tmp_path / "model2"), model_artifact=str(output))
    assert second.metrics()["before"] == run.metrics()["after"]
    with pytest.raises(finetuner.FinetunerError, match="was trained with pooler='GeM'"):
        finetuner.fit(**{**common, "pooler": "mean"}, model_artifact=str(output))


def test_image_to_image_through_finetuner_run(fashion_pairs, tmp_path):
    csv = fashion_pairs(16)
    output, summary_path = tmp_path / "model", tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable, "-m", "finetuner", "run", "--model", "efficientnet-lite0",
            "--train-data", str(csv), "--val-split", "0.25", "--epochs", "1",
            "--batch-size", "6", "--learning-rate", "1e-4", "--pooler", "GeM",
            "--model-options",
            '{"output_dim": 32, "freeze": true, "preprocess_options": {"image_size": 96}}',
            "--output", str(output), "--summary-json", str(summary_path),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert set(summary["metrics"]["after"]) == {f"{name}@10" for name in METRICS}
    model = inference.get_model(str(output))
    assert model.spec.name == "efficientnet-lite0" and model.spec.pooler == "GeM"
    assert model.spec.options == {"image_size": 96, "output_dim": 32, "freeze": True}
    images = [str(p) for p in sorted((csv.parent / "images").glob("*.png"))[:3]]
    assert model.encode(images).shape == (3, 32)
    onnx_model = inference.get_model(str(output), is_onnx=True)
    np.testing.assert_allclose(onnx_model.encode(images), model.encode(images), atol=1e-4)
