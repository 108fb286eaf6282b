"""The train step across nodes, for real: a TrainJob of 2 nodes x 1 process on the CPU (gloo),
through the Kubeflow SDK's container backend (podman's Docker API here), one container of the
GPU step image per node, against an S3 server on this machine.

`make test-trainjob` runs these (about 6 minutes here); they need the images (`make images`)
and are left out by `pytest -m "not containers"`.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from finetuner.catalogue import lookup
from finetuner.data import dataset
from finetuner.errors import FinetunerError
from finetuner.io import s3server, storage
from finetuner.launch import containers
from finetuner.orchestration import steps, trainjob
from finetuner.training import checkpoints

pytestmark = pytest.mark.containers
os.environ.setdefault(
    "CONTAINERS_CONF", str(Path(__file__).resolve().parent.parent / "images" / "containers.conf")
)
REQUIRED = bool(os.environ.get("FINETUNER_GPU_IMAGE"))
GPU_IMAGE = os.environ.get("FINETUNER_GPU_IMAGE", "ghcr.io/finetuner-kfp/finetuner-gpu:0.1.0")
# One step of plain SGD with no clipping and no warm-up, and a loss that is a mean over the
# rows: the two nodes' averaged gradient is the concatenated batch's (as tests/test_distributed).
EXACT = dict(
    epochs=1, learning_rate=0.1, optimizer="SGD", num_warmup_steps=0, max_grad_norm=1e6,
    length_grouping=1, sampler="random", log_every=1, seed=5, loss="CosineSimilarityLoss",
    evaluate_every_epoch=False,
)  # fmt: skip
WORDS = "the a cat sat on mat dog ran far away under blue sky".split()


@pytest.fixture(scope="module")
def engine():
    try:
        with containers.docker_api() as endpoint:
            containers.check_images(GPU_IMAGE)
            yield endpoint
    except FinetunerError as exc:
        if REQUIRED:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def reachable_s3(tmp_path_factory):
    """An S3 server that the nodes' containers reach too: it listens on every address of
    this machine, and they call it host.containers.internal (trainjob.node_environment)."""
    server = s3server.start(tmp_path_factory.mktemp("s3"), bind="0.0.0.0")
    yield server
    server.stop()


@pytest.fixture
def bucket(reachable_s3, monkeypatch, tmp_path):
    for name, value in reachable_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(trainjob.BACKEND_ENV, "container")
    name = f"test-{uuid.uuid4().hex[:16]}"
    reachable_s3.create_bucket(name)
    return name


def _bert_on_s3(tmp_path: Path, uri: str) -> dict:
    """A tiny BERT without dropout (a batch's gradient is the same wherever it is
    computed), on S3 where every node reads it; its ModelSpec."""
    from tests.test_distributed import _bert

    storage.upload_dir(_bert(tmp_path / "bert"), uri)
    return lookup("minilm-l6-en", max_length=16, weights=uri).model_dump()


def _scored(n: int, folder: Path) -> str:
    rows = [
        (" ".join(WORDS[: 2 + i % 11]), " ".join(WORDS[i % 5 :]), (i % 7) / 7) for i in range(n)
    ]
    dataset.write(rows, folder, "scored")
    return str(folder)


def _weights(model_dir) -> dict:
    from finetuner import models

    state = models.load(str(model_dir)).embedder.state_dict()
    return {k: v.float().numpy().copy() for k, v in state.items()}


def _nodes(n: int = 2) -> trainjob.Nodes:
    return trainjob.Nodes(num_nodes=n, gpus=1, cpu="1", memory="4Gi", image=GPU_IMAGE)


def test_two_nodes_train_as_one_node_on_the_concatenated_batch(engine, bucket, tmp_path, capfd):
    spec = _bert_on_s3(tmp_path, f"s3://{bucket}/bert")
    data = _scored(12, tmp_path / "train")
    output = f"s3://{bucket}/run"
    run = trainjob.driver(_nodes(2), f"equality-{uuid.uuid4().hex[:8]}")
    two = run(spec, data, str(tmp_path / "two"), {**EXACT, "batch_size": 6}, output)
    out = capfd.readouterr().out
    assert "[finetuner-" in out  # the nodes' log streamed into the step's
    # One 1-node run on the concatenated batch, here.
    one = steps.train(spec, data, str(tmp_path / "one"), {**EXACT, "batch_size": 12})
    assert two["steps"] == one["steps"] == 1
    # The first step's loss: the global batch's, as the one node computes it.
    assert two["final_loss"] == pytest.approx(one["final_loss"], abs=1e-5)
    # Its gradient, from one step of SGD: (start - end) / learning rate.
    start = _weights_of_spec(spec)
    ended_two, ended_one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert ended_two.keys() == ended_one.keys() == start.keys()
    moved = 0
    for name, value in start.items():
        grad_two = (value - ended_two[name]) / EXACT["learning_rate"]
        grad_one = (value - ended_one[name]) / EXACT["learning_rate"]
        np.testing.assert_allclose(grad_two, grad_one, atol=1e-5, err_msg=name)
        moved += bool(np.abs(grad_one).max() > 1e-4)
    assert moved > 10  # the encoder learnt: the comparison is not of zeros
    # Saved once, by process 0; the job's checkpoints and copies are gone.
    assert storage.list_files(storage.join(output, "trainjob")) == []
    assert checkpoints.complete_steps(storage.join(output, "checkpoints")) == []


def _weights_of_spec(spec: dict) -> dict:
    from finetuner import models
    from finetuner.catalogue import ModelSpec

    state = models.pretrained(ModelSpec(**spec)).embedder.state_dict()
    return {k: v.float().numpy().copy() for k, v in state.items()}


def _kill_a_node_after_a_checkpoint(folder: str, job: str, killed: list) -> None:
    import docker

    client = docker.from_env(timeout=60)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if checkpoints.complete_steps(folder):
            container = client.containers.get(f"{job}-node-1")
            container.kill()
            killed.append(container.name)
            return
        time.sleep(0.5)


def test_a_killed_node_fails_the_job_and_the_rerun_resumes(engine, bucket, tmp_path, capfd):
    spec = _bert_on_s3(tmp_path, f"s3://{bucket}/bert")
    data = _scored(96, tmp_path / "train")
    output = f"s3://{bucket}/run"
    options = {**EXACT, "epochs": 3, "batch_size": 4, "checkpoint_every": 2}
    run_id = f"killed-{uuid.uuid4().hex[:8]}"
    job = trainjob.job_name(run_id)
    killed: list = []
    killer = threading.Thread(
        target=_kill_a_node_after_a_checkpoint,
        args=(storage.join(output, "checkpoints"), job, killed),
    )
    killer.start()
    run = trainjob.driver(_nodes(2), run_id)
    with pytest.raises(FinetunerError) as failure:
        run(spec, data, str(tmp_path / "model"), options, output)
    killer.join()
    assert killed == [f"{job}-node-1"]
    message = str(failure.value)
    assert f"TrainJob {job} failed" in message and "node-1" in message, message
    assert "resumes from its last checkpoint" in message
    saved = checkpoints.complete_steps(storage.join(output, "checkpoints"))
    assert saved, "no checkpoint before the kill"
    capfd.readouterr()

    # The retried step (same run): the failed job is replaced, and the new one resumes.
    result = run(spec, data, str(tmp_path / "model"), options, output)
    out = capfd.readouterr()
    log = out.out + out.err
    assert f"TrainJob {job} is Failed: replacing it" in log
    resumed = [line for line in log.splitlines() if "resuming from the checkpoint at step" in line]
    assert resumed, log[-3000:]
    step = int(resumed[0].split("at step ")[1].split()[0])
    assert step >= saved[-1]
    total = 3 * (96 // 8)
    assert result["steps"] == total
    assert _weights(tmp_path / "model")
    assert torch.isfinite(torch.tensor(result["final_loss"]))
