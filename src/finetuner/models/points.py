"""Mesh embedding models: PointNet++ on points sampled from each mesh's surface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finetuner.catalogue import ModelSpec
from finetuner.media import load_mesh
from finetuner.models.folder import WEIGHTS_FILE, load_weights, read_spec, save, seeded_start
from finetuner.models.pointnet import PointNet2Embedder
from finetuner.options import PointNetOptions

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
        model = cls.pretrained(read_spec(folder).model_copy(update={"weights": "scratch"}))
        load_weights(model.embedder, Path(folder) / WEIGHTS_FILE)
        return model

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
        """One mesh's points, in a DataLoader worker (see finetuner.batches): a fresh sample
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
