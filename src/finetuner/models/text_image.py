"""Text-to-image models: CLIP's two towers, trained together on (text, image) pairs.

Queries are texts and documents are image URIs. The text tower embeds the queries and the
vision tower the documents; each is exported on its own (`clip-text`, `clip-vision`), as
Finetuner did, and loads without the other for inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finetuner.catalogue import ModelSpec
from finetuner.errors import FinetunerError
from finetuner.models import clip
from finetuner.models.folder import read_spec, write_spec
from finetuner.models.image import load_image

TOWERS = ("clip-text", "clip-vision")
# Texts and batch sizes that the ONNX check of the text tower runs through both runtimes.
ONNX_CHECK_TEXTS = (["a"], ["a photo of a dress", "trousers"], ["a bag"] * 3)


class _Tower:
    """One CLIP tower with its preprocessing: `embed` for training, `encode` for inference."""

    def __init__(self, tower, name: str):
        self.tower = tower
        self.name = name

    def inputs(self, items: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, items: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        return self.tower(self.inputs(items).to(device))

    @torch.inference_mode()
    def encode(self, items: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        self.tower.eval().to(device)
        out = [
            self.embed(items[i : i + batch_size], device).float().cpu()
            for i in range(0, len(items), batch_size)
        ]
        dim = self.tower.config["embed_dim"]
        return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)

    def save(self, folder: str | Path) -> Path:
        return clip.save_tower(self.tower, folder)

    def _onnx_spec(self, input_name: str, output: str, example, checks: list) -> dict:
        # Text has a fixed context length, images a fixed size: only the batch is dynamic.
        return {
            "module": self.tower,
            "output": output,
            "example": {input_name: example},
            "dynamic": {input_name: {0: "batch"}},
            "checks": [{input_name: inputs} for inputs in checks],
        }


class TextTower(_Tower):
    def inputs(self, texts: list[str]) -> torch.Tensor:
        return self.tower.tokenize(list(texts))

    def onnx_spec(self) -> dict:
        checks = [self.inputs(texts) for texts in ONNX_CHECK_TEXTS]
        return self._onnx_spec("token_ids", "text_embedding", checks[1], checks)


class ImageTower(_Tower):
    def inputs(self, uris: list[str]) -> torch.Tensor:
        return torch.stack([self.prepare_one(uri) for uri in uris])

    def prepare_one(self, uri: str) -> torch.Tensor:
        """One image's pixels, in a DataLoader worker (see finetuner.batches)."""
        return self.tower.preprocess(load_image(uri))

    def embed_prepared(self, pixels: torch.Tensor, device: str = "cpu") -> torch.Tensor:
        return self.tower(pixels.to(device))

    def pixels(self, n: int) -> torch.Tensor:
        size = self.tower.config["vision_cfg"]["image_size"]
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))

    def onnx_spec(self) -> dict:
        checks = [self.pixels(n) for n in (1, 3)]
        return self._onnx_spec("pixel_values", "image_embedding", self.pixels(2), checks)


def load_tower(folder: str | Path) -> TextTower | ImageTower:
    """A tower exported on its own (an export's clip-text/ or clip-vision/ folder)."""
    tower = clip.load_tower(folder)
    if isinstance(tower, clip.ClipTextTower):
        return TextTower(tower, TOWERS[0])
    return ImageTower(tower, TOWERS[1])


class TextImageModel:
    """A CLIP model for the pipeline: both towers and the learnable temperature."""

    def __init__(self, model: clip.ClipModel, spec: ModelSpec):
        self.clip = model
        # The measured width: a mirror may hold a smaller configuration than the catalogue's.
        self.spec = spec.model_copy(update={"output_dim": model.output_dim})
        self.embedder = model.model  # both towers and logit_scale: what the optimiser trains
        self.text = TextTower(model.text_tower, TOWERS[0])
        self.image = ImageTower(model.vision_tower, TOWERS[1])

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> TextImageModel:
        if spec.weights.startswith("open_clip:"):
            return cls(clip.build_clip(spec.name, clip.UPSTREAM), spec)
        from finetuner.weights import local_path

        return cls(_load_clip(local_path(spec.weights), spec.name), spec)

    @classmethod
    def load(cls, folder: str | Path) -> TextImageModel:
        spec = read_spec(folder)
        return cls(_load_clip(Path(folder), spec.name), spec)

    def save(self, folder: str | Path) -> Path:
        write_spec(folder, self.spec)
        return clip.save_clip(self.clip, folder)

    def scale(self) -> torch.Tensor:
        return self.clip.scale()

    def sides(self) -> tuple[TextTower, ImageTower]:
        return self.text, self.image

    def towers(self) -> dict[str, TextTower | ImageTower]:
        return {self.text.name: self.text, self.image.name: self.image}

    def onnx_spec(self) -> None:
        return None  # each tower is exported on its own

    def encode(self, items: list[str], batch_size: int = 64):
        raise FinetunerError(
            "a CLIP model encodes with one tower: load it with "
            f"get_model(artifact, select_model=...) and one of {', '.join(TOWERS)}."
        )


def _load_clip(folder: Path, name: str) -> clip.ClipModel:
    """A save_clip folder (a mirror's or a train step's) that must hold catalogue entry
    `name`, at whatever size it was saved."""
    import json

    config_file = folder / clip.CLIP_CONFIG_FILE
    if not config_file.is_file():
        raise FinetunerError(f"{folder} holds no CLIP model: {clip.CLIP_CONFIG_FILE} is missing.")
    saved = json.loads(config_file.read_text())["name"]
    if saved != name:
        raise FinetunerError(f"{folder} holds weights of {saved}, not of {name}.")
    return clip.load_clip(folder)
