"""The train step across nodes, on paper: the TrainJob it creates through the Kubeflow SDK's
Kubernetes backend (the Kubernetes API mocked, the body parsed into kubeflow_trainer_api's
models), its name, its checks, and each process's own random states in a checkpoint."""

from __future__ import annotations

import base64
import json

import pytest
from kubeflow_trainer_api import models

from finetuner.errors import FinetunerError
from finetuner.orchestration import trainjob
from finetuner.orchestration.cluster import S3_SECRET_KEYS

NODES = trainjob.Nodes(
    num_nodes=3,
    gpus=4,
    gpu_type="nvidia.com/gpu",
    cpu="8",
    memory="64Gi",
    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    s3_secret_name="team-s3",
    image="registry.example.com/ml/finetuner-gpu:1.0",
)


class _Thread:
    """What the API's calls with async_req=True return."""

    def __init__(self, value):
        self.value = value

    def get(self, timeout=None):
        return self.value


@pytest.fixture
def kubernetes_api(monkeypatch):
    """The Kubernetes API of the SDK's backend, mocked: the torch-distributed runtime is a
    ClusterTrainingRuntime (no namespaced one), and created objects are captured."""
    from kubernetes import client

    created = []

    def get_namespaced(self, group, version, namespace, plural, name, **kwargs):
        raise client.ApiException(status=404, reason="Not Found")

    def get_cluster(self, group, version, plural, name, **kwargs):
        assert (group, plural, name) == ("trainer.kubeflow.org", "clustertrainingruntimes",
                                         trainjob.RUNTIME_NAME)  # fmt: skip
        return _Thread(trainjob.RUNTIME)

    def create(self, group, version, namespace, plural, body, **kwargs):
        created.append({"group": group, "version": version, "namespace": namespace,
                        "plural": plural, "body": body})  # fmt: skip
        return body

    def no_config_map(self, *args, **kwargs):
        raise client.ApiException(status=404)

    monkeypatch.setattr(client.CustomObjectsApi, "get_namespaced_custom_object", get_namespaced)
    monkeypatch.setattr(client.CustomObjectsApi, "get_cluster_custom_object", get_cluster)
    monkeypatch.setattr(client.CustomObjectsApi, "create_namespaced_custom_object", create)
    monkeypatch.setattr(client.CoreV1Api, "read_namespaced_config_map", no_config_map)
    return created


def _kubernetes_client():
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
    from kubernetes import client

    config = KubernetesBackendConfig(namespace="team", client_configuration=client.Configuration())
    return TrainerClient(config)


def test_the_trainjob_on_a_cluster_matches_the_trainer_api(kubernetes_api):
    name = trainjob.job_name("run-1234")
    payload = trainjob.encode({"model_spec": {"name": "minilm-l6-en"}, "options": {"x": "$HOME"}})
    trainjob.create(_kubernetes_client(), "kubernetes", name, NODES, payload)

    (call,) = kubernetes_api
    assert (call["group"], call["plural"], call["namespace"]) == (
        "trainer.kubeflow.org", "trainjobs", "team",
    )  # fmt: skip
    job = models.TrainerV1alpha1TrainJob.from_dict(call["body"])
    # Round trip: nothing of the body is unknown to the models.
    assert models.TrainerV1alpha1TrainJob.from_dict(job.to_dict()).to_dict() == job.to_dict()
    assert job.kind == "TrainJob" and job.api_version == "trainer.kubeflow.org/v1alpha1"
    assert job.metadata.name == name
    assert job.spec.runtime_ref.name == "torch-distributed"
    assert job.spec.runtime_ref.kind == "ClusterTrainingRuntime"

    trainer = job.spec.trainer
    assert trainer.image == NODES.image
    assert trainer.num_nodes == 3
    resources = {k: v.actual_instance for k, v in trainer.resources_per_node.limits.items()}
    assert resources == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 4}
    assert trainer.resources_per_node.requests.keys() == trainer.resources_per_node.limits.keys()
    # The command runs torchrun on our entry point with the payload, base64 (no shell
    # rewrites it in the runtime's here-document).
    script = "\n".join(trainer.command)
    assert "torchrun" in script
    assert "def node_entry(payload" in script
    assert f"node_entry(**{{'payload': '{payload}'}})" in script
    assert json.loads(base64.b64decode(payload))["options"] == {"x": "$HOME"}

    # The node pods: the S3 Secret as environment, the node selector and the tolerations.
    (patch,) = job.spec.runtime_patches
    (replicated,) = patch.training_runtime_spec.template.spec.replicated_jobs
    assert replicated.name == "node"
    pod = replicated.template.spec.template.spec
    assert pod.node_selector == NODES.node_selector
    assert [t.to_dict() for t in pod.tolerations] == NODES.tolerations
    (container,) = pod.containers
    assert container.name == "node"
    secret_env = {e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
                  for e in container.env}  # fmt: skip
    assert secret_env == {key: ("team-s3", key) for key in S3_SECRET_KEYS}


def test_the_job_name_is_the_runs_own_and_a_dns_label():
    name = trainjob.job_name("0b6c1e5a-7d2f-4f5e-9f55-4a7a1c3c2d10")
    assert name == trainjob.job_name("0b6c1e5a-7d2f-4f5e-9f55-4a7a1c3c2d10")
    assert name != trainjob.job_name("another-run")
    assert len(name) <= 63 and name.replace("-", "").isalnum() and name[0].isalpha()


def test_a_missing_job_is_none_and_other_api_errors_say_so(kubernetes_api, monkeypatch):
    from kubernetes import client

    def get(self, group, version, namespace, plural, name, **kwargs):
        if name == "forbidden":
            raise client.ApiException(status=403, reason="Forbidden")
        raise client.ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(client.CustomObjectsApi, "get_namespaced_custom_object", get)
    trainer_client = _kubernetes_client()
    assert trainjob.existing(trainer_client, "finetuner-0123") is None
    answer = "TrainJob forbidden: cannot read it: the Kubernetes API answered 403 Forbidden"
    with pytest.raises(FinetunerError, match=answer):
        trainjob.existing(trainer_client, "forbidden")


def test_across_nodes_the_output_must_be_on_s3(tmp_path):
    trainjob.check(1, str(tmp_path))
    trainjob.check(2, "s3://bucket/models")
    with pytest.raises(FinetunerError, match="parameter output_uri: .* not on S3; with num_node"):
        trainjob.check(2, str(tmp_path))


def test_a_cli_run_across_nodes_with_a_local_output_fails_before_anything_runs(
    pairs_csv, tmp_path, capsys
):
    from finetuner.cli import main

    status = main(["run", "--train-data", str(pairs_csv()), "--output", str(tmp_path / "out"),
                   "--num-nodes", "2"])  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert "error: parameter output_uri:" in err and "num_nodes 2" in err
    assert not (tmp_path / "out").exists()


def test_the_nodes_reach_an_s3_server_on_this_machines_loopback():
    env = trainjob.node_environment(
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "k", "HOME": "/root"}
    )
    assert env == {
        "AWS_ENDPOINT_URL": "http://host.containers.internal:8333", "AWS_ACCESS_KEY_ID": "k",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }  # fmt: skip
    remote = trainjob.node_environment({"AWS_ENDPOINT_URL": "https://s3.example.com"})
    assert remote["AWS_ENDPOINT_URL"] == "https://s3.example.com"


def test_node_resources_name_the_gpu_type():
    assert trainjob.Nodes(2, gpus=2).resources() == {"cpu": "4", "memory": "16Gi", "gpu": 2}
    other = trainjob.Nodes(2, gpus=1, gpu_type="amd.com/gpu").resources()
    assert other["amd.com/gpu"] == 1 and "gpu" not in other


# ---------------------------------------------------------------- each process's random states


def _draw_checkpoint_and_resume(ctx, folder):
    import torch

    from finetuner.training import checkpoints

    torch.manual_seed(0)
    torch.rand(ctx.rank + 1)  # each process has drawn differently by the checkpoint
    saved = checkpoints.gather_rng_states(ctx)
    if ctx.main:
        checkpoints.save(folder, 1, {"rng": saved})
    uninterrupted = torch.rand(3)
    import torch.distributed as dist

    dist.barrier()
    torch.manual_seed(123)  # a restarted process
    saved = checkpoints.latest(folder)["rng"]
    checkpoints.set_rng_states(checkpoints.own_rng_states(saved, ctx.rank))
    return uninterrupted.tolist(), torch.rand(3).tolist()


def test_a_resumed_process_gets_its_own_random_states_back(tmp_path):
    from tests.test_distributed import _spawn

    (plain0, resumed0), (plain1, resumed1) = _spawn(_draw_checkpoint_and_resume, str(tmp_path))
    assert resumed0 == plain0 and resumed1 == plain1
    assert plain0 != plain1


def test_an_older_checkpoint_of_one_process_still_resumes():
    from finetuner.training import checkpoints

    states = checkpoints.rng_states()
    assert checkpoints.own_rng_states(states, 3) is states
    assert checkpoints.own_rng_states([states], 0) is states
