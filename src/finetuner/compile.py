"""Compile the pipelines to KFP IR YAML, with the UI's dropdown choices added."""

from __future__ import annotations

from pathlib import Path

import yaml

PIPELINES = {
    "finetune": "finetuner.pipelines.finetune:finetune",
    "synthesize_and_finetune": (
        "finetuner.pipelines.synthesize_and_finetune:synthesize_and_finetune"
    ),
}


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
        # synthesize_and_finetune's models of the synthesis
        "relation_miner": [entry.name for entry in CATALOGUE if entry.task == "text-to-text"],
        "cross_encoder": [entry.name for entry in CATALOGUE if entry.family == "cross-encoder"],
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


def compile_pipeline(func, path: Path) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(func, str(path))
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    spec = add_literals(yaml.safe_load(path.read_text()))
    path.write_text(header + yaml.safe_dump(spec, sort_keys=True))
    return path


def compile_pipelines(output_dir: str | Path) -> list[Path]:
    import importlib

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ref in PIPELINES.items():
        module, attr = ref.split(":")
        func = getattr(importlib.import_module(module), attr)
        written.append(compile_pipeline(func, output_dir / f"{name}.yaml"))
    return written
