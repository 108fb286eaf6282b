"""How much nDCG@10 do Matryoshka embeddings keep when they are truncated?

Fine-tunes minilm-l6-en (384-d) on the WordNet sample pairs (examples/wordnet_pairs.csv)
twice from the same weights, with the same data, seed and settings: once with the plain
loss (MultipleNegativesRankingLoss) and once with matryoshka_dims [384, 192, 96, 48]
(1, 1/2, 1/4 and 1/8 of the width, weight 1 each). Both models, and the pretrained one,
are then evaluated on held-out pairs at each width: nDCG@10 of the first N dimensions,
renormalised, and its share of the same model's full-width nDCG@10.

sentence-transformers reports 98.4% of the full-width performance kept at 8.3% of the
dimensions for its Matryoshka models (its blog post on Matryoshka embeddings, on STSb);
this measures our implementation on our sample data.

Usage:
  python bench/matryoshka.py                       # 1600 pairs to train, 400 held out
  python bench/matryoshka.py --train-rows 480 --max-length 32 --learning-rate 1e-4

Prints a Markdown table and writes every figure to bench/results/matryoshka.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "wordnet_pairs.csv"
RESULTS = ROOT / "bench" / "results" / "matryoshka.json"
WIDTH = 384
FRACTIONS = (1, 2, 4, 8)  # the width divided by each


def split(train_rows: int, eval_rows: int, seed: int) -> tuple[list, list]:
    with open(DATA, encoding="utf-8", newline="") as f:
        pairs = [tuple(r) for r in list(csv.reader(f))[1:]]
    random.Random(seed).shuffle(pairs)
    return pairs[:train_rows], pairs[train_rows : train_rows + eval_rows]


def measure(name: str, dims: list[int], train_pairs, eval_set, args) -> dict:
    from finetuner.catalogue import lookup
    from finetuner.evaluation.evaluate import evaluate
    from finetuner.models import TextModel
    from finetuner.training.loop import TrainConfig, train

    model = TextModel.pretrained(lookup("minilm-l6-en", max_length=args.max_length))
    seconds = 0.0
    if name != "pretrained":
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
            seed=args.seed, log_every=25, matryoshka_dims=dims,
        )  # fmt: skip
        start = time.perf_counter()
        train(model, train_pairs, config)
        seconds = time.perf_counter() - start
    widths = [WIDTH // f for f in FRACTIONS]
    metrics = evaluate(model, eval_set, 10, dims=widths)
    ndcg = {w: metrics["ndcg@10" if w == WIDTH else f"ndcg@10@dim{w}"] for w in widths}
    print(f"{name}: {ndcg} ({seconds:.0f} s training)", file=sys.stderr, flush=True)
    return {"run": name, "matryoshka_dims": dims, "train_seconds": seconds, "ndcg@10": ndcg}


def table(results: list[dict]) -> str:
    widths = [WIDTH // f for f in FRACTIONS]
    head = "| model | " + " | ".join(f"nDCG@10 at {w} ({100 / f:.1f}% of dims)"
                                     for w, f in zip(widths, FRACTIONS, strict=True))  # fmt: skip
    lines = [head + " |", "|---" * (len(widths) + 1) + "|"]
    for r in results:
        full = r["ndcg@10"][WIDTH]
        cells = [f"{full:.4f}"] + [
            f"{r['ndcg@10'][w]:.4f} ({100 * r['ndcg@10'][w] / full:.1f}% kept)" for w in widths[1:]
        ]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=1600)
    parser.add_argument("--eval-rows", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from finetuner.data.pairs import EvalSet

    train_pairs, held_out = split(args.train_rows, args.eval_rows, args.seed)
    eval_set = EvalSet.from_pairs(held_out)
    matryoshka = [WIDTH // f for f in FRACTIONS]
    runs = [
        ("pretrained", [], "pretrained (no training)"),
        ("plain", [], "fine-tuned, plain loss"),
        ("matryoshka", matryoshka, f"fine-tuned, matryoshka_dims {matryoshka}"),
    ]
    results = []
    for name, dims, label in runs:
        results.append({**measure(name, dims, train_pairs, eval_set, args), "label": label})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    print(
        f"{len(train_pairs)} training pairs, {len(held_out)} held out; {args.epochs} epoch(s), "
        f"batch {args.batch_size}, learning rate {args.learning_rate:g}, max_length "
        f"{args.max_length}, seed {args.seed}.\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
