"""The train step across nodes on the CPU: samples/s of a TrainJob of 1 node against 2, and
the communication share of a 2-node step.

Every run is a real TrainJob through the Kubeflow SDK's container backend (podman's Docker
API), one container of the GPU step image per node, 1 process per node (gloo over the job's
container network), exactly as `num_nodes` runs it (finetuner.orchestration.trainjob). Both
sides fine-tune minilm-l6-en on the same WordNet pairs with the same per-process batch; the
1-node and 2-node runs alternate (ABBA), so drift in the machine's load spreads over both.

Measured:
  * samples/s: the training's own figure (the rows of every process per second of the
    steps; it leaves out the containers' start, the data's staging and the model's load).
  * the communication of a step: the time of one all_reduce, between the 2 nodes of a
    TrainJob, of a buffer as large as the model's gradients (what DistributedDataParallel
    sends every step), the median of 10; over the 2-node step time (2 x batch / samples/s).
    DDP overlaps its bucketed all_reduce with the backward pass, so this bounds from above
    the time a step waits for it.

Usage (the image from `make images`; S3 is a local server this script starts):
  FINETUNER_GPU_IMAGE=ghcr.io/finetuner-kfp/finetuner-gpu:0.1.0 python bench/multinode.py
  python bench/multinode.py --rows 512 --batch-size 16 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PAIRS_CSV = ROOT / "examples" / "wordnet_pairs.csv"
MODEL = "minilm-l6-en"
IMAGE = os.environ.get("FINETUNER_GPU_IMAGE", "ghcr.io/finetuner-kfp/finetuner-gpu:0.1.0")


def _rows(n: int) -> list[tuple[str, str]]:
    with open(PAIRS_CSV, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [(q, d) for q, d, *_ in reader][:n]


def train(nodes: int, spec: dict, data: str, batch_size: int, bucket: str) -> float:
    """samples/s of one TrainJob of `nodes` nodes."""
    from finetuner.orchestration import trainjob

    options = {
        "epochs": 1, "batch_size": batch_size, "learning_rate": 5e-5, "log_every": 1000,
        "evaluate_every_epoch": False, "seed": 42, "checkpoint_every": 10_000,
    }  # fmt: skip
    run = uuid.uuid4().hex[:8]
    job = trainjob.driver(trainjob.Nodes(nodes, gpus=1, cpu="1", memory="4Gi", image=IMAGE), run)
    with tempfile.TemporaryDirectory() as out:
        result = job(spec, data, out, options, f"s3://{bucket}/bench/{run}")
    return float(result["samples_per_second"])


def allreduce_node(numel: int) -> None:
    """A TrainJob's function (copied into each node): time all_reduce of numel floats."""
    import statistics
    import time

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    buffer = torch.ones(numel)
    dist.all_reduce(buffer)  # warm-up: connections and buffers
    times = []
    for _ in range(10):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        print(f"ALLREDUCE_SECONDS {statistics.median(times)}", flush=True)
    dist.destroy_process_group()


def allreduce_seconds(numel: int) -> float:
    from kubeflow.trainer import CustomTrainer
    from kubeflow.trainer.options import Name

    from finetuner.orchestration import trainjob

    client, _ = trainjob.trainer_client()
    name = f"allreduce-{uuid.uuid4().hex[:8]}"
    trainer = CustomTrainer(
        func=allreduce_node, func_args={"numel": numel}, image=IMAGE, num_nodes=2
    )
    client.train(runtime=trainjob.RUNTIME_NAME, trainer=trainer, options=[Name(name=name)])
    try:
        client.wait_for_job_status(name, timeout=900, polling_interval=2)
        logs = "".join(client.get_job_logs(name))
    finally:
        client.delete_job(name)
    return float(re.search(r"ALLREDUCE_SECONDS (\S+)", logs).group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds")
    args = parser.parse_args(argv)

    from finetuner import models
    from finetuner.catalogue import ModelSpec, lookup
    from finetuner.data import dataset
    from finetuner.io import s3server
    from finetuner.launch import containers
    from finetuner.orchestration import trainjob

    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "images" / "containers.conf"))
    os.environ[trainjob.BACKEND_ENV] = "container"
    spec = lookup(MODEL, max_length=32).model_dump()
    trainable = sum(
        p.numel() for p in models.pretrained(ModelSpec(**spec)).embedder.parameters()
        if p.requires_grad
    )  # fmt: skip
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder, containers.docker_api():
        containers.check_images(IMAGE)
        # Where the nodes' containers reach it too (trainjob.node_environment).
        server = s3server.start(Path(folder, "s3"), bind="0.0.0.0")
        try:
            os.environ.update(server.env())
            bucket = "bench"
            server.create_bucket(bucket)
            data = str(Path(folder, "train"))
            dataset.write(_rows(args.rows), data)
            for _ in range(args.rounds):
                for nodes in (1, 2, 2, 1):
                    results[nodes].append(train(nodes, spec, data, args.batch_size, bucket))
                    print(f"{nodes} node(s): {results[nodes][-1]:.1f} samples/s", file=sys.stderr)
            comm = allreduce_seconds(trainable)
        finally:
            server.stop()
    one, two = statistics.median(results[1]), statistics.median(results[2])
    step_two = 2 * args.batch_size / two
    print(
        f"\n{MODEL}, {args.rows} WordNet pairs, max_length 32, batch {args.batch_size} per "
        f"process, 1 process per node, {os.cpu_count()} CPU cores shared by the nodes (and "
        f"other work), {2 * args.rounds} runs per side, medians:\n"
    )
    print("| TrainJob | samples/s | step time | all_reduce of the gradients | its share |")
    print("|---|---|---|---|---|")
    print(f"| 1 node | {one:.1f} | {args.batch_size / one * 1000:.0f} ms | - | - |")
    print(
        f"| 2 nodes (gloo) | {two:.1f} | {step_two * 1000:.0f} ms | {comm * 1000:.0f} ms "
        f"({trainable / 1e6:.1f} M floats) | {comm / step_two:.0%} |"
    )
    print(f"\n2 nodes / 1 node: x{two / one:.2f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
