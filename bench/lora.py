"""LoRA adapters against full fine-tuning, at equal steps, on the CPU.

Both fine-tune minilm-l6-en on the WordNet sample's training split with finetuner's loop
(MultipleNegativesRankingLoss, same batches, same steps); LoRA trains rank-`--lora-r`
adapters of the attention and feed-forward projections (lora_target_modules auto) at its
own learning rate. Each run is a fresh child process (for its peak RSS), in the order
`--order` (A: full, B: lora; ABBA interleaves them against drift in the machine's load).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/lora.py

Prints a markdown table: samples/s over the training steps (end of step 1 to the end of
the last), peak RSS of the process, nDCG@10 on the held-out queries before and after, and
the size of what a run has to ship besides the base: the adapter, or the whole model.
"""

from __future__ import annotations

import argparse
import json
import math
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
MODEL = "minilm-l6-en"
IMPLS = {"A": "full", "B": "lora"}
SEED = 42
K = 10


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> dict:
    from finetuner.catalogue import lookup
    from finetuner.data import pairs as data
    from finetuner.evaluation import evaluate
    from finetuner.io.progress import Progress
    from finetuner.models import TextModel
    from finetuner.training import loop as ft_train
    from finetuner.training import lora

    pairs = data.read_pairs(str(PAIRS_CSV))
    train_pairs, eval_pairs = data.split_by_query(pairs, 0.2, SEED)
    eval_set = data.EvalSet.from_pairs(eval_pairs)
    ends: list[float] = []

    class TimedProgress(Progress):
        def step(self, step, samples, **values):  # right after each optimizer step
            ends.append(time.perf_counter())
            super().step(step, samples, **values)

    ft_train.Progress = TimedProgress  # timing hook only; the loop itself is untouched
    model = TextModel.pretrained(lookup(MODEL, max_length=args.max_length))
    before = evaluate.evaluate(model, eval_set, k=K)[f"ndcg@{K}"]
    is_lora = args.impl == "lora"
    config = ft_train.TrainConfig(
        loss="MultipleNegativesRankingLoss",
        epochs=math.ceil(args.steps / (len(train_pairs) // args.batch_size)),
        batch_size=args.batch_size,
        learning_rate=args.lora_lr if is_lora else args.lr,
        lora_r=args.lora_r if is_lora else 0,
        seed=SEED,
        max_steps=args.steps,
        evaluate_every_epoch=False,
    )
    ft_train.train(model, train_pairs, config, device="cpu")
    after = evaluate.evaluate(model, eval_set, k=K)[f"ndcg@{K}"]
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        model_bytes = Path(tmp, "model.safetensors").stat().st_size
        adapter = lora.save_adapter(model, tmp)
        shipped = (adapter / lora.ADAPTER_WEIGHTS).stat().st_size if adapter else model_bytes
    return {
        "impl": args.impl,
        "samples_per_second": (len(ends) - 1) * args.batch_size / (ends[-1] - ends[0]),
        "peak_rss_mib": peak_rss_mib(),
        "ndcg_before": before,
        "ndcg_after": after,
        "shipped_mib": shipped / 2**20,
        "model_mib": model_bytes / 2**20,
    }


def parent(args) -> None:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, letter in enumerate(args.order, start=1):
            impl, out = IMPLS[letter], Path(tmp) / f"run{i}.json"
            cmd = [sys.executable, __file__, "--impl", impl, "--json-out", str(out)]
            for name in ("steps", "batch_size", "max_length", "lr", "lora_lr", "lora_r"):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            print(f"run {i}/{len(args.order)}: {impl} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"run {i} ({impl}) failed:\n{proc.stdout}\n{proc.stderr}")
            runs.append(json.loads(out.read_text()))
    print(
        f"{args.steps} steps of {args.batch_size} pairs, max length {args.max_length}; full: "
        f"lr {args.lr:g}; lora: r {args.lora_r}, alpha {2 * args.lora_r}, lr {args.lora_lr:g}; "
        f"order {args.order}\n"
    )
    print("| training | samples/s | peak RSS MiB | nDCG@10 before | nDCG@10 after | shipped MiB |")
    print("|---|---|---|---|---|---|")
    keys = ("samples_per_second", "peak_rss_mib", "ndcg_before", "ndcg_after", "shipped_mib")
    for impl in dict.fromkeys(r["impl"] for r in runs):
        mine = [r for r in runs if r["impl"] == impl]
        m = {k: statistics.mean(r[k] for r in mine) for k in keys}
        what = "adapter" if impl == "lora" else "model"
        print(
            f"| {impl} (mean of {len(mine)}) | {m['samples_per_second']:.1f} | "
            f"{m['peak_rss_mib']:.0f} | {m['ndcg_before']:.4f} | {m['ndcg_after']:.4f} | "
            f"{m['shipped_mib']:.2f} ({what}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning's")
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA's")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--order", default="ABBA", help="A: full, B: lora")
    parser.add_argument("--impl", choices=sorted(IMPLS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        Path(args.json_out).write_text(json.dumps(child(args)))
    else:
        parent(args)


if __name__ == "__main__":
    main()
