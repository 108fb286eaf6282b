"""Serving throughput and latency on the CPU: `finetuner serve` (PyTorch and --onnx) against
the peer, sentence-transformers behind a minimal FastAPI route (what one would otherwise
write), all serving the same minilm-l6-en export.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python bench/serve.py

Each server runs in its own process; the rounds are interleaved (A B C A B C ...) so that a
busy machine slows each the same. A round is `--clients` threads, each sending requests of
`--batch` texts (real definitions from the sample data) for `--seconds`, one after another.
Prints a markdown table: requests/s, p50 and p99 latency over all rounds.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXTS_FILE = ROOT / "examples" / "wordnet_pairs.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peer(folder: str, port: int) -> None:
    """The peer server: SentenceTransformer.encode behind one FastAPI route."""
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device="cpu")
    app = FastAPI()
    lock = threading.Lock()

    @app.post("/embed")
    def embed(body: dict):  # a sync route: FastAPI runs it in its thread pool
        with lock:
            return {"embeddings": model.encode(body["texts"]).tolist()}

    @app.get("/ready")
    def ready():
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def texts(n: int) -> list[str]:
    with open(TEXTS_FILE, encoding="utf-8", newline="") as f:
        return [row[1] for row in list(csv.reader(f))[1 : n + 1]]


def start(command: list[str], ready: str) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    for _ in range(600):
        try:
            if httpx.get(ready, timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{command} did not get ready")


def round_of(url: str, body_of, items: list[str], args) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + args.seconds

    def client(seed: int):
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < end:
                batch = [items[i] for i in rng.choice(len(items), args.batch)]
                t = time.perf_counter()
                http.post(url, json=body_of(batch)).raise_for_status()
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="texts per request")
    parser.add_argument("--seconds", type=float, default=15, help="length of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server")
    parser.add_argument("--peer", nargs=2, metavar=("FOLDER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer(args.peer[0], int(args.peer[1]))

    from finetuner.catalogue import lookup
    from finetuner.export.publish import export
    from finetuner.models import TextModel

    tmp = tempfile.mkdtemp(prefix="serve-bench-")
    folder = f"{tmp}/export"
    model = TextModel.pretrained(lookup("minilm-l6-en"))
    export(model, {"k": 10, "before": {}, "after": {}}, folder)
    items = texts(500)
    finetuner = [sys.executable, "-m", "finetuner", "serve", folder, "--name", "minilm"]
    servers = {}
    for name, extra in (("finetuner serve", []), ("finetuner serve --onnx", ["--onnx"])):
        port = free_port()
        servers[name] = (
            start(
                [*finetuner, "--port", str(port), *extra],
                f"http://127.0.0.1:{port}/v2/health/ready",
            ),
            f"http://127.0.0.1:{port}/v1/embeddings",
            lambda batch: {"model": "minilm", "input": batch},
        )
    port = free_port()
    servers["sentence-transformers + FastAPI (peer)"] = (
        start([sys.executable, __file__, "--peer", f"{folder}/model", str(port)], f"http://127.0.0.1:{port}/ready"),
        f"http://127.0.0.1:{port}/embed",
        lambda batch: {"texts": batch},
    )  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name in servers}
    seconds = dict.fromkeys(servers, 0.0)
    try:
        for _ in range(args.rounds):
            for name, (_, url, body_of) in servers.items():
                results[name] += round_of(url, body_of, items, args)
                seconds[name] += args.seconds
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    print(f"\n{args.clients} clients, {args.batch} texts per request, {args.rounds} x "
          f"{args.seconds:g} s per server, interleaved\n")  # fmt: skip
    print("| server | requests/s | texts/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, latencies in results.items():
        ms = np.array(latencies) * 1000
        rate = len(latencies) / seconds[name]
        print(
            f"| {name} | {rate:.1f} | {rate * args.batch:.0f} | {np.percentile(ms, 50):.0f} | "
            f"{np.percentile(ms, 99):.0f} |"
        )


if __name__ == "__main__":
    main()
