"""Compile the pipelines to KFP IR YAML, with the UI's dropdown choices added and the step
images set.

The compiled file holds two YAML documents: the PipelineSpec, then the PlatformSpec with
the Kubernetes settings (finetuner.cluster)."""

from __future__ import annotations

from pathlib import Path

import yaml

from finetuner.errors import FinetunerError

PIPELINES = {"finetune": "finetuner.pipelines.finetune:finetune"}


def choices() -> dict[str, list[str]]:
    """Parameters that the KFP UI shows as dropdowns, and their valid values."""
    from typing import get_args

    from finetuner.catalogue import CATALOGUE, PIPELINE_TASKS
    from finetuner.losses import LOSSES
    from finetuner.options import TextOptions
    from finetuner.samplers import SAMPLERS

    return {
        "model": [entry.name for entry in CATALOGUE if entry.task in PIPELINE_TASKS],
        "pooler": list(get_args(TextOptions.model_fields["pooler"].annotation)),
        "loss": list(LOSSES),
        "sampler": list(SAMPLERS),
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
    return spec


def check_image(flag: str, image: str | None) -> None:
    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        raise FinetunerError(
            f"{flag}: {image!r} is not an image reference, e.g. REGISTRY/NAME:TAG."
        )


def compile_pipeline(func, path: Path, image=None, gpu_image=None) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(func, str(path))
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    spec, *platform = yaml.safe_load_all(path.read_text())
    spec = set_images(add_literals(spec), image, gpu_image)
    path.write_text(
        header
        + yaml.safe_dump_all([spec, *platform], sort_keys=True, explicit_start=bool(platform))
    )
    return path


def compile_pipelines(
    output_dir: str | Path, image: str | None = None, gpu_image: str | None = None
) -> list[Path]:
    """Compile every pipeline into output_dir; `image` and `gpu_image` replace the default
    step images (CPU steps, and the GPU train step)."""
    import importlib

    check_image("--image", image)
    check_image("--gpu-image", gpu_image)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ref in PIPELINES.items():
        module, attr = ref.split(":")
        func = getattr(importlib.import_module(module), attr)
        written.append(compile_pipeline(func, output_dir / f"{name}.yaml", image, gpu_image))
    return written
