"""Record an export as a version in Kubeflow Model Registry (the pipeline's `register` step).

A version holds one model artifact, the export folder: that is what `finetuner serve` loads,
and what KServe's `model-registry://NAME/VERSION` storage URI resolves to. The version's
custom properties say where it came from: the catalogue model, the KFP run, the training data
with their sha256, the metrics before and after training, and the promotion decision.

The version is named after the KFP run, so a retried step finds the version it registered
before and completes it instead of failing or registering twice.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlparse

from finetuner.errors import FinetunerError

# The Secret's key, set as this environment variable; without it the client reads the pod's
# service-account token, which is what an in-cluster registry behind RBAC accepts.
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
AUTHOR = "finetuner"
# Attempts at a whole registration when the server is unreachable or answers 5xx; every
# attempt first looks for what an earlier one created, so none registers twice.
ATTEMPTS = 4
BACKOFF_S = 1.0
PREFIX = "finetuner."


class RegistryFault(FinetunerError):
    """The registry is unreachable or failed: not the user's input, so exit status 1."""

    exit_status = 1


def enabled(url: str, name: str) -> bool:
    """Whether a run registers its export; fails on one of the two settings without the
    other, or on a URL the client cannot use."""
    if not url and not name:
        return False
    if not name:
        raise FinetunerError(
            "parameter registered_model_name: model_registry_url is set, so name the "
            "registered model too (or leave both empty to register nothing)."
        )
    if not url:
        raise FinetunerError(
            "parameter model_registry_url: registered_model_name is set, so give the Model "
            "Registry's REST address too, e.g. http://model-registry-service.kubeflow:8080."
        )
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FinetunerError(
            f"parameter model_registry_url: {url!r} is not an http:// or https:// address, "
            "e.g. https://model-registry-service.kubeflow:8443."
        )
    return True


def check_registry(url: str, name: str) -> None:
    """Before training: the settings agree and the registry answers, so that a run does not
    train for hours to fail at its last step."""
    if not enabled(url, name):
        return
    try:
        connect(url)  # the client lists one registered model on connecting
    except Exception as e:  # noqa: BLE001 - every fault of the client becomes one message
        if getattr(e, "status", None) in (401, 403):
            raise FinetunerError(f"Model Registry at {url}: {_describe(e, url)}") from e
        raise RegistryFault(f"Model Registry at {url}: {_describe(e, url)}") from e


def connect(url: str):
    """A Model Registry client for `url` (http://host[:port] or https://...), with the token of
    TOKEN_ENV when it is set."""
    import logging
    import warnings

    from model_registry import ModelRegistry

    parsed = urlparse(url)
    address = f"{parsed.scheme}://{parsed.hostname}"
    with warnings.catch_warnings():
        # Without a token the client warns; a registry without auth is a valid setup.
        warnings.simplefilter("ignore", UserWarning)
        return ModelRegistry(
            address,
            parsed.port,
            author=AUTHOR,
            user_token=os.environ.get(TOKEN_ENV) or None,
            log_level=logging.ERROR,
        )


def version_properties(
    model: str,
    export_uri: str,
    formats: list[str],
    metrics: dict,
    promotion: dict | None,
    sources: dict,
    run_id: str,
) -> dict[str, str | int | float | bool]:
    """The version's custom properties: flat, and only the types the registry stores."""
    props: dict[str, str | int | float | bool] = {
        f"{PREFIX}model": model,
        f"{PREFIX}export_uri": export_uri,
        f"{PREFIX}formats": ",".join(formats),
        f"{PREFIX}kfp_run_id": run_id,
    }
    for when in ("before", "after"):
        for name, value in sorted((metrics.get(when) or {}).items()):
            props[f"{PREFIX}metric.{when}.{name}"] = float(value)
    for name, source in sorted(sources.items()):
        props[f"{PREFIX}data.{name}.uri"] = source["uri"]
        props[f"{PREFIX}data.{name}.sha256"] = source["sha256"]
    if promotion is not None:
        props[f"{PREFIX}promoted"] = bool(promotion["promoted"])
        props[f"{PREFIX}promotion_reason"] = str(promotion["reason"])
        if promotion.get("latest"):
            props[f"{PREFIX}promoted_to"] = str(promotion["latest"])
    return props


def formats_of(manifest: dict) -> list[str]:
    """The export's formats, the artifact's format first: ONNX when the export has it (what
    KServe's ONNX runtime serves), else the safetensors weights."""
    paths = [f["path"] for f in manifest["files"]]
    return [
        *(["onnx"] if manifest.get("onnx") else []),
        *(["safetensors"] if any(p.endswith(".safetensors") for p in paths) else []),
    ]


def register(
    url: str,
    name: str,
    version: str,
    export_uri: str,
    manifest: dict,
    metrics: dict,
    promotion: dict | None,
    sources: dict,
    run_id: str,
) -> dict:
    """Record the export as version `version` of registered model `name`; what was recorded.
    Retries a transient fault; a version of that name from another export is an error."""
    formats = formats_of(manifest)
    props = version_properties(
        manifest["model"], export_uri, formats, metrics, promotion, sources, run_id
    )
    after = metrics.get("after") or {}
    headline = next((k for k in after if k.startswith("ndcg@")), None) or next(iter(after), "")
    before = (metrics.get("before") or {}).get(headline)
    description = f"{manifest['model']} fine-tuned by run {run_id}"
    if headline and before is not None:
        description += f": {headline} {before:.4f} -> {after[headline]:.4f}"
    artifact = {
        "uri": export_uri,
        "model_format_name": formats[0] if formats else "pytorch",
        "model_format_version": "1",
    }
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _register_once(url, name, version, artifact, props, description)
        except FinetunerError:
            raise
        except Exception as e:  # noqa: BLE001 - sorted into transient and not below
            reason = _describe(e, url)
            if getattr(e, "status", None) in (401, 403):
                raise FinetunerError(f"Model Registry at {url}: {reason}") from e
            if not _transient(e) or attempt == ATTEMPTS:
                raise RegistryFault(f"Model Registry at {url}: {reason}") from e
            print(f"register: {reason}; retrying ({attempt}/{ATTEMPTS - 1})", flush=True)
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _register_once(url, name, version, artifact, props, description) -> dict:
    from model_registry.types import ModelArtifact

    registry = connect(url)
    existing = None
    if registry.get_registered_model(name) is not None:
        existing = registry.get_model_version(name, version)
    if existing is None:
        registry.register_model(
            name,
            artifact["uri"],
            model_format_name=artifact["model_format_name"],
            model_format_version=artifact["model_format_version"],
            version=version,
            version_description=description,
            metadata=props,
        )
    elif existing.custom_properties.get(f"{PREFIX}export_uri") != artifact["uri"]:
        raise FinetunerError(
            f"Model Registry at {url}: {name} already has a version {version!r}, of "
            f"{existing.custom_properties.get(f'{PREFIX}export_uri', 'another model')!r}; "
            "a version name is registered once."
        )
    elif registry.get_model_artifact(name, version) is None:
        # An earlier attempt created the version but not its artifact: complete it.
        registry.async_runner(
            registry._api.upsert_model_version_artifact(
                ModelArtifact(name=name, **artifact), existing.id
            )
        )
    recorded = registry.get_model_version(name, version)
    return {
        "registered_model": name,
        "version": version,
        "version_id": recorded.id,
        "uri": artifact["uri"],
        "storage_uri": f"model-registry://{name}/{version}",
    }


def _transient(e: Exception) -> bool:
    """Connection faults and 5xx answers may pass; 4xx answers will not."""
    status = getattr(e, "status", None)
    if status is not None:
        return status >= 500
    import aiohttp

    return isinstance(e, (aiohttp.ClientConnectionError, TimeoutError, ConnectionError))


def _describe(e: Exception, url: str) -> str:
    status = getattr(e, "status", None)
    if status in (401, 403):
        return (
            f"the server refused the credentials ({status}); put a token the registry accepts "
            f"in the Secret's {TOKEN_ENV} (model_registry_secret_name), or give the step's "
            "service account access."
        )
    if status is not None:
        body = (getattr(e, "body", None) or getattr(e, "reason", "") or "").strip()
        return f"the server answered {status}: {body[:300]}"
    return f"cannot reach the server ({type(e).__name__}: {e})"
