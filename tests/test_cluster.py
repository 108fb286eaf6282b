"""The compiled pipeline as a KFP cluster gets it: step images, the train step's GPU and
scheduling settings, S3 credentials from a Secret only, UI descriptions and caching."""

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
from kfp.pipeline_spec import pipeline_spec_pb2

from finetuner.cli import main
from finetuner.components import GPU_IMAGE, IMAGE
from finetuner.launch.compile import compile_pipelines
from finetuner.orchestration.cluster import S3_SECRET_KEYS, TRAINJOB_IMAGE_ENV

COMPILED = Path(__file__).resolve().parent.parent / "pipelines" / "finetune.yaml"
S3_STEPS = {
    "catalogue-lookup", "claim-output", "preprocess", "train", "evaluate", "export", "promote",
    "register", "mine-negatives",
}  # fmt: skip


@pytest.fixture(scope="module")
def compiled():
    """The committed YAML: the PipelineSpec and each executor's Kubernetes config, both
    parsed strictly (an unknown field fails)."""
    pipeline, platform = yaml.safe_load_all(COMPILED.read_text())
    spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    k8s = {
        name.removeprefix("exec-"): json_format.ParseDict(config, k8s_pb.KubernetesExecutorConfig())
        for name, config in executors.items()
    }
    return pipeline, spec, k8s


def images(pipeline: dict) -> dict[str, str]:
    executors = pipeline["deploymentSpec"]["executors"]
    return {name.removeprefix("exec-"): e["container"]["image"] for name, e in executors.items()}


def test_default_compile_keeps_the_default_images(compiled):
    pipeline, _, _ = compiled
    used = images(pipeline)
    assert used.pop("train") == GPU_IMAGE
    assert set(used.values()) == {IMAGE} and set(used) == S3_STEPS - {"train"}


def test_compile_with_images_sets_every_step(tmp_path, capsys):
    image, gpu_image = (
        "registry.example.com/ml/finetuner:1.2.3",
        "registry.example.com/ml/ft-gpu:1.2.3",
    )
    assert main(["compile", "--output-dir", str(tmp_path), "--image", image,
                 "--gpu-image", gpu_image]) == 0  # fmt: skip
    text = (tmp_path / "finetune.yaml").read_text()
    used = images(next(yaml.safe_load_all(text)))
    assert used.pop("train") == gpu_image and set(used.values()) == {image}
    assert IMAGE not in text and GPU_IMAGE not in text  # nowhere else either
    synthesis = (tmp_path / "synthesize_and_finetune.yaml").read_text()
    used = images(next(yaml.safe_load_all(synthesis)))
    assert used.pop("train") == used.pop("synthesize-pairs") == gpu_image
    assert set(used.values()) == {image}

    # Only one given: the other keeps its default.
    path, _ = compile_pipelines(tmp_path / "cpu-only", image=image)  # finetune first
    assert images(next(yaml.safe_load_all(path.read_text())))["train"] == GPU_IMAGE


def test_compile_refuses_a_bad_image_or_claim_name(tmp_path, capsys):
    assert main(["compile", "--output-dir", str(tmp_path), "--gpu-image", "my image"]) == 2
    assert "--gpu-image: 'my image' is not an image reference" in capsys.readouterr().err
    assert main(["compile", "--output-dir", str(tmp_path), "--model-cache-pvc", "Cache_1"]) == 2
    assert "--model-cache-pvc: 'Cache_1' is not a PersistentVolumeClaim name" in (
        capsys.readouterr().err
    )


def test_model_cache_claim_mounts_in_every_step(tmp_path):
    path, _ = compile_pipelines(tmp_path, model_cache_pvc="finetuner-model-cache")  # finetune first
    _, platform = yaml.safe_load_all(path.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name.removeprefix("exec-") for name in executors} == S3_STEPS
    for config in executors.values():
        parsed = json_format.ParseDict(config, k8s_pb.KubernetesExecutorConfig())
        (mount,) = parsed.pvc_mount
        assert mount.mount_path == "/models"
        assert mount.pvc_name_parameter.runtime_value.constant.string_value == (
            "finetuner-model-cache"
        )
        assert parsed.secret_as_env  # added to, not replaced


def test_train_runs_on_a_gpu_node_from_parameters(compiled):
    pipeline, spec, k8s = compiled
    resources = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    channel = "{{$.inputs.parameters['pipelinechannel--%s']}}"
    assert resources == {
        "accelerator": {
            "resourceType": channel % "gpu_type",
            "resourceCount": channel % "gpu_count",
        },
        "resourceCpuRequest": channel % "train_cpu",
        "resourceMemoryRequest": channel % "train_memory",
    }
    # Those placeholders resolve from the train task's inputs, fed by the pipeline's.
    inputs = spec.root.dag.tasks["train"].inputs.parameters
    for name in ("gpu_type", "gpu_count", "train_cpu", "train_memory"):
        assert inputs[f"pipelinechannel--{name}"].component_input_parameter == name
    defaults = spec.root.input_definitions.parameters
    assert defaults["gpu_type"].default_value.string_value == "nvidia.com/gpu"
    assert defaults["gpu_count"].default_value.number_value == 1

    train = k8s["train"]
    assert train.node_selector.node_selector_json.component_input_parameter == "node_selector"
    assert [t.toleration_json.component_input_parameter for t in train.tolerations] == [
        "tolerations"
    ]
    (shm,) = train.empty_dir_mounts
    assert (shm.mount_path, shm.medium, shm.size_limit) == ("/dev/shm", "Memory", "8Gi")

    retry = spec.root.dag.tasks["train"].retry_policy
    assert retry.max_retry_count == 3 and retry.backoff_duration.seconds == 60
    assert retry.backoff_factor == 2.0 and retry.backoff_max_duration.seconds == 1800
    for other in S3_STEPS - {"train"}:
        assert not k8s[other].HasField("node_selector") and not k8s[other].empty_dir_mounts
        assert not spec.root.dag.tasks[other].HasField("retry_policy")


def test_every_step_gets_s3_credentials_from_the_named_secret_only(compiled):
    pipeline, spec, k8s = compiled
    assert set(k8s) == S3_STEPS
    for step, config in k8s.items():
        # A step inside a condition (register) names the pipeline's parameter as its channel.
        secrets = {
            s.secret_name_parameter.component_input_parameter.removeprefix("pipelinechannel--"): s
            for s in config.secret_as_env
        }
        secret = secrets.pop("s3_secret_name")
        assert {(m.secret_key, m.env_var) for m in secret.key_to_env} == {
            (k, k) for k in S3_SECRET_KEYS
        }
        if step == "register":  # and the Model Registry's token, from its own Secret
            token = secrets.pop("model_registry_secret_name")
            assert [(m.secret_key, m.env_var) for m in token.key_to_env] == [
                ("MODEL_REGISTRY_TOKEN", "MODEL_REGISTRY_TOKEN")
            ]
            assert token.optional  # without it, the service account's token
        assert secrets == {}, step
    defaults = spec.root.input_definitions.parameters
    assert defaults["s3_secret_name"].default_value.string_value == "finetuner-s3"
    # No parameter can carry a credential, and no step sets one in its environment: the
    # train step's only variable names the image of its TrainJob's nodes (its own).
    assert not [p for p in defaults if "key" in p.lower() or "password" in p.lower()]
    for name, executor in pipeline["deploymentSpec"]["executors"].items():
        container = executor["container"]
        if name == "exec-train":
            assert container["env"] == [{"name": TRAINJOB_IMAGE_ENV, "value": container["image"]}]
        else:
            assert "env" not in container, name


def test_no_credential_reaches_the_compiled_yaml(tmp_path, monkeypatch):
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIATESTCOMPILE0001",
        "AWS_SECRET_ACCESS_KEY": "test-secret-7f3c9a1e-compile",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1/secret-endpoint",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    for path in compile_pipelines(tmp_path):
        text = path.read_text()
        for value in secrets.values():
            assert value not in text


def test_ui_descriptions_outputs_and_caching(compiled):
    pipeline, spec, _ = compiled
    parameters = spec.root.input_definitions.parameters
    undescribed = [name for name, p in parameters.items() if not p.description]
    assert undescribed == []
    assert "Kubernetes Secret" in parameters["s3_secret_name"].description
    evaluate = spec.components["comp-evaluate"].output_definitions.artifacts
    assert evaluate["metrics"].artifact_type.schema_title == "system.Metrics"
    assert evaluate["report"].artifact_type.schema_title == "system.HTML"
    promote = spec.components["comp-promote"].output_definitions.artifacts
    assert promote["promotion"].artifact_type.schema_title == "system.Metrics"
    tasks = spec.root.dag.tasks
    assert tasks["catalogue-lookup"].caching_options.enable_cache
    assert tasks["preprocess"].caching_options.enable_cache
    for step in ("claim-output", "train", "export", "promote"):
        assert not tasks[step].caching_options.enable_cache, step


def test_local_runs_do_not_retry():
    from finetuner.launch.local import without_retries
    from finetuner.pipelines.finetune import finetune

    def train_retries(pipeline):
        return pipeline.component_spec.implementation.graph.root.dag.tasks["train"].retry_policy

    assert train_retries(without_retries(finetune)).max_retry_count == 0
    assert train_retries(finetune).max_retry_count == 3  # the cluster's pipeline is untouched
