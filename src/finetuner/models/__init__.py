"""Model families of the catalogue, behind one interface.

Each family registers itself (finetuner.models.registry) from a light module of its own:
text, cnn, clip, pointnet, mlp, cross_encoder; its nn.Modules are in the paired `*_net.py`.

A model object has `spec`, `embedder` (the nn.Module that is trained and exported),
`embed(items, device, buckets)` for training, `encode(items, batch_size)` for inference,
`save(folder)`, and `onnx_spec()` for export; `pretrained(spec)` and `load(folder)` make one.

A two-tower model (CLIP) embeds queries and documents with different modules: its
`sides()` gives the two, each with `embed` and `encode`, and `towers()` what is exported.
"""

from __future__ import annotations

from pathlib import Path

# The built-in families register on import; they are light (no torch).
from finetuner.models import clip, cnn, cross_encoder, mlp, pointnet, text  # noqa: F401
from finetuner.models.registry import get_family

__all__ = ["TextModel", "family_class", "load", "pretrained", "sides"]


def __getattr__(name: str):
    if name == "TextModel":  # loaded on use: it imports torch and transformers
        from finetuner.models.text_net import TextModel

        return TextModel
    raise AttributeError(f"module 'finetuner.models' has no attribute {name!r}")


def family_class(family: str):
    """The model object class of a registered family."""
    return get_family(family).model_class()


def pretrained(spec):
    """The pretrained model of a ModelSpec (catalogue-lookup's output): the fine-tuned
    model of an earlier export when training continues from one (`spec.artifact`)."""
    if spec.artifact:
        from finetuner.io import storage

        model = load(storage.local_copy(spec.artifact))
        model.spec = spec  # this run's max_length
        return model
    return family_class(spec.family).pretrained(spec)


def load(folder: str | Path):
    """A model saved by `save` (a train step's output or an export's model/ folder)."""
    from finetuner.models.folder import read_spec

    return family_class(read_spec(folder).family).load(folder)


def sides(model) -> tuple:
    """What embeds the queries and what embeds the documents: the model itself, twice,
    unless it has two towers."""
    return model.sides() if hasattr(model, "sides") else (model, model)
