"""The step images, and both compiled pipelines run with every step in its image, as a
cluster runs them: the YAML of `finetuner compile --image --gpu-image`, kfp.local's
DockerRunner (podman's Docker API here), uid 1000, a read-only root filesystem with a tmpfs
/tmp, no capabilities, no-new-privileges, and the S3 settings only in the environment.

`make test` builds the images first (`make images`) and names them in FINETUNER_IMAGE and
FINETUNER_GPU_IMAGE; then a missing engine or image fails these tests instead of skipping
them. `pytest -m "not containers"` leaves them out.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from finetuner.cli import main
from finetuner.errors import FinetunerError
from finetuner.io import claim, storage
from finetuner.launch import containers

pytestmark = pytest.mark.containers
# runc and ulimits that this kind of VM allows, for a podman that the tests start (as make does).
os.environ.setdefault(
    "CONTAINERS_CONF", str(Path(__file__).resolve().parent.parent / "images" / "containers.conf")
)

REQUIRED = bool(os.environ.get("FINETUNER_IMAGE"))
IMAGE = os.environ.get("FINETUNER_IMAGE", "ghcr.io/finetuner-kfp/finetuner:0.1.0")
GPU_IMAGE = os.environ.get("FINETUNER_GPU_IMAGE", "ghcr.io/finetuner-kfp/finetuner-gpu:0.1.0")
# A run long enough to be killed after its first checkpoint and before its end.
TRAIN_ARGS = [
    "--model", "minilm-l6-en", "--val-split", "0.25", "--epochs", "2", "--batch-size", "8",
    "--max-length", "32", "--eval-k", "3", "--checkpoint-every", "4", "--seed", "7",
]  # fmt: skip


@pytest.fixture(scope="module")
def engine():
    """The Docker API with both images present: skipped where there is none, unless
    `make test` built the images for these tests."""
    try:
        with containers.docker_api() as endpoint:
            containers.check_images(IMAGE, GPU_IMAGE)
            yield endpoint
    except FinetunerError as exc:
        if REQUIRED:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def client():
    import docker

    return docker.from_env(timeout=600)


def run_in(image: str, command: list[str], **overrides) -> tuple[int, str]:
    """Run a command in a hardened container of `image`; its status and output (stdout and
    stderr together, interleaved as they came)."""
    status, logs = run_logs(image, command, **overrides)
    return status, logs()


def run_logs(image: str, command: list[str], **overrides):
    """Run a command in a hardened container of `image`; its status, and its logs as a
    function of docker-py's `logs` keywords (stdout=, stderr=)."""
    container = client().containers.create(
        image, command, **{**containers.hardening(), **overrides}
    )
    try:  # removed even when it cannot start
        container.start()
        status = container.wait(timeout=300)["StatusCode"]
        # podman may have a quick container's log only a moment after it exits; every
        # command here prints something.
        for _ in range(100):
            if container.logs().strip():
                break
            time.sleep(0.1)
        logs = {
            tuple(streams.items()): container.logs(**streams).decode()
            for streams in ({}, {"stderr": False}, {"stdout": False})
        }
        return status, lambda **streams: logs[tuple(streams.items())]
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("image", [IMAGE, GPU_IMAGE], ids=["cpu", "gpu"])
def test_image_is_a_whole_non_root_install_without_credentials(engine, image):
    status, out = run_in(image, ["finetuner", "--help"])
    assert status == 0 and "synthesize-and-finetune" in out, out
    script = (
        "import os, kfp, finetuner, finetuner.models, finetuner.components, "
        "finetuner.pipelines; print(os.getuid(), os.getgid(), finetuner.__file__)"
    )
    status, logs = run_logs(image, ["python3", "-c", script])
    assert status == 0, logs()
    uid, gid, location = logs(stderr=False).split()
    assert (uid, gid) == ("1000", "1000")
    assert "site-packages" in location  # a real install, not the sources
    # The model cache is the user's where the root filesystem is writable (no volume there).
    status, out = run_in(
        image,
        ["sh", "-c", "touch /models/hf/x /models/finetuner/x /models/torch/x && echo written"],
        read_only=False,
    )  # fmt: skip
    assert status == 0 and out.strip() == "written", out
    attrs = client().images.get(image).attrs
    names = [entry.split("=", 1)[0] for entry in attrs["Config"]["Env"] or []]
    assert not [n for n in names if re.search("KEY|SECRET|TOKEN|PASSWORD|CERT", n)], names
    status, out = run_in(
        image,
        ["sh", "-c", "ls -d /root/.aws /home/finetuner/.aws /etc/pip.conf /root/.netrc "
         "/run/secrets/pip_cert /root/.cache/pip /home/finetuner/.cache /var/cache/pip/http* "
         "2>/dev/null; echo checked"],
    )  # fmt: skip
    assert status == 0 and out.strip() == "checked", f"left in the image: {out}"


def test_a_read_only_root_moves_the_caches_to_tmp(engine):
    script = (
        "from finetuner.data import media; from finetuner.io import storage; "
        "print(storage._cache_root(None), media.default_cache_dir())"
    )
    status, logs = run_logs(IMAGE, ["python3", "-c", script])
    assert status == 0, logs()
    fallback = "/tmp/finetuner-cache-1000"
    assert logs(stderr=False).split() == [f"{fallback}/finetuner", f"{fallback}/_media"], logs()
    assert "note: cache /models/finetuner is not writable" in logs(stdout=False)


def upload_pairs(bucket: str, n: int) -> str:
    lines = (Path(__file__).parent.parent / "examples" / "wordnet_pairs.csv").read_text()
    uri = f"s3://{bucket}/data/pairs.csv"
    storage.write_text(uri, "".join(lines.splitlines(True)[: n + 1]))
    return uri


def glob_one(root: Path, pattern: str) -> Path:
    (found,) = root.glob(pattern)
    return found


@pytest.fixture(scope="module")
def uninterrupted(engine, s3_server, tmp_path_factory):
    """The finetune pipeline, compiled against the images, every step in its container."""
    import uuid

    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(bucket)
    env = s3_server.env()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        root = tmp_path_factory.mktemp("kfp-root")
        summary = root.parent / "summary.json"
        output = f"s3://{bucket}/runs/whole/"
        args = ["run", *TRAIN_ARGS, "--train-data", upload_pairs(bucket, 120), "--output", output]
        code = main([*args, "--summary-json", str(summary), "--pipeline-root", str(root),
                     "--image", IMAGE, "--gpu-image", GPU_IMAGE])  # fmt: skip
        assert code == 0
        yield {"root": root, "output": output, "summary": json.loads(summary.read_text()),
               "env": env, "bucket": bucket, "args": args}  # fmt: skip


def test_finetune_pipeline_runs_in_its_images(uninterrupted, capfd, monkeypatch):
    from finetuner import models
    from finetuner.data import dataset
    from finetuner.evaluation.evaluate import evaluate_dataset
    from finetuner.export.inference import get_model

    for name, value in uninterrupted["env"].items():
        monkeypatch.setenv(name, value)
    output, root = uninterrupted["output"], uninterrupted["root"]
    after = uninterrupted["summary"]["metrics"]["after"]
    assert set(after) >= {"ndcg@3", "mrr@3"}
    # The export in S3 loads here, and scores on the held-out data what the run reported.
    model = get_model(output)
    assert model.encode(["hotelier"]).shape == (1, 384)
    eval_data = dataset.load(str(glob_one(root, "*/preprocess/eval_dataset")))
    local = models.load(str(storage.local_copy(output + "model/")))
    again = evaluate_dataset(local, eval_data, 3)
    assert again == pytest.approx(after, abs=1e-4)
    # The steps ran in the images: the train step's artifacts came from the container.
    assert glob_one(root, "*/train/model")
    secret = uninterrupted["env"]["AWS_SECRET_ACCESS_KEY"]
    assert secret not in capfd.readouterr().out


def test_compiled_yaml_names_the_images_and_no_credentials(uninterrupted):
    (compiled,) = uninterrupted["root"].glob("finetune.yaml")
    text = compiled.read_text()
    assert f"image: {IMAGE}" in text and f"image: {GPU_IMAGE}" in text
    assert uninterrupted["env"]["AWS_SECRET_ACCESS_KEY"] not in text


def test_local_paths_are_refused_when_steps_run_in_images(engine, tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    data.write_text("a,b\nc,d\ne,f\ng,h\n")
    code = main(["run", "--model", "minilm-l6-en", "--train-data", str(data),
                 "--image", IMAGE, "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "parameter train_data" in capsys.readouterr().err


def test_synthesize_and_finetune_pipeline_runs_in_its_images(
    engine, s3, texts, cross_encoder_dir, tmp_path, capfd
):
    """The synthesis pipeline's compiled YAML, every step in its image: the cross-encoder's
    weights come from S3, as a cluster's would."""
    from finetuner.export.inference import get_model

    for name in ("queries", "corpus"):
        storage.upload_file(texts[name], f"s3://{s3}/data/{name}.csv")
    weights = f"s3://{s3}/models/cross-encoder/"
    storage.upload_dir(cross_encoder_dir, weights)
    output, summary = f"s3://{s3}/runs/synth/", tmp_path / "summary.json"
    root = tmp_path / "root"
    root.mkdir()
    code = main([
        "synthesize-and-finetune", "--query-data", f"s3://{s3}/data/queries.csv",
        "--corpus-data", f"s3://{s3}/data/corpus.csv", "--output", output,
        "--model", "minilm-l6-en", "--relation-miner", "minilm-l6-en",
        "--cross-encoder-weights", weights, "--num-relations", "4", "--val-split", "0.25",
        "--batch-size", "9", "--max-length", "32", "--eval-k", "3",
        "--summary-json", str(summary), "--pipeline-root", str(root),
        "--image", IMAGE, "--gpu-image", GPU_IMAGE,
    ])  # fmt: skip
    assert code == 0
    result = json.loads(summary.read_text())
    assert set(result["metrics"]["after"]) >= {"ndcg@3", "mrr@3"}
    assert storage.exists(result["artifacts"]["synthesized"])
    assert glob_one(root, "*/synthesize-pairs").is_dir()  # the step ran, in its image
    assert get_model(output).encode(["hotelier"]).shape == (1, 384)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in capfd.readouterr().out


def kill_train_after_first_checkpoint(checkpoints: str, found: dict) -> None:
    """Watch for the train step's container; SIGKILL it once a checkpoint is in S3, and
    keep what a retry needs: its command, environment and mounts."""
    docker = client()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        running = [c for c in docker.containers.list() if GPU_IMAGE in c.image.tags]
        if running and storage.list_files(checkpoints):
            container = running[0]
            found.update(attrs=container.attrs, checkpoints=storage.list_files(checkpoints))
            container.kill("SIGKILL")
            return
        time.sleep(0.05)


def test_train_step_killed_midway_resumes_from_s3_bit_identical(
    uninterrupted, tmp_path, monkeypatch, capfd
):
    """A preempted node: the train container dies by SIGKILL mid-epoch; the same step
    started again with the same executor input resumes from the S3 checkpoint and ends with
    exactly the weights of the uninterrupted run."""
    from safetensors.torch import load_file

    for name, value in uninterrupted["env"].items():
        monkeypatch.setenv(name, value)
    output = f"s3://{uninterrupted['bucket']}/runs/killed/"
    args = [*uninterrupted["args"][:-1], output]
    found: dict = {}
    watcher = threading.Thread(
        target=kill_train_after_first_checkpoint, args=(output + "checkpoints/", found)
    )
    watcher.start()
    root = tmp_path / "root"
    root.mkdir()
    code = main([*args, "--pipeline-root", str(root), "--image", IMAGE, "--gpu-image", GPU_IMAGE])
    watcher.join()
    assert code != 0 and found, "the train step was not killed"
    assert not storage.exists(output + "manifest.json")
    capfd.readouterr()

    # The retry: the same image, command, environment and mounts, in a new container. On a
    # cluster nothing releases the run's claim on its output when a pod dies; here the local
    # driver released it when the run failed, so the run holds it again, as there.
    config = found["attrs"]["Config"]
    executor_input = json.loads(config["Cmd"][config["Cmd"].index("--executor_input") + 1])
    claim.take(output, executor_input["inputs"]["parameterValues"]["claim"])
    mounts = {
        m["Source"]: {"bind": m["Destination"], "mode": "rw"} for m in found["attrs"]["Mounts"]
    }
    container = client().containers.create(
        config["Image"], config["Cmd"], entrypoint=config["Entrypoint"],
        environment=config["Env"], volumes=mounts, **containers.hardening(),
    )  # fmt: skip
    try:  # removed even when it cannot start
        container.start()
        assert container.wait(timeout=600)["StatusCode"] == 0, container.logs().decode()[-3000:]
        log = container.logs().decode()
    finally:
        container.remove(force=True)
    assert re.search(r"resuming from the checkpoint at step \d+", log), log[-3000:]

    def weights(pipeline_root: Path) -> dict:
        return load_file(str(glob_one(pipeline_root, "*/train/model/**/model.safetensors")))

    retried, whole = weights(root), weights(uninterrupted["root"])
    assert retried.keys() == whole.keys()
    assert all((retried[k] == whole[k]).all() for k in whole), "weights differ"


@pytest.mark.parametrize("offline", [None, "1"])
def test_a_step_container_gets_the_s3_settings_and_nothing_else_of_this_machine(offline):
    host = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret", "HOME": "/root", "PATH": "/usr/bin",
        "DOCKER_HOST": "unix:///x.sock", **({"HF_HUB_OFFLINE": offline} if offline else {}),
    }  # fmt: skip
    env = containers.step_environment(host)
    assert env == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }  # fmt: skip
    hardened = containers.hardening()
    assert hardened["user"] == "1000:1000" and hardened["read_only"] is True
    assert hardened["cap_drop"] == ["ALL"] and hardened["security_opt"] == ["no-new-privileges"]
    assert set(hardened["tmpfs"]) == {"/tmp"}
