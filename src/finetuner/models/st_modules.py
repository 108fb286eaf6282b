"""A sentence-transformers module for GeM pooling, which sentence-transformers lacks.

An exported folder names it in modules.json, so `SentenceTransformer(path)` loads it
wherever this package is installed.
"""

from __future__ import annotations

import torch
from sentence_transformers.base.modules import Module

from finetuner.models.poolers import gem


class GeMPooling(Module):
    config_keys = ["embedding_dimension", "p", "eps"]

    def __init__(self, embedding_dimension: int, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.embedding_dimension = embedding_dimension
        self.p = p
        self.eps = eps

    def forward(self, features: dict, **kwargs) -> dict:
        tokens = features["token_embeddings"]
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        count = mask.sum(dim=1).clamp(min=1)
        features["sentence_embedding"] = gem(tokens, mask, count, torch.tensor(self.p), self.eps)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedding_dimension

    get_embedding_dimension = get_sentence_embedding_dimension

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.save_config(output_path)
