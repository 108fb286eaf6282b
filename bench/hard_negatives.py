"""nDCG@10 of MultipleNegativesRankingLoss with mined hard negatives versus plain in-batch
negatives, on the same pairs, weights, seed and steps.

Two data sets:
  * wordnet: the sample data, examples/wordnet_pairs.csv (term -> definition);
  * examples: WordNet's usage examples (Debian's `wordnet-base`, /usr/share/wordnet) as
    queries and their synset's definition as the document: a query names its word in a
    sentence, and synsets of one word (bank, bank, bank ...) are each other's hard negatives.

For each data set, the queries are split 80/20 (finetuner.data.pairs.held_out, seeded);
both sides train minilm-l6-en for the same epochs with the same batches' seed; nDCG@10 is
finetuner's evaluator on the held-out pairs (their documents as the corpus). The sides run
interleaved, plain then mined, per data set, so drift in the machine's load falls on both.
The mined side's time includes the mining. Prints a markdown table.

Usage:
  python bench/hard_negatives.py                    # both data sets, 600 pairs each
  python bench/hard_negatives.py --pairs 300 --epochs 1 --sets wordnet
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PAIRS_CSV = ROOT / "examples" / "wordnet_pairs.csv"
WORDNET = Path("/usr/share/wordnet")
MODEL = "minilm-l6-en"
SEED = 42


def wordnet_sample(n: int) -> list[tuple[str, str]]:
    with open(PAIRS_CSV, encoding="utf-8", newline="") as f:
        return [tuple(row) for row in list(csv.reader(f))[1:]][:n]


def wordnet_examples(n: int) -> list[tuple[str, str]]:
    """(usage example, definition) of noun and verb synsets whose gloss quotes one, from
    the start of the data files: words close in the alphabet, with several senses."""
    out = []
    for pos in ("noun", "verb"):
        with open(WORDNET / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # the license header
                gloss = line.split(" | ", 1)[1].strip()
                definition, _, examples = gloss.partition('; "')
                if examples:
                    out.append((examples.split('"')[0].strip(), definition.strip()))
    random.Random(SEED).shuffle(out)
    return out[:n]


def split(pairs, seed: int = SEED):
    from finetuner.data.pairs import digest, held_out

    groups = {digest(q): q for q, _ in pairs}
    held = held_out(set(groups), 0.2, seed)
    train = [p for p in pairs if digest(p[0]) not in held]
    return train, [p for p in pairs if digest(p[0]) in held]


def run_side(train, test, hard: int, args) -> dict:
    from finetuner import models
    from finetuner.catalogue import lookup
    from finetuner.data import dataset
    from finetuner.evaluation.evaluate import evaluate_dataset
    from finetuner.synthesis.hard_negatives import MiningOptions, mine_negatives
    from finetuner.training.loop import TrainConfig
    from finetuner.training.loop import train as run_training

    started = time.perf_counter()
    spec = lookup(MODEL, max_length=args.max_length)
    model = models.pretrained(spec)
    data = dataset.from_rows(train)
    if hard:
        opts = MiningOptions(num=hard, range_min=args.range_min, range_max=args.range_max,
                             margin=args.margin)  # fmt: skip
        negatives, _ = mine_negatives(data, model, opts)
        import pyarrow as pa

        column = pa.array(negatives, type=pa.list_(pa.string()))
        data = dataset.Dataset("pairs", data.table.append_column(dataset.NEGATIVES, column))
    config = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, seed=SEED,
                         evaluate_every_epoch=False, checkpoint_every=10**9)  # fmt: skip
    before = evaluate_dataset(model, dataset.from_rows(test), 10)["ndcg@10"]
    run_training(model, data, config, device="cpu")
    after = evaluate_dataset(model, dataset.from_rows(test), 10)["ndcg@10"]
    return {"before": before, "after": after, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--sets", default="wordnet,examples")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--hard-negatives", type=int, default=2)
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--range-max", type=int, default=20)
    parser.add_argument("--margin", type=float, default=0.05)
    args = parser.parse_args()
    sources = {"wordnet": wordnet_sample, "examples": wordnet_examples}
    rows = []
    for name in args.sets.split(","):
        train, test = split(sources[name](args.pairs))
        plain = run_side(train, test, 0, args)
        mined = run_side(train, test, args.hard_negatives, args)
        rows.append((name, len(train), len(test), plain, mined))
    print(f"\n{args.hard_negatives} hard negatives per query, range {args.range_min}-"
          f"{args.range_max - 1}, absolute margin {args.margin}; {args.epochs} epoch(s), "
          f"batch {args.batch_size}, {MODEL}, CPU\n")  # fmt: skip
    print("| data | train / test pairs | nDCG@10 pretrained | in-batch only | "
          "+ hard negatives | gain | seconds (in-batch / mined) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, n_train, n_test, plain, mined in rows:
        print(
            f"| {name} | {n_train} / {n_test} | {plain['before']:.4f} | {plain['after']:.4f} "
            f"| {mined['after']:.4f} | {mined['after'] - plain['after']:+.4f} | "
            f"{plain['seconds']:.0f} / {mined['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
