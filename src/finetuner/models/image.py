"""Image embedding models: a catalogue CNN with its preprocessing, fed by image URIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finetuner import media
from finetuner.catalogue import ModelSpec
from finetuner.models import vision
from finetuner.models.folder import WEIGHTS_FILE, load_weights, read_spec, save
from finetuner.options import CNNOptions


def load_image(uri: str):
    """An RGB PIL image from a local path, s3:// or http(s):// URI, through the media cache
    and within the default MediaLimits; a bad file raises BadItem naming itself."""
    return media.load_image(uri)


def cnn_options(spec: ModelSpec) -> CNNOptions:
    # Re-validated: KFP hands dict parameters over as JSON numbers, ints as floats.
    return CNNOptions(**spec.options)


def image_transform(spec: ModelSpec):
    """The eval preprocessing of a spec: its weights' own, at its image_size if set."""
    return vision.image_transform(spec.name, cnn_options(spec).image_size)


class ImageModel:
    """A CNNEmbedder with the eval transform of its weights: what the steps pass around."""

    def __init__(self, embedder: vision.CNNEmbedder, spec: ModelSpec):
        self.embedder = embedder
        self.spec = spec
        self.transform = image_transform(spec)

    @classmethod
    def _build(cls, spec: ModelSpec, weights: str | None) -> ImageModel:
        options = cnn_options(spec)
        embedder = vision.build_cnn(
            spec.name,
            weights,
            spec.pooler,
            spec.pooler_p,
            spec.pooler_eps,
            output_dim=options.output_dim,
            freeze=options.freeze,
        )
        return cls(embedder.eval(), spec)

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> ImageModel:
        if spec.weights.startswith("package:"):
            return cls._build(spec, "package")
        if spec.weights.startswith("torchvision:"):
            return cls._build(spec, "upstream")
        from finetuner.weights import local_path

        # A mirror holds the upstream embedder: only its trunk is pretrained; GeM's p starts
        # at pooler_p and a head at its fixed initialisation.
        model = cls._build(spec, None)
        load_weights(model.embedder.trunk, local_path(spec.weights) / WEIGHTS_FILE, "trunk.")
        return model

    @classmethod
    def load(cls, folder: str | Path) -> ImageModel:
        model = cls._build(read_spec(folder), None)
        load_weights(model.embedder, Path(folder) / WEIGHTS_FILE)
        return model

    def save(self, folder: str | Path) -> Path:
        return save(self, folder)

    def pixels(self, uris: list[str]) -> torch.Tensor:
        return torch.stack([self.transform(load_image(uri)) for uri in uris])

    def embed(self, uris: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        """Embeddings with gradients, for training (images need no length buckets)."""
        return self.embedder(self.pixels(uris).to(device))

    def prepare_one(self, uri: str) -> torch.Tensor:
        """One image's pixels, in a DataLoader worker (see finetuner.batches)."""
        return self.transform(load_image(uri))

    def embed_prepared(self, pixels: torch.Tensor, device: str = "cpu") -> torch.Tensor:
        return self.embedder(pixels.to(device))

    @torch.inference_mode()
    def encode(self, uris: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        self.embedder.eval().to(device)
        out = [
            self.embedder(self.pixels(uris[i : i + batch_size]).to(device)).float().cpu()
            for i in range(0, len(uris), batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.spec.output_dim), np.float32)

    def onnx_spec(self) -> dict:
        """What export needs to write and check this model as ONNX. The transform fixes
        the image size, so only the batch axis is dynamic."""
        shape = tuple(self.transform(_blank()).shape)
        return {
            "module": self.embedder,
            "output": "image_embedding",
            "example": {"images": torch.randn(2, *shape)},
            "dynamic": {"images": {0: "batch"}},
            "checks": [{"images": torch.randn(n, *shape)} for n in (1, 3)],
        }


def _blank():
    from PIL import Image

    return Image.new("RGB", (256, 256))
