"""The Kubernetes manifests: every resource valid against the Kubernetes schemas (strict,
offline), every kustomization complete, and the pieces agreeing with each other and with
the pipeline (Secret name and keys, launcher config, the example schedule's arguments)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from finetuner.launch import submit
from finetuner.orchestration.cluster import S3_SECRET_KEYS
from finetuner.parameters import RunParameters

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
KUBERNETES = "1.32.0"
KUSTOMIZATIONS = sorted(MANIFESTS.rglob("kustomization.yaml"))
RESOURCE_FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in RESOURCE_FILES for d in documents(p) if d["kind"] == kind]


@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_resources_validate_strictly(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_strict_validation_catches_mistakes():
    (_, secret), *_ = resources("Secret")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**secret, "stringdata": {}}, KUBERNETES, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**secret, "type": 3}, KUBERNETES, strict=True)


def test_kustomizations_list_files_that_exist_and_every_file_is_listed():
    listed = set()
    for kustomization in KUSTOMIZATIONS:
        spec = yaml.safe_load(kustomization.read_text())
        assert spec["apiVersion"].startswith("kustomize.config.k8s.io/")
        assert spec["kind"] in ("Kustomization", "Component")
        entries = [*spec.get("resources", []), *spec.get("components", [])]
        entries += [patch["path"] for patch in spec.get("patches", [])]
        assert entries, kustomization
        for entry in entries:
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{kustomization}: {entry}"
            listed.add(target)
    orphans = [p.relative_to(MANIFESTS) for p in RESOURCE_FILES if p.resolve() not in listed]
    assert orphans == []


def test_patches_name_a_resource_of_their_base():
    for kustomization in KUSTOMIZATIONS:
        spec = yaml.safe_load(kustomization.read_text())
        base = {
            (d["kind"], d["metadata"]["name"])
            for entry in spec.get("resources", [])
            if (kustomization.parent / entry).is_dir()
            for sub in yaml.safe_load(
                (kustomization.parent / entry / "kustomization.yaml").read_text()
            )["resources"]  # fmt: skip
            for d in documents(kustomization.parent / entry / sub)
        }
        for patch in spec.get("patches", []):
            (doc,) = documents(kustomization.parent / patch["path"])
            assert (doc["kind"], doc["metadata"]["name"]) in base, patch


def test_secret_templates_hold_placeholders_for_the_pipelines_secret():
    secrets = resources("Secret")
    assert len(secrets) >= 2  # base and the in-cluster overlay
    for path, secret in secrets:
        assert secret["metadata"]["name"] == RunParameters.model_fields["s3_secret_name"].default
        values = secret["stringData"]
        assert set(values) == set(S3_SECRET_KEYS), path
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert values[key].startswith("REPLACE-WITH-"), (path, key)


def test_launcher_configs_read_the_same_secret():
    configs = [(p, d) for p, d in resources("ConfigMap") if d["metadata"]["name"] == "kfp-launcher"]
    assert len(configs) == 3  # base and two overlays
    for path, config in configs:
        assert config["data"]["defaultPipelineRoot"].startswith("s3://"), path
        default = yaml.safe_load(config["data"]["providers"])["s3"]["default"]
        assert default["endpoint"] and isinstance(default["disableSSL"], bool), path
        ref = default["credentials"]["secretRef"]
        assert default["credentials"]["fromEnv"] is False
        assert ref["secretName"] == RunParameters.model_fields["s3_secret_name"].default
        assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(S3_SECRET_KEYS)


def test_the_model_cache_claim_is_shared_across_nodes():
    ((_, pvc),) = resources("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "finetuner-model-cache"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_example_schedule_is_a_valid_finetuner_schedule():
    ((_, job),) = resources("Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["finetuner", "schedule"]
    flags = dict(a[2:].split("=", 1) for a in container["args"] if a.startswith("--"))
    params = [a for a in container["args"] if not a.startswith("--")]
    assert submit.check_cron(flags["cron"]) == "0 0 3 * * *"
    arguments = submit.parse_arguments(
        params, submit.pipeline_parameters(submit.default_pipeline())
    )
    assert arguments["promote"] is True and arguments["epochs"] == "3"
    assert "{run_id}" in arguments["output_uri"]
    # The token it sends: its service account's, for KFP's audience, mounted where it reads.
    (token,) = [v for v in pod["volumes"] if "projected" in v]
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "pipelines.kubeflow.org"
    mount = next(m for m in container["volumeMounts"] if m["name"] == token["name"])
    assert flags["token-file"] == f"{mount['mountPath']}/{source['path']}"
    ((_, account),) = resources("ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    # It schedules the pipeline that its init container compiles against the step images.
    (compile_step,) = pod["initContainers"]
    assert compile_step["command"] == ["finetuner", "compile"]
    compile_flags = dict(a[2:].split("=", 1) for a in compile_step["args"])
    assert flags["pipeline"] == f"{compile_flags['output-dir']}/finetune.yaml"
    assert {"image", "gpu-image"} <= set(compile_flags)
    shared = {m["name"] for m in compile_step["volumeMounts"]}
    assert shared & {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
    bindings = {d["metadata"]["name"]: d for _, d in resources("RoleBinding")}
    binding = bindings["finetuner-kfp-client"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "finetuner"}]


def test_the_train_step_may_drive_its_trainjob():
    """The RBAC of the train step across nodes: its TrainJob, the pods and log it follows,
    and the runtimes that the Kubeflow SDK reads."""
    roles = {d["metadata"]["name"]: d for _, d in resources("Role")}
    granted = {
        (resource, verb)
        for rule in roles["finetuner-trainjob"]["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("create", "get", "watch", "delete"):
        assert ("trainjobs", verb) in granted
    assert {("pods", "list"), ("pods/log", "get"), ("trainingruntimes", "get")} <= granted
    bindings = {d["metadata"]["name"]: d for _, d in resources("RoleBinding")}
    assert bindings["finetuner-trainjob"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "finetuner"}
    ]
    ((_, cluster_role),) = resources("ClusterRole")
    assert cluster_role["rules"][0]["resources"] == ["clustertrainingruntimes"]
    ((_, cluster_binding),) = resources("ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
