"""Run a compiled pipeline on this machine with every step in its image, as a cluster would.

kfp.local's DockerRunner starts one container per step, from the images that
`finetuner compile --image ... --gpu-image ...` wrote into the YAML. It speaks the Docker
API: a Docker engine's, or podman's (`podman system service`, started here when no engine
answers). Each container is hardened as a restricted Kubernetes namespace would run it, and
gets the S3 settings only as environment variables, as a Secret gives them on a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.orchestration.cluster import S3_SECRET_KEYS
from finetuner.orchestration.failures import FAILURE_FILE

# What a step's container gets from this environment: the S3 settings, where weights are
# mirrored, and where a failing step records its error (a file under the pipeline root, which
# the container sees at the same path). Nothing else leaks in (no HOME, no PATH of the host).
PASSED_ENV = (*S3_SECRET_KEYS, "FINETUNER_MODEL_MIRROR", FAILURE_FILE)
# The step image's user (images/Dockerfile*).
USER = "1000:1000"


def hardening() -> dict:
    """docker-py `containers.run` arguments of a pod under the restricted Pod Security
    Standard with a read-only root filesystem: non-root, no capabilities, no privilege
    escalation, and only /tmp writable. The host network lets a step reach an S3 server
    on this machine's loopback."""
    return {
        "user": USER,
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "host",
    }


def step_environment(environ: dict | None = None) -> dict:
    """The environment of every step's container."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in PASSED_ENV if environ.get(name)}
    # Nothing may reach a model hub; the weights come from S3 or the image.
    env["HF_HUB_OFFLINE"] = environ.get("HF_HUB_OFFLINE", "1")
    env["TRANSFORMERS_OFFLINE"] = env["HF_HUB_OFFLINE"]
    return env


def _answers(base_url: str | None = None) -> bool:
    """Whether a Docker API answers at base_url (default: the environment's)."""
    import docker

    try:
        client = (
            docker.from_env(timeout=10)
            if base_url is None
            else docker.DockerClient(base_url=base_url, timeout=10)
        )
    except docker.errors.DockerException:  # the client asks the server at once
        return False
    try:
        return bool(client.ping())
    except Exception:  # any failure to reach the API means "no engine here"
        return False
    finally:
        client.close()


@contextmanager
def docker_api() -> Iterator[str]:
    """Yields a Docker API endpoint (DOCKER_HOST) that answers: the one configured, else a
    `podman system service` started for the duration."""
    if _answers():
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    podman = shutil.which("podman")
    if podman is None:
        raise FinetunerError(
            "running the steps in containers needs a Docker engine (DOCKER_HOST) or podman; "
            "neither answers here. Install podman (make container-packages) or docker."
        )
    folder = Path(tempfile.mkdtemp(prefix="finetuner-podman-"))
    endpoint = f"unix://{folder}/podman.sock"
    log = open(folder / "service.log", "wb")  # noqa: SIM115 (closed below)
    service = subprocess.Popen(
        [podman, "system", "service", "--time=0", endpoint], stdout=log, stderr=log
    )
    try:
        for _ in range(300):
            if service.poll() is not None or _answers(endpoint):
                break
            time.sleep(0.1)
        if not _answers(endpoint):
            raise FinetunerError(
                f"podman system service did not start; its log: {folder / 'service.log'}"
            )
        previous = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = endpoint
        try:
            yield endpoint
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous
    finally:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def check_images(*images: str) -> None:
    """Every image is present locally: a run never pulls (the step images are ours)."""
    import docker

    client = docker.from_env(timeout=30)
    try:
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                raise FinetunerError(
                    f"image {image} is not present here; build it first (make images)."
                ) from None
    finally:
        client.close()


def check_uris(params: dict, names: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """The steps' containers see S3 and nothing of this machine's files."""
    for name in names:
        value = params.get(name)
        if name in required and not value:
            raise FinetunerError(
                f"parameter {name}: required (an s3:// URI) when the steps run in their images."
            )
        if value and not storage.is_s3(value):
            raise FinetunerError(
                f"parameter {name}: {value!r} is a local path, which the steps' containers "
                f"cannot see; give an s3:// URI when the steps run in their images."
            )


def runner(environment: dict | None = None):
    """kfp.local's DockerRunner with the hardening and the step environment."""
    from kfp import local

    return local.DockerRunner(**hardening(), environment=step_environment(environment))
