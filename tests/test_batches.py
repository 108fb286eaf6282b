"""finetuner.data.batches: training batches whose media items are prepared in DataLoader
workers; a bad item drops its row and comes back as a message, never stops a worker."""

import os

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import fashion_mnist
from test_media import Server, limits, png_bytes, png_claiming
from torchvision.transforms.functional import to_tensor

from finetuner.data import dataset, media
from finetuner.data.batches import batch_loader


class ImageSide:
    """A model side as the training loop sees one (cf. ImageModel.prepare_one). `jitter`
    adds a draw from the worker's seeded generator, as a mesh side's fresh sample does."""

    def __init__(self, cache: media.MediaCache, jitter: float = 0.0):
        self.cache, self.jitter = cache, jitter

    def prepare_one(self, uri: str) -> torch.Tensor:
        pixels = to_tensor(media.load_image(uri, self.cache))
        return pixels + self.jitter * torch.rand(()) if self.jitter else pixels


def batches_of(n: int, size: int, seed: int = 0) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + size] for i in range(0, n, size)]


def run(data, batches, side, workers: int = 2, seed: int = 0) -> list:
    return list(batch_loader(data, batches, {0: side}, workers, seed))


@pytest.fixture
def http():
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def fashion_files(tmp_path):
    """40 Fashion-MNIST PNGs, four of them bad in different ways, and one missing file:
    their (uri, label) rows, and the bad rows' indices with the reason each must give."""
    images, labels = fashion_mnist(40)
    rows, bad = [], {}
    for i, image in enumerate(images):
        path = tmp_path / f"{i:02d}.png"
        content = png_bytes(image)
        if i % 9 == 4:  # i = 4, 13, 22, 31: spread over the batches
            content, bad[i] = [
                (content[:100], "truncated or corrupt PNG image"),
                (os.urandom(500), "not an image"),
                (png_claiming(9000, 9000), "pixels, more than max_image_pixels"),
                (b"", "not an image"),
            ][i % 4]
        path.write_bytes(content)
        rows.append((str(path), str(labels[i])))
    rows.append((str(tmp_path / "missing.png"), "0"))
    bad[len(rows) - 1] = "does not exist"
    return rows, bad


def test_bad_rows_are_dropped_and_reported_by_two_workers(tmp_path, fashion_files):
    rows, bad = fashion_files
    # Two shards' worth, as dataset.load gives several Parquet files: chunked columns.
    tables = [dataset.from_rows(part, "labeled").table for part in (rows[:20], rows[20:])]
    data = dataset.Dataset("labeled", pa.concat_tables(tables))
    side = ImageSide(media.MediaCache(limits(tmp_path)))

    kept, messages = [], []
    for batch_rows, tensors, batch_bad in run(data, batches_of(len(rows), 8), side):
        assert list(tensors) == [0] and len(tensors[0]) == len(batch_rows)
        assert tensors[0].shape[1:] == (3, 28, 28)
        kept += zip(batch_rows, tensors[0], strict=True)
        messages += batch_bad

    assert sorted(row for row, _ in kept) == sorted(r for i, r in enumerate(rows) if i not in bad)
    for row, pixels in kept:  # each row with its own image
        np.testing.assert_array_equal(pixels, side.prepare_one(row[0]))
    assert len(messages) == len(bad)
    for i, reason in bad.items():  # each message names its file and says why
        [message] = [m for m in messages if m.startswith(rows[i][0])]
        assert reason in message


def test_the_loader_repeats_for_a_seed(tmp_path, fashion_files):
    rows, bad = fashion_files
    data = dataset.from_rows(rows, "labeled")
    side = ImageSide(media.MediaCache(limits(tmp_path)), jitter=0.01)
    batches = batches_of(len(rows), 8)

    def epoch(seed: int):
        out = run(data, batches, side, seed=seed)
        return [b[0] for b in out], torch.cat([b[1][0] for b in out]), [b[2] for b in out]

    first, again, other = epoch(7), epoch(7), epoch(8)
    assert first[0] == again[0] == other[0] and first[2] == again[2] == other[2]
    assert torch.equal(first[1], again[1])  # the workers' draws too
    assert not torch.equal(first[1], other[1])
    in_order = [rows[i] for batch in batches for i in batch if i not in bad]
    assert [row for batch in first[0] for row in batch] == in_order


def test_two_workers_share_a_small_cache_of_http_items(http, tmp_path):
    """Two worker processes download into one folder that holds about a fifth of the items,
    evicting each other's files."""
    images, labels = fashion_mnist(40)
    for i, image in enumerate(images):
        http.routes[f"/{i}.png"] = (200, {}, png_bytes(image))
    size = max(len(body) for _, _, body in http.routes.values())
    small = limits(tmp_path, allow_loopback=True, max_file_bytes=size, cache_max_bytes=8 * size)
    rows = [(http.url(f"/{i}.png"), str(labels[i])) for i in range(40)]
    data = dataset.from_rows(rows, "labeled")
    side = ImageSide(media.MediaCache(small))

    seen = []
    for batch_rows, tensors, bad in run(data, batches_of(40, 5), side):
        assert bad == [] and len(tensors[0]) == len(batch_rows)
        seen += batch_rows
        assert media.MediaCache(small).size() <= 8 * size + 2 * size  # a file per process over
    assert sorted(seen) == sorted(rows)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_a_batch_of_only_bad_items(tmp_path):
    data = dataset.from_rows([(str(tmp_path / "a.png"), "0")], "labeled")
    side = ImageSide(media.MediaCache(limits(tmp_path)))
    assert run(data, [[0]], side, workers=1) == [([], {}, [f"{tmp_path / 'a.png'} does not exist"])]
