"""Model families of the catalogue, behind one interface.

A model object has `spec`, `embedder` (the nn.Module that is trained and exported),
`embed(items, device, buckets)` for training, `encode(items, batch_size)` for inference,
`save(folder)`, and `onnx_spec()` for export; `pretrained(spec)` and `load(folder)` make one.
"""

from __future__ import annotations

from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.models.folder import read_spec
from finetuner.models.text import TextModel

__all__ = ["TextModel", "family_class", "load", "pretrained"]


def family_class(family: str):
    if family == "text":
        return TextModel
    if family == "cnn":
        from finetuner.models.image import ImageModel

        return ImageModel
    if family == "mlp":
        from finetuner.models.vector import VectorModel

        return VectorModel
    if family == "pointnet":
        from finetuner.models.points import PointCloudModel

        return PointCloudModel
    raise FinetunerError(f"model family '{family}' cannot be trained by the pipeline yet.")


def pretrained(spec):
    """The pretrained model of a ModelSpec (catalogue-lookup's output)."""
    return family_class(spec.family).pretrained(spec)


def load(folder: str | Path):
    """A model saved by `save` (a train step's output or an export's model/ folder)."""
    return family_class(read_spec(folder).family).load(folder)
