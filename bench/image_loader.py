"""Image loading throughput and memory: the training loop's media loader versus a plain
torchvision-style dataset, over one epoch of many small PNGs.

Both sides read the same files in the same random batches of 256 (`samplers.random_batches`,
seeded) with 2 DataLoader workers and the same transform (Resize(32), ToTensor). The media
side is exactly what `finetuner.training.loop` runs: `batches.batch_loader` over a labeled
`dataset.Dataset` of (path, label) rows, whose image side's `prepare_one` loads each item
with `media.load_image`, as `ImageModel.prepare_one` does: `MediaCache` (opening the file and
checking its size), PIL's header and the image caps, decoding, and the error handling that
turns a bad file into a dropped row and a message. The baseline is the minimal Dataset most
code starts from, `Image.open(path).convert("RGB")`, under `DataLoader(batch_sampler=...)`.
The difference between the two is the cost of the media layer and of the batch loader.

Each run is a fresh child process, so that its memory figures are its own. Measured per run:
  * images/s over the epoch: from creating the DataLoader's iterator (worker start-up
    included) to the last batch;
  * memory, sampled every 0.25 s: the resident set (RSS) of the main process plus its
    workers, summed, and the same sum of PSS (which shares pages common to the processes
    among them, so it does not count the forked workers' copy-on-write pages three times);
    the peak of each, and the sum at 10% of the batches and at the end, to show that memory
    stays flat while the images stream through.

Usage:
  python bench/image_loader.py                      # 100,000 images, runs ABBA
  python bench/image_loader.py --n 20000 --order AB
  python bench/image_loader.py --images /data/pngs  # keep the generated PNGs for next time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "image_loader.json"
IMPLS = {"A": "media", "B": "baseline"}
PER_FOLDER = 1000  # files per sub-folder, so that no folder holds 100k entries
SIDE = 28  # Fashion-MNIST's size
MiB = 1024 * 1024


# ---------------------------------------------------------------- the images


def image_path(root: Path, i: int) -> Path:
    return root / f"{i // PER_FOLDER:04d}" / f"{i:06d}.png"


def _write_chunk(args: tuple[str, int, int]) -> None:
    import numpy as np
    from PIL import Image

    root, start, stop = Path(args[0]), args[1], args[2]
    rng = np.random.default_rng(start)
    ramp = np.add.outer(np.arange(SIDE), np.arange(SIDE)).astype(np.uint8) * 4
    image_path(root, start).parent.mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        pixels = ramp + rng.integers(0, 32, (SIDE, SIDE), dtype=np.uint8)  # grayscale
        Image.fromarray(pixels).save(image_path(root, i), compress_level=1)


def generate(root: Path, n: int) -> float | None:
    """n grayscale 28x28 PNGs under root, reused when a previous run made at least n.
    Returns the seconds it took, or None if they were reused."""
    marker = root / "count.txt"
    if marker.exists() and int(marker.read_text()) >= n:
        print(f"using {n} PNGs in {root}", flush=True)
        return None
    start = time.perf_counter()
    chunks = [(str(root), i, min(i + PER_FOLDER, n)) for i in range(0, n, PER_FOLDER)]
    with Pool(os.cpu_count() or 2) as pool:
        pool.map(_write_chunk, chunks)
    marker.write_text(str(n))
    seconds = time.perf_counter() - start
    print(f"wrote {n} PNGs to {root} in {seconds:.1f} s", flush=True)
    return seconds


# ---------------------------------------------------------------- one run (a child process)


class MemorySampler:
    """Sums RSS and PSS over this process and its children, every `interval` seconds."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (time, rss MiB, pss MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, float]:
        import psutil

        rss = pss = 0
        for process in [self.me, *self.me.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, pss = rss + info.rss, pss + info.pss
        self.samples.append((time.perf_counter(), rss / MiB, pss / MiB))
        return rss / MiB, pss / MiB

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ImageSide:
    """The worker half of an image model side, as in `ImageModel.prepare_one`."""

    def __init__(self, transform):
        from finetuner.data import media

        self.load, self.transform = media.load_image, transform

    def prepare_one(self, uri: str):
        return self.transform(self.load(uri))


def baseline_dataset(paths, transform):
    """What a plain torchvision-style dataset does: open each file with PIL."""
    from PIL import Image
    from torch.utils.data import Dataset

    class Files(Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            with Image.open(paths[index]) as image:
                return transform(image.convert("RGB"))

    return Files()


def one_run(impl: str, root: Path, n: int, batch_size: int, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from finetuner.data import dataset, samplers
    from finetuner.data.batches import batch_loader

    paths = [str(image_path(root, i)) for i in range(n)]
    transform = transforms.Compose([transforms.Resize(32), transforms.ToTensor()])
    epoch = samplers.random_batches(n, batch_size, torch.Generator().manual_seed(0))
    if impl == "media":
        # As in training: the rows in a pyarrow table, the epoch's batches as index lists.
        data = dataset.from_rows([(path, str(i % 10)) for i, path in enumerate(paths)], "labeled")
        del paths  # training holds only the table
        loader = batch_loader(data, epoch, {0: ImageSide(transform)}, workers, seed=0)
    else:
        loader = DataLoader(
            baseline_dataset(paths, transform), batch_sampler=epoch, num_workers=workers
        )
    n_batches = len(epoch)
    images = bad = 0
    checksum = 0.0
    at_tenth = at_end = None
    with MemorySampler() as sampler:
        cpu_start = cpu_seconds()
        start = time.perf_counter()
        for batch_number, batch in enumerate(loader, 1):
            if impl == "media":
                _, tensors, skipped = batch  # rows, tensors by column, bad items' messages
                bad += len(skipped)
                batch = tensors[0]
            images += len(batch)
            checksum += float(batch[:, 0, 0, 0].sum())  # touch the data, as training would
            if batch_number == max(1, n_batches // 10):
                at_tenth = sampler.sample()
            if batch_number == n_batches:  # the last batch, before the workers exit
                at_end = sampler.sample()
        seconds = time.perf_counter() - start
    del loader  # joins the workers, so that their CPU time is counted
    cpu = cpu_seconds() - cpu_start
    assert images == sum(map(len, epoch)) and bad == 0, (images, bad)
    rss = [s[1] for s in sampler.samples]
    pss = [s[2] for s in sampler.samples]
    return {
        "impl": impl,
        "images": images,
        "bad_items": bad,
        "seconds": round(seconds, 2),
        "images_per_second": round(images / seconds, 1),
        "cpu_per_wall": round(cpu / seconds, 2),
        "cpu_us_per_image": round(cpu / images * 1e6, 1),
        "peak_rss_sum_mib": round(max(rss)),
        "peak_pss_sum_mib": round(max(pss)),
        "rss_sum_at_10pct_mib": round(at_tenth[0]),
        "rss_sum_at_end_mib": round(at_end[0]),
        "pss_sum_at_10pct_mib": round(at_tenth[1]),
        "pss_sum_at_end_mib": round(at_end[1]),
        "memory_samples": len(rss),
        "checksum": round(checksum, 3),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the parent


def table(runs: list[dict]) -> str:
    head = (
        "| run | impl | images/s | seconds | CPU/wall | CPU µs/image | peak RSS sum "
        "| RSS at 10% → end | peak PSS sum | PSS at 10% → end |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {i} | {r['impl']} | {r['images_per_second']:.0f} | {r['seconds']:.1f} "
        f"| {r['cpu_per_wall']:.2f} | {r['cpu_us_per_image']:.0f} "
        f"| {r['peak_rss_sum_mib']} MiB | {r['rss_sum_at_10pct_mib']} → "
        f"{r['rss_sum_at_end_mib']} MiB | {r['peak_pss_sum_mib']} MiB "
        f"| {r['pss_sum_at_10pct_mib']} → {r['pss_sum_at_end_mib']} MiB |"
        for i, r in enumerate(runs, 1)
    ]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of images")
    parser.add_argument("--images", type=Path, help="folder for the PNGs (kept; reused)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--order", default="ABBA", help="A: media, B: baseline")
    parser.add_argument("--impl", choices=sorted(IMPLS.values()), help="one run (the child)")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.impl:  # a child: one epoch, figures to --json-out
        result = one_run(args.impl, args.images, args.n, args.batch_size, args.workers)
        args.json_out.write_text(json.dumps(result))
        return 0

    root = args.images or Path(tempfile.mkdtemp(prefix="image-loader-"))
    try:
        generation_s = generate(root, args.n)
        runs = []
        for letter in args.order:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [
                    sys.executable, __file__, "--impl", IMPLS[letter], "--images", str(root),
                    "--n", str(args.n), "--batch-size", str(args.batch_size),
                    "--workers", str(args.workers), "--json-out", out.name,
                ]  # fmt: skip
                subprocess.run(command, check=True)
                runs.append(json.loads(Path(out.name).read_text()))
            print(f"{runs[-1]['impl']}: {runs[-1]['images_per_second']} images/s", flush=True)
    finally:
        if args.images is None:
            shutil.rmtree(root, ignore_errors=True)
    print(table(runs))
    summary = {
        "settings": {
            "n": args.n,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "batches": "samplers.random_batches, seed 0; the same for both sides",
            "order": args.order,
            "generation_s": generation_s and round(generation_s, 1),
            "image": f"{SIDE}x{SIDE} grayscale PNG, read as RGB, Resize(32) + ToTensor",
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(summary, indent=2))
    print(f"figures in {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
