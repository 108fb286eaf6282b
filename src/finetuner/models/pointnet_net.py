"""PointNet++ (single-scale grouping) embedding model for mesh-to-mesh search, in plain PyTorch.

Follows the classification network of Qi et al. 2017, "PointNet++: Deep Hierarchical Feature
Learning on Point Sets in a Metric Space": set-abstraction levels (sample centroids, group their
neighbours, encode each group with a shared MLP and max pool), then a global level and an MLP
head. Only standard tensor ops are used, so it runs on CPU and GPU and exports to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetuner.data.media import load_mesh
from finetuner.errors import FinetunerError
from finetuner.models.folder import (
    load_scratch_model,
    save,
    seeded_start,
)
from finetuner.models.pointnet import PointNetOptions
from finetuner.models.spec import ModelSpec


@dataclass(frozen=True)
class SetAbstractionConfig:
    """One level; npoint=None means group-all (one group holding every point)."""

    npoint: int | None
    radius: float | None
    nsample: int | None
    mlp: tuple[int, ...]


@dataclass(frozen=True)
class PointNetConfig:
    levels: tuple[SetAbstractionConfig, ...]
    head_dim: int
    dropout: float = 0.5


CONFIGS: dict[str, PointNetConfig] = {
    # The paper's SSG classification network.
    "base": PointNetConfig(
        levels=(
            SetAbstractionConfig(512, 0.2, 32, (64, 64, 128)),
            SetAbstractionConfig(128, 0.4, 64, (128, 128, 256)),
            SetAbstractionConfig(None, None, None, (256, 512, 1024)),
        ),
        head_dim=512,
    ),
    # Same architecture, small enough for fast tests.
    "tiny": PointNetConfig(
        levels=(
            SetAbstractionConfig(32, 0.4, 16, (16, 16, 32)),
            SetAbstractionConfig(8, 0.8, 16, (32, 32, 64)),
            SetAbstractionConfig(None, None, None, (64, 64, 128)),
        ),
        head_dim=64,
    ),
}


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, *S) of indices into N -> (B, *S, C)."""
    batch, channels = points.shape[0], points.shape[-1]
    flat = idx.reshape(batch, -1, 1).expand(-1, -1, channels)
    return points.gather(1, flat).reshape(*idx.shape, channels)


@torch.no_grad()  # indices only; no graph through the loop
def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """xyz (B, N, 3) -> (B, npoint) indices; each pick is the point farthest from those already
    picked, starting from point 0 so the result is deterministic."""
    batch, n = xyz.shape[0], xyz.shape[1]
    picked = []
    nearest = torch.full((batch, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    for _ in range(npoint):
        picked.append(farthest)
        centroid = gather_points(xyz, farthest[:, None])  # (B, 1, 3)
        nearest = torch.minimum(nearest, ((xyz - centroid) ** 2).sum(-1))
        farthest = nearest.argmax(-1)
    return torch.stack(picked, dim=1)


@torch.no_grad()
def ball_query(radius: float, nsample: int, xyz: torch.Tensor, centroids: torch.Tensor):
    """For each centroid (B, S, 3), the indices (B, S, nsample) of up to nsample points of xyz
    (B, N, 3) within `radius`, lowest indices first. Groups with fewer are padded with their
    first member; the centroid itself is always a member, so no group is empty."""
    n = xyz.shape[1]
    sqdist = ((centroids[:, :, None, :] - xyz[:, None, :, :]) ** 2).sum(-1)  # (B, S, N)
    index = torch.arange(n, device=xyz.device).expand_as(sqdist)
    # Points outside the ball get index n so that sorting moves them behind those inside.
    index = torch.where(sqdist > radius**2, n, index)
    index = index.sort(dim=-1).values[:, :, : min(nsample, n)]
    return torch.where(index == n, index[:, :, :1], index)


class SetAbstraction(nn.Module):
    def __init__(self, cfg: SetAbstractionConfig, in_channels: int):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels = in_channels + 3  # features plus relative coordinates
        for out in cfg.mlp:
            # bias=False: BatchNorm's shift makes a conv bias redundant.
            layers += [nn.Conv2d(channels, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.mlp = nn.Sequential(*layers)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None):
        """xyz (B, N, 3), features (B, N, C) or None -> new xyz (B, S, 3), features (B, S, C')."""
        if self.cfg.npoint is None:
            new_xyz = xyz.new_zeros(xyz.shape[0], 1, 3)
            grouped = xyz[:, None]  # (B, 1, N, 3): relative to the origin
            grouped_features = None if features is None else features[:, None]
        else:
            new_xyz = gather_points(xyz, farthest_point_sample(xyz, self.cfg.npoint))
            idx = ball_query(self.cfg.radius, self.cfg.nsample, xyz, new_xyz)  # (B, S, K)
            grouped = gather_points(xyz, idx) - new_xyz[:, :, None, :]  # (B, S, K, 3)
            grouped_features = None if features is None else gather_points(features, idx)
        if grouped_features is not None:
            grouped = torch.cat([grouped, grouped_features], dim=-1)
        # (B, S, K, C) -> (B, C, S, K) for the 1x1 convolutions, then max over each group.
        encoded = self.mlp(grouped.permute(0, 3, 1, 2)).amax(dim=-1)
        return new_xyz, encoded.transpose(1, 2)


class PointNet2Embedder(nn.Module):
    """points (B, N, 3) -> unit-length embeddings (B, output_dim).

    Expects clouds normalised to the unit sphere (see finetuner.data.mesh.load_points), since the
    ball radii are absolute. In training mode the head's BatchNorm needs B >= 2.
    """

    def __init__(self, output_dim: int = 512, size: str = "base"):
        super().__init__()
        if size not in CONFIGS:
            raise FinetunerError(
                f"unknown PointNet++ size {size!r}; valid sizes: {', '.join(CONFIGS)}"
            )
        cfg = CONFIGS[size]
        self.size = size
        self.output_dim = output_dim
        levels, channels = [], 0
        for level in cfg.levels:
            levels.append(SetAbstraction(level, channels))
            channels = level.mlp[-1]
        self.levels = nn.ModuleList(levels)
        self.head = nn.Sequential(
            nn.Linear(channels, cfg.head_dim, bias=False),
            nn.BatchNorm1d(cfg.head_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_dim, output_dim),
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected points of shape (B, N, 3), got {tuple(points.shape)}")
        xyz, features = points, None
        for level in self.levels:
            xyz, features = level(xyz, features)
        return F.normalize(self.head(features[:, 0]), dim=-1)


def build_pointnet(output_dim: int = 512, size: str = "base") -> PointNet2Embedder:
    """The catalogue's `pointnet-base` (size="base"), randomly initialised."""
    return PointNet2Embedder(output_dim=output_dim, size=size)


INIT_SEED = 0  # no upstream weights exist: a fixed random start, shared by train and evaluate
ENCODE_SEED = 0  # the surface sample used for inference, so encodings are repeatable


class PointCloudModel:
    def __init__(self, embedder: PointNet2Embedder, spec: ModelSpec):
        self.embedder = embedder
        self.spec = spec
        # KFP hands dict parameters over as JSON numbers: re-validate for the types.
        self.options = PointNetOptions(**spec.options)

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> PointCloudModel:
        build = lambda: PointNet2Embedder(output_dim=spec.output_dim)  # noqa: E731
        return cls(seeded_start(build, spec, INIT_SEED), spec)

    @classmethod
    def load(cls, folder: str | Path) -> PointCloudModel:
        return load_scratch_model(cls, folder)

    def save(self, folder: str | Path) -> Path:
        return save(self, folder)

    def points(self, uris: list[str], seeds: list[int], augment: bool) -> torch.Tensor:
        clouds = [
            load_mesh(uri, n_points=self.options.num_points, augment=augment, seed=seed)
            for uri, seed in zip(uris, seeds, strict=True)
        ]
        return torch.from_numpy(np.stack(clouds))

    def embed(self, uris: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        """Training: a fresh surface sample (and augmentation, if asked) at every step, drawn
        from torch's seeded generator so that runs repeat."""
        seeds = torch.randint(0, 2**31 - 1, (len(uris),)).tolist()
        return self.embedder(self.points(uris, seeds, self.options.augment).to(device))

    def prepare_one(self, uri: str) -> torch.Tensor:
        """One mesh's points, in a DataLoader worker (see finetuner.data.batches): a fresh sample
        from the worker's seeded generator."""
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return self.points([uri], [seed], self.options.augment)[0]

    def embed_prepared(self, points: torch.Tensor, device: str = "cpu") -> torch.Tensor:
        return self.embedder(points.to(device))

    @torch.inference_mode()
    def encode(self, uris: list[str], batch_size: int = 32, device: str = "cpu") -> np.ndarray:
        self.embedder.eval().to(device)
        out = [
            self.embedder(self.points(chunk, [ENCODE_SEED] * len(chunk), False).to(device))
            for chunk in (uris[i : i + batch_size] for i in range(0, len(uris), batch_size))
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.spec.output_dim))

    def onnx_spec(self) -> None:
        """No ONNX: the full-size network's sampling loop does not export in reasonable time."""
        return None
