"""The MLP family's network and model object (declared in mlp.py): Finetuner's MLP, trained
from scratch on numeric vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetuner.errors import FinetunerError
from finetuner.models.folder import (
    load_scratch_model,
    save,
    seeded_start,
)
from finetuner.models.mlp import MLPOptions
from finetuner.models.spec import ModelSpec

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """vectors (B, input_size) -> embeddings (B, hidden_sizes[-1]).

    Linear layers with the activation between them (not after the last), as Finetuner's
    MLP; `l2` normalises the output.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: tuple[int, ...] = (128,),
        bias: bool = True,
        activation: str | None = "relu",
        l2: bool = True,
    ):
        super().__init__()
        if input_size < 1 or not hidden_sizes or min(hidden_sizes) < 1:
            raise FinetunerError(
                "mlp: input_size and every hidden size must be positive integers, "
                f"got input_size={input_size}, hidden_sizes={list(hidden_sizes)}."
            )
        if activation is not None and activation not in ACTIVATIONS:
            raise FinetunerError(
                f"mlp: unknown activation '{activation}'. Valid: {', '.join(ACTIVATIONS)} or None."
            )
        layers: list[nn.Module] = []
        sizes = [input_size, *hidden_sizes]
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
            layers.append(nn.Linear(n_in, n_out, bias=bias))
            if activation and i < len(hidden_sizes) - 1:
                layers.append(ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)
        self.l2 = l2
        self.output_dim = sizes[-1]

    def forward(self, x):
        out = self.layers(x)
        return F.normalize(out, dim=-1) if self.l2 else out


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
        return load_scratch_model(cls, folder)

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


def onnx_inputs(spec: ModelSpec, folder: Path):
    """items -> the feeds of the exported ONNX model: the parsed vectors."""
    return lambda items: {"vectors": parse_vectors(items).numpy()}
