"""The PointNet++ family: meshes embedded from points sampled on their surface, trained
from a seeded random start (no upstream weights exist).

Light: it declares and registers the family; the nn.Modules are in pointnet_net.py.
"""

from __future__ import annotations

from pydantic import Field

from finetuner.models.options import Options
from finetuner.models.registry import Family, Weights, register_family


def _num_points():
    return Field(2048, ge=32, description="points sampled from each mesh")


def _augment():
    return Field(False, description="random rotation, scaling and jitter in training")


class PointPreprocessOptions(Options):
    num_points: int = _num_points()
    augment: bool = _augment()


class PointNetOptions(Options):
    num_points: int = _num_points()
    augment: bool = _augment()
    preprocess_options: PointPreprocessOptions | None = Field(
        None, description="num_points and augment as a group"
    )


@register_family
def pointnet() -> Family:
    return Family(
        "pointnet",
        PointNetOptions,
        model="finetuner.models.pointnet_net:PointCloudModel",
        query_kind="mesh",
        document_kind="mesh",
        weights=Weights(marker="model.safetensors", scratch=True),
        own_pooling="PointNet++ max-pools its point features: GeM and other poolers do not apply",
        # Trained from scratch; small mesh sets give few steps an epoch and the linear
        # schedule decays to 0, so 20 epochs (bench/README.md, default_learning.py: nDCG@10
        # 0.787 -> 0.914, where 1e-3 for 10 epochs stayed at 0.785).
        learning_rate=1e-3,
        epochs=20,
    )
