"""The projection head of the `output_dim` option, shared by the text and CNN families."""

from __future__ import annotations

import torch
from torch import nn

# The head has no upstream weights: a fixed start, so that evaluating the pretrained model
# (which builds it again) scores the model that training started from.
HEAD_SEED = 0


def projection_head(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free linear map, applied after pooling and before L2 normalisation.

    Orthogonal initialisation: a widening head keeps the angles between pretrained
    embeddings exactly, a narrowing one roughly (a random projection), so training starts
    near the pretrained model's quality.
    """
    head = nn.Linear(in_features, out_features, bias=False)
    nn.init.orthogonal_(head.weight, generator=torch.Generator().manual_seed(HEAD_SEED))
    return head
