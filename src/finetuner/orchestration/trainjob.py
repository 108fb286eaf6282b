"""The train step across nodes: a Kubeflow Trainer TrainJob on the `torch-distributed`
runtime, which runs torchrun on every node (a JobSet on a cluster), created and watched
through the Kubeflow SDK's `TrainerClient`.

The step becomes a driver (`driver`). It puts the preprocessed datasets on S3 beside the
run's output (KFP artifact paths are not shared across pods), creates the TrainJob with the
step's image, resources, placement and S3 settings, streams node 0's log into its own,
and, once the job is complete, takes the model over from S3 into its model artifact, so
that evaluate and export go on as after a one-node step. Every process of the job runs
`run_node`: the ordinary train step (`steps.train`), data-parallel across all of them
(finetuner.training.distributed), with checkpoints under the run's output on S3.

The job's name comes from the run's id (`job_name`): a retried step finds its job and
reattaches to it while it runs, takes its result once it is complete, and replaces it when
it failed; the new job resumes from the checkpoints. Never two jobs of one run at once.

Backends: on a cluster (a pod's environment) the SDK's Kubernetes backend; elsewhere its
container backend, one container per node through a Docker API (podman's here), with the
runtime read from a local definition (`RUNTIME`), not from GitHub.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.orchestration.cluster import S3_SECRET_KEYS, TRAINJOB_IMAGE_ENV

RUNTIME_NAME = "torch-distributed"
# kubernetes or container; unset: kubernetes inside a pod, the container backend elsewhere.
BACKEND_ENV = "FINETUNER_TRAINJOB_BACKEND"
IMAGE_ENV = TRAINJOB_IMAGE_ENV  # set on the train step (orchestration.cluster.gpu_step)
WORK = "trainjob"  # under the run's output: the job's inputs, model and result
# What a node's container gets from the driver's environment on the container backend (a
# cluster's nodes get the S3 Secret instead).
PASSED_ENV = (*S3_SECRET_KEYS, "FINETUNER_MODEL_MIRROR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# How long the driver waits for its job: a training may take days.
WAIT_SECONDS = 30 * 24 * 3600
POLL_SECONDS = 5
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")

# Kubeflow Trainer's torch-distributed runtime, as its manifests install it on a cluster;
# the container backend reads this copy (written to a local folder), not GitHub.
RUNTIME = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "ClusterTrainingRuntime",
    "metadata": {
        "name": RUNTIME_NAME,
        "labels": {"trainer.kubeflow.org/framework": "torch"},
    },
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
        "template": {
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "node",
                        "template": {
                            "metadata": {
                                "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
                            },
                            "spec": {
                                "template": {
                                    "spec": {
                                        "containers": [
                                            {"name": "node", "image": "pytorch/pytorch:latest"}
                                        ]
                                    }
                                }
                            },
                        },
                    }
                ]
            }
        },
    },
}


@dataclass
class Nodes:
    """The TrainJob's shape: num_nodes nodes of gpus processes (one per GPU; one on a node
    without GPUs), each node with the train step's resources, placement and S3 Secret."""

    num_nodes: int
    gpus: int = 1
    gpu_type: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    s3_secret_name: str = "finetuner-s3"
    image: str = ""

    @classmethod
    def of(cls, num_nodes, num_gpus, trainjob: dict, node_selector, tolerations) -> Nodes:
        """From the train step's inputs, as KFP hands them over (text)."""
        return cls(
            num_nodes=int(num_nodes), gpus=int(num_gpus),
            gpu_type=trainjob.get("gpu_type", cls.gpu_type),
            cpu=str(trainjob.get("train_cpu", cls.cpu)),
            memory=str(trainjob.get("train_memory", cls.memory)),
            node_selector=dict(node_selector or {}), tolerations=list(tolerations or []),
            s3_secret_name=trainjob.get("s3_secret_name", cls.s3_secret_name),
            image=os.environ.get(IMAGE_ENV, ""),
        )  # fmt: skip

    @property
    def processes(self) -> int:
        return self.num_nodes * self.gpus

    def resources(self) -> dict:
        """The SDK's resources_per_node: its "gpu" key is nvidia.com/gpu, and the container
        backend starts one process per "gpu"."""
        gpu_key = "gpu" if self.gpu_type == "nvidia.com/gpu" else self.gpu_type
        return {"cpu": self.cpu, "memory": self.memory, gpu_key: self.gpus}


def job_name(run_id: str) -> str:
    """The TrainJob of a run: the same name for every try of its train step (a DNS label)."""
    return "finetuner-" + hashlib.sha256(run_id.encode()).hexdigest()[:16]


def check(num_nodes: int, output_uri: str) -> None:
    """What a run across nodes needs, checked before anything runs."""
    if num_nodes > 1 and not storage.is_s3(output_uri):
        raise FinetunerError(
            f"parameter output_uri: {output_uri!r} is not on S3; with num_nodes {num_nodes} "
            "the nodes of the TrainJob read the data and write the model there (s3://...)."
        )


def paths(output_uri: str) -> dict:
    """Where the job's inputs and outputs go, under the run's output."""
    work = storage.join(output_uri, WORK)
    return {
        "train": storage.join(work, "train"), "eval": storage.join(work, "eval"),
        "model": storage.join(work, "model"), "result": storage.join(work, "result.json"),
    }  # fmt: skip


# ---------------------------------------------------------------- in every process of the job


def node_entry(payload: str) -> None:
    """The TrainJob's training function (the SDK copies its source into each node's
    command, a shell here-document, and calls it in each torchrun process): everything is
    in the image, and the payload is base64, which no shell rewrites."""
    from finetuner.orchestration.trainjob import run_node

    run_node(payload)


def encode(job: dict) -> str:
    import base64

    return base64.b64encode(json.dumps(job).encode()).decode()


def run_node(payload: str) -> None:
    """One process of the TrainJob: the train step, data-parallel across every process of
    every node; process 0 puts the model and the result on S3 (result last)."""
    import base64

    import torch.distributed as dist

    from finetuner.io.staging import stage_dir
    from finetuner.orchestration import steps
    from finetuner.training import distributed

    job = json.loads(base64.b64decode(payload))
    ctx = distributed.context()
    try:
        with stage_dir("trainjob") as tmp:
            train_path = storage.download_dir(job["paths"]["train"], Path(tmp, "train"))
            eval_path = ""
            if job["has_eval"]:
                eval_path = str(storage.download_dir(job["paths"]["eval"], Path(tmp, "eval")))
            model_out = Path(tmp, "model")
            result = steps.train(
                job["model_spec"], str(train_path), str(model_out), job["options"],
                job["output_uri"], eval_path, num_gpus=1,
            )  # fmt: skip
            if ctx is None or ctx.main:
                storage.upload_dir(model_out, job["paths"]["model"])
                storage.write_text(job["paths"]["result"], json.dumps(result))
    except FinetunerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_status) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------- the driver (the train step)


def driver(nodes: Nodes, run_id: str):
    """The train step's function for a run across nodes: steps.train's signature."""

    def train(model_spec, train_path, model_out, options, output_uri="", eval_path="", num_gpus=1):
        return run_job(nodes, run_id, model_spec, train_path, model_out, options, output_uri,
                       eval_path)  # fmt: skip

    return train


def run_job(nodes, run_id, model_spec, train_path, model_out, options, output_uri, eval_path):
    """Create (or reattach to) the run's TrainJob, wait for it with its log in ours, and
    copy its model into model_out; its result (steps.train's)."""
    from kubeflow.trainer.constants import constants

    check(nodes.num_nodes, output_uri)
    if not nodes.image:
        raise FinetunerError(
            f"no image for the TrainJob's nodes: the train step sets {IMAGE_ENV} (compile the "
            "pipeline with finetuner compile), or set it to the step image."
        )
    where = paths(output_uri)
    name = job_name(run_id)
    client, backend = trainer_client()
    job = existing(client, name)
    if job is not None and job.status in (constants.TRAINJOB_CREATED, constants.TRAINJOB_RUNNING):
        print(f"reattaching to TrainJob {name} ({job.status})", file=sys.stderr, flush=True)
    elif (
        job is not None
        and job.status == constants.TRAINJOB_COMPLETE
        and storage.exists(where["result"])
    ):
        print(f"TrainJob {name} is complete: taking its model", file=sys.stderr, flush=True)
    else:
        if job is not None:  # failed (or complete without a result): its checkpoints remain
            print(f"TrainJob {name} is {job.status}: replacing it", file=sys.stderr, flush=True)
            client.delete_job(name)
        storage.delete(where["result"])  # a result is whole only once its job wrote it
        storage.delete_prefix(where["model"] + "/")
        storage.upload_dir(train_path, where["train"])
        if eval_path:
            storage.upload_dir(eval_path, where["eval"])
        payload = {
            "model_spec": model_spec, "options": options, "output_uri": output_uri,
            "paths": where, "has_eval": bool(eval_path),
        }  # fmt: skip
        create(client, backend, name, nodes, encode(payload))
        print(
            f"TrainJob {name}: {nodes.num_nodes} nodes x {nodes.gpus} processes "
            f"({backend} backend, image {nodes.image})",
            file=sys.stderr,
            flush=True,
        )
    wait(client, name)
    storage.download_dir(where["model"], model_out)
    result = json.loads(storage.read_text(where["result"]))
    # The model is the step's now: the job (its containers or pods) and its copies go.
    client.delete_job(name)
    storage.delete_prefix(storage.join(output_uri, WORK) + "/")
    return result


def trainer_client():
    """The SDK's client and the backend's name (BACKEND_ENV)."""
    from kubeflow.trainer import TrainerClient

    backend = os.environ.get(BACKEND_ENV) or (
        "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "container"
    )
    try:
        if backend == "kubernetes":
            from kubeflow.trainer import KubernetesBackendConfig

            return TrainerClient(KubernetesBackendConfig()), backend
        if backend != "container":
            raise FinetunerError(f"{BACKEND_ENV}={backend!r}: give kubernetes or container.")
        from kubeflow.trainer import ContainerBackendConfig
        from kubeflow.trainer.backends.container.types import TrainingRuntimeSource

        config = ContainerBackendConfig(
            container_host=os.environ.get("DOCKER_HOST"),
            pull_policy="IfNotPresent",
            runtime_source=TrainingRuntimeSource(sources=[str(runtime_folder())]),
        )
        return TrainerClient(config), backend
    except FinetunerError:
        raise
    except Exception as exc:  # the SDK's: no cluster config, no container engine
        raise FinetunerError(
            f"num_nodes: the Kubeflow Trainer client ({backend} backend) cannot start: {exc}"
        ) from exc


def runtime_folder() -> Path:
    """A folder holding RUNTIME, for the container backend."""
    import tempfile

    import yaml

    folder = Path(tempfile.gettempdir(), "finetuner-trainer-runtimes")
    folder.mkdir(exist_ok=True)
    path = folder / f"{RUNTIME_NAME}.yaml"
    text = yaml.safe_dump(RUNTIME, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)
    return folder


def existing(client, name: str):
    """The TrainJob `name`, or None where there is none."""
    try:
        return client.get_job(name)
    except ValueError:  # the container backend: "No TrainJob with name ..."
        return None
    except RuntimeError as exc:  # the Kubernetes backend wraps the API's error
        if getattr(exc.__cause__, "status", None) == 404:
            return None
        raise FinetunerError(f"TrainJob {name}: cannot read it: {_api_error(exc)}") from exc


def _api_error(exc: Exception) -> str:
    """The Kubernetes API's answer under the SDK's error, on one line (e.g. 403 Forbidden:
    the step's service account lacks the RBAC of manifests/base/trainjob-rbac.yaml)."""
    cause = exc.__cause__ or exc
    status = getattr(cause, "status", None)
    if status is not None:
        return f"the Kubernetes API answered {status} {getattr(cause, 'reason', '')}".strip()
    return " ".join(str(cause).split())


def trainer(nodes: Nodes, payload: str):
    from kubeflow.trainer import CustomTrainer

    return CustomTrainer(
        func=node_entry,
        func_args={"payload": payload},
        image=nodes.image,
        num_nodes=nodes.num_nodes,
        resources_per_node=nodes.resources(),
    )


def options(backend: str, name: str, nodes: Nodes) -> list:
    """The SDK's options of the job: its name, and on a cluster the nodes' S3 Secret,
    node selector and tolerations (a runtime patch of the node pods)."""
    from kubeflow.trainer import options as opt

    chosen = [opt.Name(name=name)]
    if backend == "kubernetes":
        env = [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": nodes.s3_secret_name, "key": key}}}
            for key in S3_SECRET_KEYS
        ]
        pod = opt.PodSpecPatch(
            containers=[opt.ContainerPatch(name="node", env=env)],
            node_selector=nodes.node_selector or None,
            tolerations=nodes.tolerations or None,
        )
        job = opt.JobTemplatePatch(spec=opt.JobSpecPatch(template=opt.PodTemplatePatch(spec=pod)))
        replicated = [opt.ReplicatedJobPatch(name="node", template=job)]
        spec = opt.TrainingRuntimeSpecPatch(
            template=opt.JobSetTemplatePatch(spec=opt.JobSetSpecPatch(replicated_jobs=replicated))
        )
        chosen += [
            opt.Labels(labels={"app.kubernetes.io/part-of": "finetuner"}),
            opt.RuntimePatch(training_runtime_spec=spec),
        ]
    return chosen


def node_environment(environ: dict | None = None) -> dict:
    """The nodes' environment on the container backend: the S3 settings, with an endpoint
    on this machine's loopback made the host's address as a container sees it."""
    from urllib.parse import urlsplit

    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in PASSED_ENV if environ.get(name)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", env["HF_HUB_OFFLINE"])
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    parts = urlsplit(endpoint)
    if parts.hostname in LOOPBACK or parts.netloc.startswith("[::1]"):
        host = environ.get("FINETUNER_CONTAINER_HOST_ALIAS", "host.containers.internal")
        port = f":{parts.port}" if parts.port else ""
        env["AWS_ENDPOINT_URL"] = parts._replace(netloc=host + port).geturl()
    return env


def create(client, backend: str, name: str, nodes: Nodes, payload: str) -> None:
    chosen = trainer(nodes, payload)
    if backend == "container":
        chosen.env = node_environment()
    try:
        client.train(runtime=RUNTIME_NAME, trainer=chosen, options=options(backend, name, nodes))
    except Exception as exc:
        raise FinetunerError(f"TrainJob {name}: cannot create it: {_api_error(exc)}") from exc


def wait(client, name: str) -> None:
    """Until the job is complete, with node 0's log (then the others') streamed into ours;
    its own error when it fails."""
    from kubeflow.trainer.constants import constants

    tail: deque[str] = deque(maxlen=40)
    logs = threading.Thread(target=_stream_logs, args=(client, name, tail), daemon=True)
    logs.start()
    try:
        client.wait_for_job_status(
            name, {constants.TRAINJOB_COMPLETE}, timeout=WAIT_SECONDS, polling_interval=POLL_SECONDS
        )
    except (RuntimeError, TimeoutError) as exc:
        logs.join(timeout=10)
        errors = [line for line in tail if line.lstrip().startswith("error: ")]
        own = f"\n{errors[-1].strip()}" if errors else ""
        raise FinetunerError(
            f"TrainJob {name} failed: {exc}{own}\nA rerun or a retried step resumes from its "
            "last checkpoint."
        ) from None
    logs.join(timeout=30)


def _stream_logs(client, name: str, tail: deque) -> None:
    """Copy the job's log (node 0 first) into this process's output once it runs."""
    import time

    from kubeflow.trainer.constants import constants

    started = (constants.TRAINJOB_RUNNING, constants.TRAINJOB_COMPLETE, constants.TRAINJOB_FAILED)
    try:
        while (job := existing(client, name)) is None or job.status not in started:
            time.sleep(POLL_SECONDS)
        for chunk in client.get_job_logs(name, follow=True):
            for line in chunk.splitlines():
                tail.append(line)
                print(f"[{name}] {line}", flush=True)
    except Exception as exc:  # a log that breaks off leaves the waiting to the driver
        print(f"TrainJob {name}: its log broke off ({exc})", file=sys.stderr, flush=True)
