"""The run parameters, declared once (pydantic models), and what is made from them: the
pipelines' signatures and docstrings, the CLI flags, `finetuner.fit`'s keywords, the UI's
dropdowns and the README's table.

A low layer: it imports only finetuner.errors, pydantic and the standard library."""

from finetuner.parameters.base import AUTO, NONE, Parameters, param, valid_text
from finetuner.parameters.declared import DEFAULT_MODEL, RunParameters, TrainOptions
from finetuner.parameters.pipelines import (
    PIPELINES,
    STRUCT_OPTIONS,
    Finetune,
    SynthesizeAndFinetune,
    struct_options,
    training_options,
)

__all__ = [
    "AUTO",
    "DEFAULT_MODEL",
    "NONE",
    "PIPELINES",
    "STRUCT_OPTIONS",
    "Finetune",
    "Parameters",
    "RunParameters",
    "SynthesizeAndFinetune",
    "TrainOptions",
    "param",
    "struct_options",
    "training_options",
    "valid_text",
]
