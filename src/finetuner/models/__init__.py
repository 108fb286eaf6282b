"""Model families of the catalogue, behind one interface.

A model object has `spec`, `embedder` (the nn.Module that is trained and exported),
`embed(items, device, buckets)` for training, `encode(items, batch_size)` for inference,
`save(folder)`, and `onnx_spec()` for export; `pretrained(spec)` and `load(folder)` make one.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.models.text import CONFIG_FILE, TextModel

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
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return family_class(config["spec"].get("family", "text")).load(folder)
