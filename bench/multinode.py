"""Training across processes on the CPU: samples/s of 1 process against 2 (gloo), and the
communication share of a 2-process step.

What a TrainJob node runs is the train step (finetuner.orchestration.steps.train) in a
torchrun process of a group spanning the nodes. Here the 2 "nodes" are 2 torchrun
processes on this machine (`num_gpus=2` on the CPU: the same code, gloo over TCP on
loopback rather than a container network). Both sides fine-tune minilm-l6-en on the same
WordNet pairs with the same per-process batch; the 1-process and 2-process runs alternate
(ABBA), so drift in the machine's load spreads over both.

Measured:
  * samples/s: the training's own figure (rows of every process per second of the steps).
  * the communication of a step: the time of one all_reduce of a buffer as large as the
    model's gradients (what DistributedDataParallel sends every step) between 2 gloo
    processes, the median of 10, over the 2-process step time (2 x batch / samples/s).
    DDP overlaps its bucketed all_reduce with the backward pass, so this is an upper bound
    of the time a step waits for it.

Usage:
  python bench/multinode.py                 # 2 rounds (ABBA), a markdown table
  python bench/multinode.py --rows 256 --batch-size 16 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PAIRS_CSV = ROOT / "examples" / "wordnet_pairs.csv"
MODEL = "minilm-l6-en"


def _rows(n: int) -> list[tuple[str, str]]:
    with open(PAIRS_CSV, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [(q, d) for q, d, *_ in reader][:n]


def train(world: int, spec: dict, data: str, batch_size: int) -> float:
    """samples/s of one training in `world` processes."""
    from finetuner.orchestration import steps

    options = {
        "epochs": 1, "batch_size": batch_size, "learning_rate": 5e-5, "log_every": 1000,
        "evaluate_every_epoch": False, "seed": 42,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        result = steps.train(spec, data, out, options, num_gpus=world)
    return float(result["samples_per_second"])


def _allreduce(rank: int, world: int, port: int, numel: int, folder: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        buffer = torch.ones(numel)
        dist.all_reduce(buffer)  # warm-up: connections and buffers
        times = []
        for _ in range(10):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buffer)
            times.append(time.perf_counter() - start)
        if rank == 0:
            Path(folder, "seconds").write_text(str(statistics.median(times)))
    finally:
        dist.destroy_process_group()


def allreduce_seconds(numel: int, world: int = 2) -> float:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_allreduce, args=(world, port, numel, folder), nprocs=world)
        return float(Path(folder, "seconds").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds")
    args = parser.parse_args(argv)

    from finetuner import models
    from finetuner.catalogue import ModelSpec, lookup
    from finetuner.data import dataset

    spec = lookup(MODEL, max_length=32).model_dump()
    trainable = sum(
        p.numel() for p in models.pretrained(ModelSpec(**spec)).embedder.parameters()
        if p.requires_grad
    )  # fmt: skip
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        data = str(Path(folder, "train"))
        dataset.write(_rows(args.rows), data)
        for _ in range(args.rounds):
            for world in (1, 2, 2, 1):
                results[world].append(train(world, spec, data, args.batch_size))
                print(f"{world} process(es): {results[world][-1]:.1f} samples/s", file=sys.stderr)
    comm = allreduce_seconds(trainable)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    step_two = 2 * args.batch_size / two
    print(
        f"\n{MODEL}, {args.rows} WordNet pairs, batch {args.batch_size} per process, "
        f"{os.cpu_count()} CPU cores (shared), {2 * args.rounds} runs per side, medians:\n"
    )
    print("| processes | samples/s | step time | all_reduce of the gradients | its share |")
    print("|---|---|---|---|---|")
    print(f"| 1 | {one:.1f} | {args.batch_size / one * 1000:.0f} ms | - | - |")
    print(
        f"| 2 (gloo) | {two:.1f} | {step_two * 1000:.0f} ms | {comm * 1000:.0f} ms "
        f"({trainable / 1e6:.1f} M floats) | {comm / step_two:.0%} |"
    )
    print(f"\n2 processes / 1: x{two / one:.2f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
