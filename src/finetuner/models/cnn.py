"""The CNN family: a torchvision or timm image classifier's trunk, a pooler (average or
GeM) and an optional projection head. A catalogue row's `builder` names the network and
its weights, e.g. "torchvision:resnet50:IMAGENET1K_V2" or "timm:efficientnet_lite0".

Light: it declares and registers the family; the nn.Modules are in cnn_net.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetuner.models.options import (
    Backbone,
    Options,
    PoolerOptions,
    Positive,
    freeze_field,
    gem_eps,
    gem_p,
    output_dim_field,
    pooler_options_field,
)
from finetuner.models.registry import Family, Weights, register_family


def _image_size():
    return Field(
        None, ge=32, le=1024, description="side of the square crop; None: the weights' own"
    )


class ImagePreprocessOptions(Options):
    image_size: int | None = _image_size()


class CNNOptions(Backbone):
    pooler: Literal["mean", "GeM"] = Field(
        "mean", description="final pooling; GeM's p is learnable and starts at pooler_p"
    )
    pooler_p: Positive = gem_p()
    pooler_eps: Positive = gem_eps()
    pooler_options: PoolerOptions | None = pooler_options_field()
    image_size: int | None = _image_size()
    preprocess_options: ImagePreprocessOptions | None = Field(
        None, description="image_size as a group"
    )
    output_dim: int | None = output_dim_field()
    freeze: bool = freeze_field()


@register_family
def cnn() -> Family:
    return Family(
        "cnn",
        CNNOptions,
        model="finetuner.models.cnn_net:ImageModel",
        query_kind="image",
        document_kind="image",
        # A mirror holds model.safetensors, the state_dict of the embedding trunk.
        weights=Weights(
            marker="model.safetensors",
            upstream="finetuner.models.cnn_net:upstream_source",
            mirror="finetuner.models.cnn_net:write_mirror",
        ),
        onnx_inputs="finetuner.models.cnn_net:onnx_inputs",
        card=lambda spec: (f", pooler `{spec.pooler}`", "the weights as safetensors"),
    )
