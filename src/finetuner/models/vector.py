"""Vector embedding models: Finetuner's MLP, trained from scratch on numeric vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finetuner.catalogue import ModelSpec
from finetuner.models.folder import WEIGHTS_FILE, load_weights, read_spec, save, seeded_start
from finetuner.models.mlp import MLP
from finetuner.options import MLPOptions

# The "pretrained" MLP is a fixed random initialisation, so that the train step starts
# from, and the evaluate step scores, the same weights.
INIT_SEED = 0


def parse_vectors(items: list[str]) -> torch.Tensor:
    """Vectors written as numbers separated by spaces (checked by preprocess)."""
    return torch.tensor(np.array([np.array(v.split(), dtype=np.float32) for v in items]))


class VectorModel:
    def __init__(self, embedder: MLP, spec: ModelSpec):
        self.embedder = embedder
        self.spec = spec

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> VectorModel:
        # Re-validated: KFP hands dict parameters over as JSON numbers, ints as floats.
        options = MLPOptions(**spec.options).model_dump()
        return cls(seeded_start(lambda: MLP(**options), spec, INIT_SEED), spec)

    @classmethod
    def load(cls, folder: str | Path) -> VectorModel:
        model = cls.pretrained(read_spec(folder).model_copy(update={"weights": "scratch"}))
        load_weights(model.embedder, Path(folder) / WEIGHTS_FILE)
        return model

    def save(self, folder: str | Path) -> Path:
        return save(self, folder)

    def embed(self, items: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        return self.embedder(parse_vectors(items).to(device))

    @torch.inference_mode()
    def encode(self, items: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        self.embedder.eval().to(device)
        if not items:
            return np.zeros((0, self.spec.output_dim), np.float32)
        return self.embedder(parse_vectors(items).to(device)).float().cpu().numpy()

    def onnx_spec(self) -> dict:
        size = self.embedder.layers[0].in_features
        return {
            "module": self.embedder,
            "output": "embedding",
            "example": {"vectors": torch.randn(2, size)},
            "dynamic": {"vectors": {0: "batch"}},
            "checks": [{"vectors": torch.randn(n, size)} for n in (1, 5)],
        }
