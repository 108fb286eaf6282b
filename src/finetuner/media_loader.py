"""A torch Dataset of media items, decoded in DataLoader workers, that skips bad items.

    loader = DataLoader(MediaDataset(uris, transform), batch_size=256, num_workers=2,
                        collate_fn=collate_media)
    for batch in loader:
        skipped += len(batch.bad)          # [(index, message), ...]
        if batch.items is not None:
            train_on(batch.items, batch.indices)

A missing, oversized or corrupt item becomes one entry of `batch.bad` (its message says
which and why) instead of an exception that would stop the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import torch
from torch.utils.data import Dataset, default_collate

from finetuner import media
from finetuner.errors import BadItem


class MediaDataset(Dataset):
    """Items `(index, transform(item), None)`, or `(index, None, message)` for a bad item.

    `uris` are resolved media URIs (local paths, s3:// or http(s)://): a list, or a pyarrow
    array or column, e.g. read from Parquet. They are kept as one pyarrow array, not as
    Python strings: forked workers touching a list's items would copy its pages one by one,
    and a large dataset's memory would grow with every worker.

    `kind` is "image" (items are RGB PIL images; the default transform makes a float tensor
    in [0, 1]) or "mesh" (items are point clouds of `n_points` points, as numpy arrays; the
    default transform makes a tensor).
    """

    def __init__(
        self,
        uris: Sequence[str] | pa.Array | pa.ChunkedArray,
        transform: Callable[[Any], Any] | None = None,
        kind: str = "image",
        limits: media.MediaLimits | None = None,
        cache: media.MediaCache | None = None,
        n_points: int = 2048,
        augment: bool = False,
    ):
        if kind not in ("image", "mesh"):
            raise ValueError(f"kind must be 'image' or 'mesh', not {kind!r}")
        if isinstance(uris, pa.ChunkedArray):
            uris = uris.combine_chunks()
        self.uris = uris if isinstance(uris, pa.Array) else pa.array(list(uris), pa.string())
        self.kind = kind
        self.transform = transform or _default_transform(kind)
        self.cache = cache or media.MediaCache(limits)
        self.limits = limits or self.cache.limits
        self.n_points = n_points
        self.augment = augment

    def __len__(self) -> int:
        return len(self.uris)

    def load(self, uri: str):
        if self.kind == "image":
            return media.load_image(uri, self.cache, self.limits)
        return media.load_mesh(
            uri, self.cache, self.limits, n_points=self.n_points, augment=self.augment
        )

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        uri = self.uris[index].as_py()
        try:
            return index, self.transform(self.load(uri)), None
        except BadItem as error:
            return index, None, str(error)


def _default_transform(kind: str) -> Callable[[Any], Any]:
    if kind == "image":
        from torchvision.transforms.functional import to_tensor

        return to_tensor
    return torch.from_numpy


class MediaBatch(NamedTuple):
    """The good items of a batch, stacked, with their dataset indices, and the bad ones."""

    indices: torch.Tensor  # int64, one per good item
    items: Any  # default_collate of the good items; None if the whole batch was bad
    bad: list[tuple[int, str]]  # (dataset index, message) of each bad item


def collate_media(batch: list[tuple[int, Any, str | None]]) -> MediaBatch:
    """A DataLoader `collate_fn` for MediaDataset: drops the bad items and reports them."""
    good = [(index, item) for index, item, error in batch if error is None]
    bad = [(index, error) for index, _, error in batch if error is not None]
    indices = torch.tensor([index for index, _ in good], dtype=torch.int64)
    items = default_collate([item for _, item in good]) if good else None
    return MediaBatch(indices, items, bad)
