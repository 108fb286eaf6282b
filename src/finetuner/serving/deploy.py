"""`finetuner deploy`: the KServe InferenceService that serves an export with `finetuner
serve` in our image, and the ServiceAccount that hands KServe's storage initializer the S3
Secret. Both are checked offline before they are written: the InferenceService against
KServe's own models of its CRD (`kserve.models`, generated from its OpenAPI schema), and
every Kubernetes object, the predictor's container among them, with kubernetes-validate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.serving.server import DEFAULT_PORT

DEFAULT_IMAGE = "ghcr.io/finetuner-kfp/finetuner:0.1.0"
DEFAULT_SECRET = "finetuner-s3"
DEFAULT_CPU = "2"
DEFAULT_MEMORY = "4Gi"
# Where KServe's storage initializer puts the files of STORAGE_URI in a custom container.
MODEL_DIR = "/mnt/models"
MODEL_REGISTRY = "model-registry://"
KUBERNETES_VERSION = "1.30"
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


@dataclass
class Deployment:
    uri: str
    name: str
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    service_account: str | None = None
    s3_secret: str = DEFAULT_SECRET
    cpu: str = DEFAULT_CPU
    memory: str = DEFAULT_MEMORY
    serve_flags: list[str] = field(default_factory=list)


def _check_name(value: str, what: str, limit: int = 63) -> None:
    # An InferenceService's name becomes a DNS label of its Knative service and host name.
    if not DNS_LABEL.fullmatch(value) or len(value) > limit:
        raise FinetunerError(
            f"{what} {value!r}: valid names are lowercase letters, digits and '-', starting "
            f"with a letter, ending with a letter or digit, at most {limit} characters."
        )


def _check(d: Deployment) -> None:
    if d.uri.startswith(MODEL_REGISTRY):
        # A version in Kubeflow Model Registry, resolved by its storage initializer.
        if not re.fullmatch(rf"{MODEL_REGISTRY}[^/]+/[^/]+", d.uri):
            raise FinetunerError(
                f"{d.uri}: expected {MODEL_REGISTRY}NAME/VERSION, as the register step prints."
            )
        return _check_names_and_resources(d)
    storage.check_uri(d.uri, "uri", need_key=False)
    if not storage.is_s3(d.uri):
        raise FinetunerError(
            f"{d.uri}: a cluster reads the export from object storage; expected "
            f"s3://bucket/prefix or {MODEL_REGISTRY}NAME/VERSION."
        )
    _check_names_and_resources(d)


def _check_names_and_resources(d: Deployment) -> None:
    # KServe appends "-predictor" and more to the name: 45 keeps the derived names legal.
    _check_name(d.name, "--name", 45)
    for value, what in ((d.namespace, "--namespace"), (d.service_account, "--service-account")):
        if value is not None:
            _check_name(value, what)
    _check_name(d.s3_secret, "--s3-secret", 253)
    for value, what in ((d.cpu, "--cpu"), (d.memory, "--memory")):
        if not QUANTITY.fullmatch(value):
            raise FinetunerError(
                f"{what} {value!r} is not a Kubernetes quantity, e.g. 2, 500m, 4Gi."
            )


def manifests(d: Deployment) -> list[dict]:
    """[ServiceAccount, InferenceService], checked."""
    _check(d)
    account = d.service_account or f"{d.name}-s3"
    labels = {"app.kubernetes.io/part-of": "finetuner"}
    metadata = {"name": d.name, "labels": labels}
    if d.namespace:
        metadata["namespace"] = d.namespace
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {**metadata, "name": account},
        # KServe's storage initializer takes the S3 keys from the Secrets listed here.
        "secrets": [{"name": d.s3_secret}],
        "automountServiceAccountToken": False,
    }
    probe = {"httpGet": {"path": "/v2/health/ready", "port": DEFAULT_PORT}}
    container = {
        "name": "kserve-container",
        "image": d.image,
        "command": ["finetuner", "serve", MODEL_DIR],
        # In a pod the server listens on every address (the cluster routes to it).
        "args": [
            "--host",
            "0.0.0.0",
            "--port",
            str(DEFAULT_PORT),
            "--name",
            d.name,
            *d.serve_flags,
        ],  # fmt: skip
        # KServe downloads STORAGE_URI into /mnt/models before the container starts.
        "env": [{"name": "STORAGE_URI", "value": d.uri}],
        "ports": [{"containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": d.cpu, "memory": d.memory},
            "limits": {"cpu": d.cpu, "memory": d.memory},
        },
        "readinessProbe": {**probe, "periodSeconds": 10},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": DEFAULT_PORT},
            "initialDelaySeconds": 30,
            "periodSeconds": 30,
        },
    }
    inference_service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": {"serviceAccountName": account, "containers": [container]}},
    }
    result = [service_account, inference_service]
    validate(result)
    return result


def validate(objects: list[dict]) -> None:
    """Raise FinetunerError unless each object is valid: InferenceServices by KServe's
    models, everything of Kubernetes' own by kubernetes-validate (strict: no unknown field)."""
    for obj in objects:
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if obj.get("kind") == "InferenceService":
            check_model(obj, "V1beta1InferenceService", where)
            for container in obj["spec"]["predictor"].get("containers", []):
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}}
                _kubernetes(pod | {"spec": {"containers": [container]}}, where)
        else:
            _kubernetes(obj, where)


def _kubernetes(obj: dict, where: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        raise FinetunerError(f"{where}: {path}: {error.message}") from None


PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def _model_class(name: str):
    import kserve.models
    import kubernetes.client.models

    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name)


def check_model(value, type_name: str, where: str) -> None:
    """Check a manifest's value against a type of KServe's (or Kubernetes') generated
    models: known fields only, the declared types, the required fields present."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            raise FinetunerError(f"{where}: expected a list, got {value!r}")
        for i, item in enumerate(value):
            check_model(item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            raise FinetunerError(f"{where}: expected a mapping, got {value!r}")
        inner = type_name[5:-1].split(",", 1)[1].strip()
        for key, item in value.items():
            check_model(item, inner, f"{where}.{key}")
        return
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (
            type_name != "bool" and isinstance(value, bool)
        ):
            raise FinetunerError(f"{where}: expected {type_name}, got {value!r}")
        return
    klass = _model_class(type_name)
    if not isinstance(value, dict):
        raise FinetunerError(f"{where}: expected a mapping ({type_name}), got {value!r}")
    fields = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            raise FinetunerError(
                f"{where}: unknown field {key!r} of {type_name}; valid: {', '.join(fields)}"
            )
        check_model(item, klass.openapi_types[fields[key]], f"{where}.{key}")
    try:  # the generated setters refuse a missing required field
        klass(**{fields[key]: item for key, item in value.items()})
    except ValueError as error:
        raise FinetunerError(f"{where}: {error}") from None


def write_manifests(d: Deployment, output: str | None) -> str | None:
    """The manifests as one YAML stream, to `output` (never overwriting) or stdout."""
    import sys

    import yaml

    text = yaml.safe_dump_all(manifests(d), sort_keys=False)
    if output is None:
        sys.stdout.write(text)
        return None
    storage.check_uri(output, "output", need_key=False)
    if storage.exists(output):
        raise FinetunerError(f"--output {output} exists; deploy overwrites nothing.")
    storage.write_text(output, text)
    return output
