"""A test-only model family, registered from outside the finetuner package: the seam that
docs/adding-a-backbone.md describes, exercised end to end by test_toy_family.py.

`toy-bow` embeds texts as the mean of hashed word embeddings, trained from a seeded random
start. Importing this module registers the family and its catalogue row; a pipeline run
names it in FINETUNER_PLUGINS so that every step's process imports it too.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pydantic import Field

from finetuner.catalogue import ModelEntry, get_entry, register_entry
from finetuner.errors import FinetunerError
from finetuner.models.options import Options
from finetuner.models.registry import Family, Weights, register_family

NAME = "toy-bow"


class ToyOptions(Options):
    buckets: int = Field(512, ge=16, description="hash buckets of the word embeddings")
    dim: int = Field(16, ge=2, description="size of the embeddings")

    def embedding_dim(self) -> int:
        return self.dim


# Step 1 of the guide: the family, declared once. The heavy parts are named as
# "module:attribute", so registering imports no torch.
FAMILY = Family(
    "toy",
    ToyOptions,
    model=f"{__name__}:ToyModel",
    query_kind="text",
    document_kind="text",
    weights=Weights(marker="model.safetensors", scratch=True),
    onnx_inputs=f"{__name__}:onnx_inputs",
    own_pooling="a bag of words averages its words: there is nothing else to pool",
)
# Step 2: its catalogue row.
ENTRY = ModelEntry(
    NAME, "none: trained from scratch", "text-to-text", None, "bag-of-words",
    "Test-only bag of hashed words", family="toy",
)  # fmt: skip


def register() -> None:
    register_family(FAMILY)
    try:
        get_entry(NAME)
    except FinetunerError:
        register_entry(ENTRY)


register()


# Step 3: the model object, in what would be the family's heavy module.
def word_ids(texts: list[str], buckets: int):
    """Hashed word ids, padded with 0 (no word), as an int64 array (batch, words)."""
    import numpy as np

    rows = [[1 + zlib.crc32(w.encode()) % (buckets - 1) for w in t.lower().split()] for t in texts]
    width = max((len(r) for r in rows), default=0) or 1
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _embedder(options: ToyOptions):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BagOfWords(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(options.buckets, options.dim, padding_idx=0)

        def forward(self, word_ids: torch.Tensor) -> torch.Tensor:
            mask = (word_ids > 0).unsqueeze(-1).float()
            total = (self.embedding(word_ids) * mask).sum(dim=1)
            return F.normalize(total / mask.sum(dim=1).clamp(min=1), dim=-1)

    return BagOfWords()


class ToyModel:
    def __init__(self, spec):
        from finetuner.models.folder import seeded_start

        self.spec = spec
        self.options = ToyOptions(**spec.options)
        self.embedder = seeded_start(lambda: _embedder(self.options), spec, seed=0)

    @classmethod
    def pretrained(cls, spec) -> ToyModel:
        return cls(spec)

    @classmethod
    def load(cls, folder: str | Path) -> ToyModel:
        from finetuner.models.folder import WEIGHTS_FILE, load_weights, read_spec

        model = cls(read_spec(folder).model_copy(update={"weights": "scratch"}))
        load_weights(model.embedder, Path(folder) / WEIGHTS_FILE)
        return model

    def save(self, folder: str | Path) -> Path:
        from finetuner.models.folder import save

        return save(self, folder)

    def ids(self, texts: list[str]):
        import torch

        return torch.from_numpy(word_ids(texts, self.options.buckets))

    def embed(self, texts: list[str], device: str = "cpu", buckets: int = 1):
        return self.embedder(self.ids(texts).to(device))

    def encode(self, texts: list[str], batch_size: int = 64, device: str = "cpu"):
        import numpy as np
        import torch

        self.embedder.eval().to(device)
        with torch.inference_mode():
            out = [
                self.embed(texts[i : i + batch_size], device).float().cpu().numpy()
                for i in range(0, len(texts), batch_size)
            ]
        return np.concatenate(out) if out else np.zeros((0, self.spec.output_dim), np.float32)

    def onnx_spec(self) -> dict:
        checks = (["a"], ["red shoes", "a blue dress for summer"], ["b c"] * 3)
        return {
            "module": self.embedder,
            "output": "text_embedding",  # not a name in the graph (the module "embedding")
            "example": {"word_ids": self.ids(list(checks[1]))},
            "dynamic": {"word_ids": {0: "batch", 1: "words"}},
            "checks": [{"word_ids": self.ids(list(texts))} for texts in checks],
        }


def onnx_inputs(spec, folder: Path):
    buckets = ToyOptions(**spec.options).buckets
    return lambda texts: {"word_ids": word_ids(texts, buckets)}
