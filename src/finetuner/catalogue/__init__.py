"""The backbone catalogue: one name resolves to everything needed to build a model.

The rows are in rows.py, each naming its model family (finetuner.models.registry);
`lookup` validates a choice of backbone and options (options.py) and resolves its weights
(weights.py) into a ModelSpec.

This package must stay light (no torch, no transformers): `describe-models` and the
catalogue-lookup step import it, and both should answer in about a second.
"""

from __future__ import annotations

from finetuner.catalogue.rows import (
    CATALOGUE,
    PIPELINE_TASKS,
    TASKS,
    ModelEntry,
    describe_models,
    get_entry,
    names,
    register_entry,
)
from finetuner.errors import FinetunerError
from finetuner.models.registry import get_family
from finetuner.models.spec import COMMON_OPTIONS, ModelSpec

__all__ = [
    "CATALOGUE",
    "PIPELINE_TASKS",
    "TASKS",
    "ModelEntry",
    "ModelSpec",
    "describe_models",
    "get_entry",
    "lookup",
    "names",
    "register_entry",
]


def _choices(parameters: dict, model_options: dict) -> dict:
    """The pipeline's flat parameters with model_options; they must agree where both give one.

    A parameter that is None (auto: the model's own) is not given, so it is no error for a
    model that lacks it, and a group in model_options may set it; one given is checked
    against the model, even when it equals the model's default."""
    given = {k: v for k, v in parameters.items() if v is not None}
    for key in given.keys() & model_options.keys():
        if given[key] != model_options[key]:
            raise FinetunerError(
                f"parameter {key}: {given[key]!r} disagrees with model_options' "
                f"{key}={model_options[key]!r}; give one of them."
            )
    return {**given, **model_options}


def lookup(
    model: str,
    pooler: str | None = None,
    pooler_p: float | None = None,
    pooler_eps: float | None = None,
    max_length: int | None = None,
    model_options: dict | None = None,
    resolve_weights: bool = True,
    weights: str = "",
) -> ModelSpec:
    """Validate a backbone choice against the catalogue and resolve its weights source.

    model_options holds a family's own options (`finetuner list-model-options MODEL`);
    weights, a model folder to start from instead of the usual sources."""
    entry = get_entry(model)
    if entry.task not in PIPELINE_TASKS:
        trainable = [e.name for e in CATALOGUE if e.task in PIPELINE_TASKS]
        raise FinetunerError(
            f"{entry.name} ({entry.task}) is in the catalogue, but the finetune pipeline "
            f"trains only {', '.join(PIPELINE_TASKS)} models so far: {', '.join(trainable)}."
        )
    from finetuner.catalogue.options import validate_options

    choices = _choices(
        dict(pooler=pooler, pooler_p=pooler_p, pooler_eps=pooler_eps, max_length=max_length),
        model_options or {},
    )
    chosen = validate_options(entry, **choices)
    common = {k: getattr(chosen, k) for k in COMMON_OPTIONS if k in type(chosen).model_fields}
    # Only the options changed from their defaults, which the models fill in again: KFP
    # cannot hand over a None (output_dim's default) inside a dict parameter.
    options = chosen.flat_dump(exclude_defaults=True, exclude=COMMON_OPTIONS)
    # A projection head sets the dimension; else the entry's measured one, else the one
    # its options give (the MLP's last layer).
    head = getattr(chosen, "output_dim", None)
    output_dim = head or entry.output_dim or chosen.embedding_dim()
    if not output_dim:
        raise FinetunerError(
            f"{entry.name}: neither its catalogue row nor its options set output_dim."
        )
    source = ""
    if resolve_weights:
        from finetuner.catalogue.weights import resolve_source

        source = resolve_source(entry, weights=weights)
    family = get_family(entry.family)
    return ModelSpec(
        name=entry.name,
        upstream=entry.upstream,
        task=entry.task,
        family=entry.family,
        architecture=entry.architecture,
        output_dim=output_dim,
        builder=entry.builder,
        query_kind=family.query_kind,
        document_kind=family.document_kind,
        weights=source,
        options=options,
        **common,
    )
