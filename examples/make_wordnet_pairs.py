"""Make the sample data: (term, definition) pairs from WordNet 3.0.

Reads Debian's `wordnet-base` files (/usr/share/wordnet) directly and writes a two-column
CSV, one pair a row, in Finetuner's format. Only nouns whose term has a single sense are
kept, so that each query has exactly one right answer.

    python examples/make_wordnet_pairs.py --out examples/wordnet_pairs.csv
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def sense_counts(index_file: Path) -> dict[str, int]:
    """Lemma -> number of synsets, from WordNet's index file."""
    counts = {}
    for line in index_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):  # licence header
            continue
        fields = line.split()
        counts[fields[0]] = int(fields[2])
    return counts


def synsets(data_file: Path):
    """Yield (lemmas, definition) for every synset of a WordNet data file."""
    for line in data_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        n_words = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i] for i in range(n_words)]
        # The gloss is a definition followed by quoted examples; keep the definition.
        parts = [p.strip() for p in gloss.split(";")]
        definition = "; ".join(p for p in parts if p and not p.startswith('"'))
        yield lemmas, definition.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=Path("examples/wordnet_pairs.csv"))
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    counts = sense_counts(args.wordnet / "index.noun")
    pairs = {}
    for lemmas, definition in synsets(args.wordnet / "data.noun"):
        lemma = lemmas[0]
        term = lemma.split("(")[0].replace("_", " ")
        n_words = len(definition.split())
        if counts.get(lemma.lower()) != 1 or not term.isascii() or not 4 <= n_words <= 25:
            continue
        if len(term) < 4 or term.lower() in definition.lower():
            continue  # the answer must not be given away by string matching
        pairs.setdefault(term, definition)

    rng = random.Random(args.seed)
    chosen = rng.sample(sorted(pairs.items()), args.size)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "document"])
        writer.writerows(chosen)
    print(f"wrote {len(chosen)} pairs of {len(pairs)} candidates to {args.out}")


if __name__ == "__main__":
    main()
