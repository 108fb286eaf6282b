"""Compile the pipelines to KFP IR YAML, with the UI's dropdown choices added and the step
images set.

The compiled file holds two YAML documents: the PipelineSpec, then the PlatformSpec with
the Kubernetes settings (finetuner.orchestration.cluster)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from finetuner.errors import FinetunerError

PIPELINES = {
    "finetune": "finetuner.pipelines.finetune:finetune",
    "synthesize_and_finetune": (
        "finetuner.pipelines.synthesize_and_finetune:synthesize_and_finetune"
    ),
}


def choices() -> dict[str, list[str]]:
    """Parameters that the KFP UI shows as dropdowns, and their valid values: those whose
    type is a set of words (finetuner.parameters), and the names that the catalogue and
    the losses know, which that low layer cannot."""
    from typing import get_args

    from finetuner.catalogue import CATALOGUE, PIPELINE_TASKS
    from finetuner.models.text import TextOptions
    from finetuner.parameters import AUTO, RunParameters
    from finetuner.parameters.generate import literals
    from finetuner.training.losses import LOSSES

    return {
        **literals(RunParameters),
        "model": [entry.name for entry in CATALOGUE if entry.task in PIPELINE_TASKS],
        "pooler": [AUTO, *get_args(TextOptions.model_fields["pooler"].annotation)],
        "loss": [AUTO, *LOSSES],
        # synthesize_and_finetune's models of the synthesis
        "relation_miner": [entry.name for entry in CATALOGUE if entry.task == "text-to-text"],
        "cross_encoder": [entry.name for entry in CATALOGUE if entry.task == "synthesis"],
    }


def add_literals(spec: dict) -> dict:
    """Set `literals` on the root parameters with fixed choices.

    The UI renders these as dropdowns; the SDK cannot emit them yet, so they are added
    after compiling. catalogue-lookup still validates every value.
    """
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    for name, values in choices().items():
        if name in parameters:
            parameters[name]["literals"] = values
    return spec


def set_images(spec: dict, image: str | None = None, gpu_image: str | None = None) -> dict:
    """Point every executor at the given step images: the CPU image replaces IMAGE and the
    GPU image replaces GPU_IMAGE (components/__init__.py); None keeps a default."""
    from finetuner.components import GPU_IMAGE, IMAGE

    replace = {IMAGE: image or IMAGE, GPU_IMAGE: gpu_image or GPU_IMAGE}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        if container["image"] not in replace:
            raise FinetunerError(
                f"executor {name} uses image {container['image']}, not one of the step images "
                f"({IMAGE}, {GPU_IMAGE}); set its base_image from finetuner.components."
            )
        container["image"] = replace[container["image"]]
        for env in container.get("env", []):  # a step that names its image (a TrainJob's)
            if env.get("value") in replace:
                env["value"] = replace[env["value"]]
    return spec


MODEL_CACHE = "/models"  # the images' cache folder (HF_HOME, FINETUNER_CACHE, TORCH_HOME)


def add_model_cache(platform: dict, pvc: str) -> dict:
    """Mount the PersistentVolumeClaim `pvc` at the images' model cache in every step, so
    that weights are downloaded once per cluster, not once per step."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as pb

    mount = pb.PvcMount(mount_path=MODEL_CACHE)
    mount.pvc_name_parameter.runtime_value.constant.string_value = pvc
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for config in executors.values():
        config.setdefault("pvcMount", []).append(json_format.MessageToDict(mount))
    return platform


def check_pvc_name(pvc: str | None) -> None:
    # A DNS-1123 subdomain, as Kubernetes names a PersistentVolumeClaim.
    if pvc is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", pvc):
        raise FinetunerError(
            f"--model-cache-pvc: {pvc!r} is not a PersistentVolumeClaim name (lowercase "
            "letters, digits, '-' and '.'), e.g. finetuner-model-cache."
        )


def check_image(flag: str, image: str | None) -> None:
    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        raise FinetunerError(
            f"{flag}: {image!r} is not an image reference, e.g. REGISTRY/NAME:TAG."
        )


def compile_pipeline(func, path: Path, image=None, gpu_image=None, model_cache_pvc=None) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(func, str(path))
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    spec, *platform = yaml.safe_load_all(path.read_text())
    spec = set_images(add_literals(spec), image, gpu_image)
    if model_cache_pvc:
        platform = [add_model_cache(platform[0], model_cache_pvc)]
    path.write_text(
        header
        + yaml.safe_dump_all([spec, *platform], sort_keys=True, explicit_start=bool(platform))
    )
    return path


def compile_pipelines(
    output_dir: str | Path,
    image: str | None = None,
    gpu_image: str | None = None,
    model_cache_pvc: str | None = None,
) -> list[Path]:
    """Compile every pipeline into output_dir; `image` and `gpu_image` replace the default
    step images (CPU steps, and the GPU train step); `model_cache_pvc` mounts that claim at
    every step's model cache."""
    import importlib

    check_image("--image", image)
    check_image("--gpu-image", gpu_image)
    check_pvc_name(model_cache_pvc)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FinetunerError(
            f"--output-dir: cannot create {output_dir} ({exc.strerror})."
        ) from None
    written = []
    for name, ref in PIPELINES.items():
        module, attr = ref.split(":")
        func = getattr(importlib.import_module(module), attr)
        path = output_dir / f"{name}.yaml"
        written.append(compile_pipeline(func, path, image, gpu_image, model_cache_pvc))
    return written
