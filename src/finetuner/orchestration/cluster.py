"""Kubernetes settings of the pipeline steps on a KFP cluster, in one place for every pipeline.

Each function takes a task inside a `@dsl.pipeline` body and returns it. kfp.local ignores the
Kubernetes part of them (it warns and runs the step as a plain subprocess), so the same
pipeline runs on this machine and on a cluster.
"""

from __future__ import annotations

# The keys of the S3 Secret, each set as the environment variable of the same name: boto3
# and our storage module read them there.
S3_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
)

# Compile-time settings: the SDK takes only literals for these (see README, "Run on Kubeflow").
SHM_SIZE = "8Gi"  # /dev/shm for the DataLoader workers; it counts against the pod's memory
TRAIN_RETRIES = 3
RETRY_BACKOFF = "60s"  # then x2 per try: 60 s, 120 s, 240 s
RETRY_BACKOFF_FACTOR = 2.0
RETRY_BACKOFF_MAX = "1800s"


def s3_step(task, secret_name):
    """Give a step that reads or writes s3:// URIs its credentials and endpoint, from the
    Kubernetes Secret `secret_name` (a pipeline parameter or a string); nothing of the
    Secret's values reaches the compiled pipeline."""
    from kfp import kubernetes

    return kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={k: k for k in S3_SECRET_KEYS}
    )


def registry_step(task, secret_name):
    """Give the register step the Model Registry token of the Secret `secret_name`, when that
    Secret exists (finetuner.export.model_registry.TOKEN_ENV)."""
    from kfp import kubernetes

    from finetuner.export.model_registry import TOKEN_ENV

    return kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={TOKEN_ENV: TOKEN_ENV}, optional=True
    )


def gpu_step(task, p: dict):
    """Run a training step on a GPU node, as the pipeline's parameters `p` say (the cluster
    group of finetuner.parameters): the accelerator type and count, a node selector (a dict
    parameter) and tolerations (a list parameter), CPU and memory requests; and a
    memory-backed /dev/shm for the DataLoader workers, and retries with backoff, which
    resume from the step's last checkpoint."""
    from kfp import kubernetes

    task.set_accelerator_type(p["gpu_type"])
    task.set_accelerator_limit(p["gpu_count"])
    task.set_cpu_request(p["train_cpu"])
    task.set_memory_request(p["train_memory"])
    kubernetes.add_node_selector_json(task, p["node_selector"])
    kubernetes.add_toleration_json(task, p["tolerations"])
    # Docker's default /dev/shm is 64 MB, too small for the workers' shared tensors.
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    # A train step across nodes starts its TrainJob from the image it runs in (the compiled
    # pipeline's, which `finetuner compile --gpu-image` replaces here too).
    task.set_env_variable(TRAINJOB_IMAGE_ENV, task.container_spec.image)
    task.set_retry(
        TRAIN_RETRIES,
        backoff_duration=RETRY_BACKOFF,
        backoff_factor=RETRY_BACKOFF_FACTOR,
        backoff_max_duration=RETRY_BACKOFF_MAX,
    )
    return task


# The image of a train step's TrainJob nodes (finetuner.orchestration.trainjob).
TRAINJOB_IMAGE_ENV = "FINETUNER_TRAINJOB_IMAGE"


def trainjob_inputs(p: dict) -> dict:
    """The train step's inputs that its TrainJob needs when num_nodes > 1: the nodes, the
    step's own resources, placement and S3 Secret (each node gets them). node_selector and
    tolerations are inputs of their own: kfp.local breaks a JSON object nested in a dict of
    pipeline channels."""
    return {
        "num_nodes": p["num_nodes"],
        "trainjob": {
            "gpu_type": p["gpu_type"], "train_cpu": p["train_cpu"],
            "train_memory": p["train_memory"], "s3_secret_name": p["s3_secret_name"],
        },
        "node_selector": p["node_selector"],
        "tolerations": p["tolerations"],
    }  # fmt: skip
