"""CPU encode throughput of the int8 ONNX export against fp32 ONNX and PyTorch fp32, side by
side, and the int8 gate's metric change, for minilm-l6-en and efficientnet-lite0.

Each model is exported with finetuner.export.publish.export (the gate set to keep the int8
file whatever its drop, so that it can be timed), then the three are timed in interleaved
rounds (torch, fp32 ONNX, int8 ONNX, again and again), each encoding the same items through
its own preprocessing. Prints a markdown table.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/int8.py
"""

from __future__ import annotations

import argparse
import csv
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDNET = ROOT / "examples" / "wordnet_pairs.csv"
# Debian's dataset-fashion-mnist package.
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def text_data(n_eval: int, n_items: int):
    with WORDNET.open(encoding="utf-8") as f:
        rows = [tuple(r) for r in list(csv.reader(f))[1:]]
    items = [t for pair in rows[n_eval:] for t in pair][:n_items]
    return rows[:n_eval], "pairs", items


def image_data(folder: Path, n_eval: int, n_items: int):
    from PIL import Image

    n = n_eval + n_items
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(image).convert("RGB").save(path)
        paths.append(str(path))
    rows = [(p, str(int(label))) for p, label in zip(paths[:n_eval], labels, strict=False)]
    return rows, "labeled", paths[n_eval:]


def measure(name: str, args, folder: Path) -> list[dict]:
    from finetuner import models
    from finetuner.catalogue import lookup
    from finetuner.data import dataset
    from finetuner.export import inference
    from finetuner.export.publish import export

    if name.startswith("efficientnet"):
        rows, kind, items = image_data(folder, args.eval_rows, args.items)
        spec = lookup(name)
    else:
        rows, kind, items = text_data(args.eval_rows, args.items)
        spec = lookup(name, max_length=args.max_length)
    model = models.pretrained(spec)
    out = folder / "export"
    metrics = {"k": 10, "kind": kind, "before": {}, "after": {}}
    export(model, metrics, str(out), eval_data=dataset.from_rows(rows, kind), int8_max_drop=1.0)
    import json

    gate = json.loads((out / "manifest.json").read_text())["int8"]
    encoders = {
        "torch fp32": model,
        "ONNX fp32": inference.get_model(str(out), is_onnx=True),
        "ONNX int8": inference.get_model(str(out), is_onnx=True, int8=True),
    }
    for encoder in encoders.values():  # warm-up: first-call allocations, lazy loads
        encoder.encode(items[: args.batch_size], batch_size=args.batch_size)
    rates: dict[str, list[float]] = {k: [] for k in encoders}
    for _ in range(args.rounds):
        for label, encoder in encoders.items():
            start = time.perf_counter()
            encoder.encode(items, batch_size=args.batch_size)
            rates[label].append(len(items) / (time.perf_counter() - start))
    base = statistics.median(rates["torch fp32"])
    sizes = {
        "torch fp32": (out / "model" / "model.safetensors").stat().st_size,
        "ONNX fp32": (out / "onnx" / "model.onnx").stat().st_size,
        "ONNX int8": (out / "onnx" / "model.int8.onnx").stat().st_size,
    }
    return [
        {
            "model": name,
            "encoder": label,
            "rate": statistics.median(r),
            "speedup": statistics.median(r) / base,
            "mib": sizes[label] / 2**20,
            "metric": gate["metric"],
            "value": gate["int8"] if label == "ONNX int8" else gate["fp32"],
        }  # fmt: skip
        for label, r in rates.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm-l6-en", "efficientnet-lite0"])
    parser.add_argument("--items", type=int, default=512, help="items encoded per round")
    parser.add_argument("--eval-rows", type=int, default=200, help="rows of the gate's eval set")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    args = parser.parse_args()

    import os

    # onnxruntime's CPU provider reads OMP settings at session creation; torch is set below.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    _limit_onnxruntime_threads(args.threads)
    results = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            results += measure(name, args, Path(folder))
    print(f"\n{args.items} items a round, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds\n")  # fmt: skip
    print("| model | encoder | items/s | vs torch fp32 | file MiB | gate metric (eval set) |")
    print("|---|---|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['model']} | {r['encoder']} | {r['rate']:.1f} | {r['speedup']:.2f}x | "
              f"{r['mib']:.1f} | {r['metric']} {r['value']:.4f} |")  # fmt: skip


def _limit_onnxruntime_threads(threads: int) -> None:
    """Every InferenceSession made from here on runs on `threads` intra-op threads, as torch."""
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def init(self, path, sess_options=None, *args, **kwargs):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.intra_op_num_threads = threads
        sess_options.inter_op_num_threads = 1
        original(self, path, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = init


if __name__ == "__main__":
    main()
