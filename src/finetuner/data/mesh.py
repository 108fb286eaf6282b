"""Meshes and point clouds -> fixed-size point clouds on the unit sphere, for PointNet++."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh

from finetuner.errors import FinetunerError


def supported_formats() -> list[str]:
    return sorted(trimesh.available_formats())


def load_points(
    source: str | Path | bytes,
    file_type: str | None = None,
    n_points: int = 2048,
    augment: bool = False,
    seed: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Sample `n_points` points uniformly on a mesh's surface -> float32 array (n_points, 3),
    centred on their centroid and scaled so that the farthest point is at distance 1.

    `source` is a path, or the file's bytes with `file_type` (its extension, e.g. "stl").
    A point cloud (vertices without faces) is resampled from its vertices. The same `seed`
    gives the same points. `augment` adds a random rotation about z, anisotropic scaling in
    [0.8, 1.25] and jitter, as training augmentation. Errors name the file by `name` if given
    (e.g. the URI the bytes came from), else by its path.
    """
    if isinstance(source, bytes):
        if file_type is None:
            raise FinetunerError("load_points: file_type is required when source is bytes")
        name = name or f"<{len(source)} bytes of {file_type}>"
    else:
        name = name or str(source)
        file_type = file_type or Path(source).suffix.lstrip(".")
    file_type = file_type.lower()
    if file_type not in trimesh.available_formats():
        raise FinetunerError(
            f"{name}: unsupported mesh file type {file_type!r}; "
            f"supported: {', '.join(supported_formats())}"
        )
    try:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        loaded = trimesh.load(data, file_type=file_type)
    except Exception as e:  # trimesh's loaders raise all kinds of errors on bad files
        raise FinetunerError(f"{name}: cannot read as {file_type}: {type(e).__name__}: {e}") from e

    rng = np.random.default_rng(seed)
    # Finite coordinates can still overflow (e.g. 1e308) in sampling or centring: the
    # points are checked as the model gets them, where a NaN would poison the loss.
    with np.errstate(over="ignore", invalid="ignore"):
        points = _sample(loaded, n_points, rng, name)
        points = points - points.mean(axis=0)
        radius = np.linalg.norm(points, axis=1).max()
        if np.isfinite(radius) and radius > 0:
            points = points / radius
    if not np.isfinite(points).all() or not np.isfinite(radius):
        raise _too_large(name, "they overflow to inf or NaN as the points are normalised")
    if not radius > 0:
        raise FinetunerError(f"{name}: all points coincide; a mesh needs some extent")
    if augment:
        points = _augment(points, rng)
    return points.astype(np.float32)


# Surface areas square the coordinates, in float64: beyond this they overflow.
MAX_COORDINATE = 1e150


def _too_large(name: str, detail: str) -> FinetunerError:
    return FinetunerError(
        f"{name}: the coordinates are too large to sample and normalise ({detail}); valid: "
        f"within +-{MAX_COORDINATE:.0e}, since surface areas square them. Scale the mesh down"
    )


def _sample(loaded, n_points: int, rng: np.random.Generator, name: str) -> np.ndarray:
    if isinstance(loaded, trimesh.Scene):
        # dump() applies each node's transform, so the parts end up where the scene puts them.
        parts = loaded.dump()
        meshes = [g for g in parts if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if meshes:
            loaded = trimesh.util.concatenate(meshes)
        else:
            clouds = [
                g.vertices for g in parts if isinstance(g, trimesh.PointCloud | trimesh.Trimesh)
            ]
            loaded = trimesh.PointCloud(np.concatenate(clouds) if clouds else np.empty((0, 3)))
    if not isinstance(loaded, trimesh.Trimesh | trimesh.PointCloud):
        raise FinetunerError(
            f"{name}: contains a {type(loaded).__name__}, not a mesh or point cloud"
        )
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    if len(vertices) == 0:
        raise FinetunerError(f"{name}: the mesh is empty (no vertices)")
    if not np.isfinite(vertices).all():
        raise FinetunerError(f"{name}: the mesh has non-finite (NaN or inf) vertex coordinates")
    largest = np.abs(vertices).max()
    if largest > MAX_COORDINATE:
        raise _too_large(name, f"the largest is {largest:.3g}")
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
        if not loaded.area > 0:
            raise FinetunerError(f"{name}: all faces have zero area; nothing to sample on")
        points, _ = trimesh.sample.sample_surface(loaded, n_points, seed=rng)
        return np.asarray(points, dtype=np.float64)
    # A point cloud: draw its vertices, with replacement only when there are too few.
    idx = rng.choice(len(vertices), n_points, replace=len(vertices) < n_points)
    return vertices[idx]


def _augment(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # about z, the up axis
    scale = rng.uniform(0.8, 1.25, size=3)
    jitter = np.clip(rng.normal(0, 0.01, size=points.shape), -0.05, 0.05)
    return points @ rotation.T * scale + jitter
