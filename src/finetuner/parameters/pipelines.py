"""Which parameters each pipeline takes: subsets of the declared ones (RunParameters)."""

from __future__ import annotations

from pydantic import create_model

from finetuner.parameters.base import Parameters
from finetuner.parameters.declared import (
    ClusterParameters,
    DataParameters,
    ModelParameters,
    OutputParameters,
    RunParameters,
    SynthesisParameters,
    TrainOptions,
)


def subset(name: str, names) -> type[Parameters]:
    """A model of the named parameters, declared as in RunParameters."""
    fields = RunParameters.model_fields
    return create_model(
        name, __base__=Parameters, **{n: (fields[n].annotation, fields[n]) for n in names}
    )


def _all(*groups) -> list[str]:
    return [name for group in groups for name in group.model_fields]


Finetune = subset(
    "Finetune",
    _all(DataParameters, ModelParameters, TrainOptions, OutputParameters, ClusterParameters),
)

# The synthesized rows train with MarginMSELoss and random batches, and the training
# options not named here keep their defaults.
SYNTHESIZE_AND_FINETUNE_TRAINING = (
    "epochs", "batch_size", "learning_rate", "checkpoint_every", "eval_k", "seed",
)  # fmt: skip
SynthesizeAndFinetune = subset(
    "SynthesizeAndFinetune",
    [
        *SynthesisParameters.model_fields,
        "data_options",
        "val_split",
        "model",
        "pooler",
        "max_length",
        "model_options",
        "weights",
        *SYNTHESIZE_AND_FINETUNE_TRAINING,
        "output_uri",
        "force_claim",
        "claim_id",
        "model_registry_url",
        "registered_model_name",
        "int8",
        "int8_max_drop",
        *ClusterParameters.model_fields,
    ],
)

PIPELINES = {"finetune": Finetune, "synthesize_and_finetune": SynthesizeAndFinetune}


# The training options that are JSON objects. The train step takes each as an input of its
# own: kfp.local writes a dict nested in a dict of pipeline channels into the step's input
# as unescaped JSON text, which breaks it.
STRUCT_OPTIONS = tuple(n for n, f in TrainOptions.model_fields.items() if f.annotation is dict)


def training_options(params: dict) -> dict:
    """The train step's options among a pipeline's parameters (values or channels), but
    for STRUCT_OPTIONS."""
    return {
        name: params[name]
        for name in TrainOptions.model_fields
        if name in params and name not in STRUCT_OPTIONS
    }


def struct_options(params: dict) -> dict:
    """The STRUCT_OPTIONS, each an input of the train step: a pipeline's parameter, or the
    default where the pipeline has none."""
    fields = TrainOptions.model_fields
    return {name: params.get(name, fields[name].get_default()) for name in STRUCT_OPTIONS}
