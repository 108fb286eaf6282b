"""Model families of the catalogue, behind one interface.

A model object has `spec`, `embedder` (the nn.Module that is trained and exported),
`embed(items, device, buckets)` for training, `encode(items, batch_size)` for inference,
`save(folder)`, and `onnx_spec()` for export; `pretrained(spec)` and `load(folder)` make one.

A two-tower model (CLIP) embeds queries and documents with different modules: its
`sides()` gives the two, each with `embed` and `encode`, and `towers()` what is exported.
"""

from __future__ import annotations

from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.models.folder import read_spec
from finetuner.models.text import TextModel

__all__ = ["TextModel", "family_class", "load", "pretrained", "sides"]


def family_class(family: str):
    if family == "text":
        return TextModel
    if family == "cnn":
        from finetuner.models.image import ImageModel

        return ImageModel
    if family == "mlp":
        from finetuner.models.vector import VectorModel

        return VectorModel
    if family == "clip":
        from finetuner.models.text_image import TextImageModel

        return TextImageModel
    if family == "pointnet":
        from finetuner.models.points import PointCloudModel

        return PointCloudModel
    raise FinetunerError(f"model family '{family}' cannot be trained by the pipeline yet.")


def pretrained(spec):
    """The pretrained model of a ModelSpec (catalogue-lookup's output): the fine-tuned
    model of an earlier export when training continues from one (`spec.artifact`)."""
    if spec.artifact:
        from finetuner import storage

        model = load(storage.local_copy(spec.artifact))
        model.spec = spec  # this run's max_length
        return model
    return family_class(spec.family).pretrained(spec)


def load(folder: str | Path):
    """A model saved by `save` (a train step's output or an export's model/ folder)."""
    return family_class(read_spec(folder).family).load(folder)


def sides(model) -> tuple:
    """What embeds the queries and what embeds the documents: the model itself, twice,
    unless it has two towers."""
    return model.sides() if hasattr(model, "sides") else (model, model)
