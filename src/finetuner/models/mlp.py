"""The MLP family: Finetuner's multi-layer perceptron on numeric vectors, trained from a
seeded random start.

Light: it declares and registers the family; the nn.Modules are in mlp_net.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetuner.models.options import Options
from finetuner.models.registry import Family, Weights, register_family


class MLPOptions(Options):
    input_size: int = Field(ge=1, description="length of the input vectors (required)")
    hidden_sizes: list[int] = Field([128], min_length=1, description="sizes of the layers")
    bias: bool = Field(True, description="whether the layers have a bias")
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] | None = Field(
        "relu", description="activation between layers"
    )
    l2: bool = Field(True, description="L2-normalise the output")

    def embedding_dim(self) -> int:
        return self.hidden_sizes[-1]


@register_family
def mlp() -> Family:
    return Family(
        "mlp",
        MLPOptions,
        model="finetuner.models.mlp_net:VectorModel",
        query_kind="vector",
        document_kind="vector",
        weights=Weights(marker="model.safetensors", scratch=True),
        onnx_inputs="finetuner.models.mlp_net:onnx_inputs",
        own_pooling="an MLP embeds a vector: there is nothing to pool",
        # Trained from scratch: the usual AdamW rate for that, and epochs enough to move
        # (bench/README.md, default_learning.py: nDCG@10 0.579 -> 0.668 on Fashion-MNIST
        # vectors, where 5e-5 for 1 epoch left it at 0.582).
        learning_rate=1e-3,
        epochs=10,
    )
