"""The MLP of Finetuner's catalogue: trained from scratch on vectors."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from finetuner.errors import FinetunerError

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
