"""Preprocess at scale: 1,000,000 text pairs from S3 through finetuner's preprocess step,
beside Hugging Face `datasets` doing the comparable work on the same file.

A local S3 server (SeaweedFS, loopback) holds a generated CSV of query,document pairs
(deterministic, about 130 MB, 1% duplicates). Each side runs in a fresh child process so
its peak RSS is its own:

  * finetuner: `steps.preprocess` exactly as the pipeline's step runs it: download from
    S3, check every row, drop duplicates, hold out 10% of the queries, write Parquet
    shards and the data report.
  * datasets: download the same object with boto3, `load_dataset("csv")`, strip and drop
    empty rows, drop duplicates (a pass over a Python set, as `datasets` has no dedup),
    `train_test_split(0.1)`, `to_parquet` both sides. It holds out rows, not queries,
    and checks nothing else: it is a floor on the work, not the same work.

Usage:
  python bench/preprocess_scale.py               # both sides, 1M rows, a table
  python bench/preprocess_scale.py --rows 200000
  python bench/preprocess_scale.py --side finetuner --uri s3://... --json-out x.json
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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
VAL_SPLIT = 0.1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, rows: int) -> None:
    """query,document rows: queries of 2-8 words, documents of 5-30, 1% repeated rows."""
    rng = random.Random(0)
    words = [f"w{i:04d}" for i in range(20_000)]
    with path.open("w", encoding="utf-8") as f:
        f.write("query,document\n")
        previous = []
        for i in range(rows):
            if previous and rng.random() < 0.01:
                f.write(rng.choice(previous))
                continue
            query = " ".join(rng.choices(words, k=rng.randint(2, 8)))
            document = " ".join(rng.choices(words, k=rng.randint(5, 30)))
            line = f"{query} q{i // 3},{document}\n"  # about three documents a query
            if len(previous) < 1000:
                previous.append(line)
            f.write(line)


def run_finetuner(uri: str, out: Path) -> dict:
    from finetuner.catalogue import lookup
    from finetuner.orchestration import steps

    spec = lookup("minilm-l6-en").model_dump()
    start = time.perf_counter()
    counts = steps.preprocess(
        spec, uri, "", VAL_SPLIT, SEED, {}, str(out / "train"), str(out / "eval"),
        str(out / "report.md"),
    )  # fmt: skip
    return {"seconds": time.perf_counter() - start, "counts": counts}


def run_datasets(uri: str, out: Path) -> dict:
    from datasets import disable_progress_bars, load_dataset

    from finetuner.io import storage

    disable_progress_bars()
    start = time.perf_counter()
    local = storage.local_copy(uri, cache_dir=out / "cache")
    ds = load_dataset("csv", data_files=str(local), split="train", cache_dir=str(out / "hf"))
    ds = ds.map(lambda r: {"query": r["query"].strip(), "document": r["document"].strip()})
    ds = ds.filter(lambda r: bool(r["query"]) and bool(r["document"]))
    seen: set = set()

    def first(row) -> bool:
        key = (row["query"], row["document"])
        if key in seen:
            return False
        seen.add(key)
        return True

    ds = ds.filter(first)
    split = ds.train_test_split(test_size=VAL_SPLIT, seed=SEED)
    split["train"].to_parquet(str(out / "train.parquet"))
    split["test"].to_parquet(str(out / "eval.parquet"))
    counts = {"train_rows": len(split["train"]), "eval_rows": len(split["test"])}
    return {"seconds": time.perf_counter() - start, "counts": counts}


def child(side: str, uri: str, json_out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_finetuner if side == "finetuner" else run_datasets)(uri, Path(tmp))
    result["peak_rss_mib"] = peak_rss_mib()
    Path(json_out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--side", choices=["finetuner", "datasets"], help="one child run")
    parser.add_argument("--uri", help="(child) the CSV's s3:// URI")
    parser.add_argument("--json-out", help="(child) where the result goes")
    args = parser.parse_args()
    if args.side:
        child(args.side, args.uri, args.json_out)
        return

    from finetuner.io import s3server, storage

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv_path = tmp / "pairs.csv"
        generate(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        server = s3server.start(tmp / "s3")
        try:
            os.environ.update(server.env())
            server.create_bucket("bench")
            uri = "s3://bench/pairs.csv"
            storage.upload_file(csv_path, uri)
            env = {**os.environ, "FINETUNER_CACHE": str(tmp / "cache")}
            results = {}
            for side in ("finetuner", "datasets"):
                out = tmp / f"{side}.json"
                subprocess.run(
                    [sys.executable, __file__, "--side", side, "--uri", uri,
                     "--json-out", str(out)],
                    check=True, env=env,
                )  # fmt: skip
                results[side] = json.loads(out.read_text())
        finally:
            server.stop()
    print(f"{args.rows:,} rows, {size_mb:.0f} MB CSV from S3, {os.cpu_count()} CPUs")
    print("| side | seconds | rows/s | peak RSS MiB | train rows | eval rows |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, r in results.items():
        rate = args.rows / r["seconds"]
        c = r["counts"]
        print(
            f"| {side} | {r['seconds']:.1f} | {rate:,.0f} | {r['peak_rss_mib']:.0f} | "
            f"{c['train_rows']:,} | {c['eval_rows']:,} |"
        )
    print(json.dumps(results["finetuner"]["counts"]))


if __name__ == "__main__":
    main()
