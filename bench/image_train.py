"""Image training throughput: finetuner's training loop versus a plain PyTorch loop, on the CPU.

Both sides train the same efficientnet-lite0 embedder (its offline package weights) on pairs
of images, batch 32, with the same step: two forward passes (query and document images),
in-batch-negatives cross-entropy at scale 20 (MultipleNegativesRankingLoss), backward,
gradient clipping at norm 1 and AdamW. They differ only in where the pixels come from:

  * finetuner: `finetuner.training.loop.train` on pairs of 32x32 PNG files, decoded, upscaled
    to 224 px and normalised by the model's transform in the DataLoader workers of
    `finetuner.data.batches` (2 by default), exactly as a `finetuner run` trains;
  * plain: random tensors of the same shape, made once: no files, no workers.

So the gap between them is the cost of the data path. Each run is a fresh child process;
the parent alternates them (ABBA by default) so that drift in the machine's load falls on
both sides. Per run, over the steps after the first (warm-up): samples/s (pairs), and the
user and system CPU seconds per step of the process and of its DataLoader workers
(`resource.getrusage`; the workers' own figures are read once they have exited), with the
minor page faults per step.

Usage:
  python bench/image_train.py                       # ABBA, 6 steps a run
  python bench/image_train.py --steps 4 --order AB --image-size 224
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "image_train.json"
IMPLS = {"A": "finetuner", "B": "plain"}
MODEL = "efficientnet-lite0"
SIDE = 32  # the PNGs' size, upscaled by the model's transform
SCALE = 20.0


def usage() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": time.perf_counter(),
        "user": own.ru_utime,
        "sys": own.ru_stime,
        "minflt": own.ru_minflt,
        "workers_user": kids.ru_utime,
        "workers_sys": kids.ru_stime,
    }


def write_pngs(folder: Path, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def model(image_size: int):
    from finetuner.catalogue import lookup
    from finetuner.models.cnn_net import ImageModel

    return ImageModel.pretrained(lookup(MODEL, model_options={"image_size": image_size}))


def run_finetuner(args, folder: Path) -> tuple[list[dict], dict]:
    from finetuner.io.progress import Progress
    from finetuner.training import loop

    stamps: list[dict] = []

    class Timed(Progress):  # train() reports each optimizer step here: stamp it
        def step(self, step, samples, **values):
            stamps.append(usage())
            super().step(step, samples, **values)

    loop.Progress = Timed  # a timing hook; the loop itself is untouched
    paths = write_pngs(folder, 2 * args.batch_size * args.steps)
    pairs = list(zip(paths[::2], paths[1::2], strict=True))
    config = loop.TrainConfig(
        loss="MultipleNegativesRankingLoss", sampler="random", batch_size=args.batch_size,
        epochs=1, max_steps=args.steps, learning_rate=1e-4, warmup_ratio=0.0,
        log_every=1000, num_workers=args.workers,
    )  # fmt: skip
    loop.train(model(args.image_size), pairs, config, device="cpu")
    return stamps, usage()  # the workers have exited: their time is counted


def run_plain(args, folder: Path) -> tuple[list[dict], dict]:
    import torch
    import torch.nn.functional as F

    embedder = model(args.image_size).embedder.train()
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=1e-4, fused=True)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    queries, documents = torch.randn(shape), torch.randn(shape)
    labels = torch.arange(args.batch_size)
    stamps = []
    for _ in range(args.steps):
        scores = embedder(queries) @ embedder(documents).T * SCALE
        F.cross_entropy(scores, labels).backward()
        torch.nn.utils.clip_grad_norm_(embedder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(usage())
    return stamps, usage()


def figures(impl: str, stamps: list[dict], end: dict, args) -> dict:
    import torch

    first, last = stamps[0], stamps[-1]
    steps = len(stamps) - 1
    seconds = last["wall"] - first["wall"]
    per_step = {k: (last[k] - first[k]) / steps for k in ("user", "sys", "minflt")}
    # The workers' time is known once they exit, for the whole run: per step of all steps.
    workers = {k: (end[k] - stamps[0][k]) / steps for k in ("workers_user", "workers_sys")}
    return {
        "impl": impl,
        "steps_timed": steps,
        "samples_per_second": steps * args.batch_size / seconds,
        "user_s_per_step": per_step["user"],
        "sys_s_per_step": per_step["sys"],
        "minor_faults_per_step": per_step["minflt"],
        "workers_user_s_per_step": workers["workers_user"],
        "workers_sys_s_per_step": workers["workers_sys"],
        "cpu_per_wall": (per_step["user"] + per_step["sys"]) * steps / seconds,
        "load_avg_1min_after": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
    }


def table(runs: list[dict]) -> str:
    head = (
        "| run | impl | samples/s | user s/step | sys s/step | workers user+sys s/step "
        "| minor faults/step | CPU/wall | load |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {i} | {r['impl']} | {r['samples_per_second']:.2f} | {r['user_s_per_step']:.1f} "
        f"| {r['sys_s_per_step']:.1f} "
        f"| {r['workers_user_s_per_step'] + r['workers_sys_s_per_step']:.2f} "
        f"| {r['minor_faults_per_step'] / 1e3:.0f}k | {r['cpu_per_wall']:.2f} "
        f"| {r['load_avg_1min_after']:.1f} |"
        for i, r in enumerate(runs, 1)
    ]
    mean = {
        impl: sum(r["samples_per_second"] for r in runs if r["impl"] == impl)
        / max(1, sum(r["impl"] == impl for r in runs))
        for impl in IMPLS.values()
    }
    ratio = mean["finetuner"] / mean["plain"] if mean["plain"] else float("nan")
    summary = (
        f"| | **finetuner / plain (means)** | **{mean['finetuner']:.2f} / {mean['plain']:.2f} "
        f"= {ratio:.2f}×** | | | | | | |"
    )
    return "\n".join([head, *rows, summary])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="steps a run; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="finetuner's DataLoader workers")
    parser.add_argument("--order", default="ABBA", help="A: finetuner, B: plain")
    parser.add_argument("--impl", choices=sorted(IMPLS.values()), help="one run (the child)")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up")

    if args.impl:  # a child: one run, its figures to --json-out
        run = run_finetuner if args.impl == "finetuner" else run_plain
        with tempfile.TemporaryDirectory() as folder:
            stamps, end = run(args, Path(folder))
        args.json_out.write_text(json.dumps(figures(args.impl, stamps, end, args)))
        return 0

    runs = []
    for letter in args.order:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable, __file__, "--impl", IMPLS[letter], "--steps", str(args.steps),
                "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
                "--workers", str(args.workers), "--json-out", out.name,
            ]  # fmt: skip
            subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
            runs.append(json.loads(Path(out.name).read_text()))
        print(f"{runs[-1]['impl']}: {runs[-1]['samples_per_second']:.2f} samples/s", flush=True)
    print(table(runs))
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("impl", "json_out")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(summary, indent=2))
    print(f"figures in {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
