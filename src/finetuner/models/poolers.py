"""Poolers: token embeddings (batch, tokens, dim) + attention mask -> one vector per input."""

from __future__ import annotations

import torch
from torch import nn


class Pooler(nn.Module):
    def __init__(self, mode: str = "mean", p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if mode not in ("mean", "cls", "max", "GeM"):
            raise ValueError(f"unknown pooler {mode!r}")
        self.mode = mode
        self.eps = eps
        # GeM's p is a buffer on text models: saved with the weights but not trained.
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1).to(tokens.dtype)
        if self.mode == "cls":
            return tokens[:, 0]
        if self.mode == "max":
            return tokens.masked_fill(mask == 0, torch.finfo(tokens.dtype).min).amax(dim=1)
        count = mask.sum(dim=1).clamp(min=1)
        if self.mode == "mean":
            return (tokens * mask).sum(dim=1) / count
        return gem(tokens, mask, count, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode}" + (
            f", p={self.p.item():g}, eps={self.eps:g}" if self.mode == "GeM" else ""
        )


def gem(tokens, mask, count, p, eps):
    """Generalised mean over tokens, signed so that it is defined for negative values.

    CNN features are non-negative after ReLU; transformer token embeddings are not, so the
    power is taken of |x| and the sign kept. p = 1 is mean pooling (up to eps), and large
    p tends to max |x| pooling. Dividing by the largest |x| first keeps |x|^p finite in
    float32 for large p.
    """
    x = tokens.masked_fill(mask == 0, 0)
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=eps)
    powered = x.sign() * (x.abs() / scale).clamp(min=eps).pow(p)
    mean = (powered * mask).sum(dim=1) / count
    root = mean.abs().clamp(min=torch.finfo(mean.dtype).tiny).pow(1.0 / p)
    return scale.squeeze(1) * mean.sign() * root
