"""Data-parallel training: torchrun processes (gloo on the CPU here) that share the batches
and average their gradients."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from finetuner import dataset, distributed, steps
from finetuner.catalogue import lookup
from finetuner.errors import FinetunerError
from finetuner.models.folder import read_spec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    ctx = distributed.Context(rank, world, "cpu")
    torch.manual_seed(rank)  # different starts, which broadcast makes equal
    module = torch.nn.Linear(3, 2)
    ctx.broadcast(module)
    # Each process's gradient is its rank + 1 everywhere; the average is 1.5.
    for p in module.parameters():
        p.grad = torch.full_like(p, rank + 1.0)
    ctx.average_gradients(list(module.parameters()))
    shard = ctx.shard(list(range(7)))
    out.put((rank, module.weight.detach().tolist(), module.weight.grad.tolist(), shard))
    dist.destroy_process_group()


def test_processes_start_alike_average_gradients_and_share_the_batches():
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(2, _free_port(), queue), nprocs=2)
    results = sorted(queue.get() for _ in range(2))
    (_, weight0, grad0, shard0), (_, weight1, grad1, shard1) = results
    assert weight0 == weight1
    assert grad0 == grad1 == [[1.5] * 3] * 2
    assert (shard0, shard1) == ([0, 2, 4], [1, 3, 5])  # the 7th batch is left out


def test_train_step_in_two_processes(tiny_bert, pairs_csv, tmp_path):
    spec = lookup("minilm-l6-en", max_length=16, weights=str(tiny_bert(tmp_path / "bert")))
    dataset.write([tuple(r) for r in _rows(pairs_csv(64))], tmp_path / "train")
    result = steps.train(
        spec.model_dump(), str(tmp_path / "train"), str(tmp_path / "model"), {
            "loss": "MultipleNegativesRankingLoss", "epochs": 2, "batch_size": 8,
            "learning_rate": 1e-3, "seed": 3, "eval_k": 10,
        }, num_gpus=2,
    )  # fmt: skip
    # 64 pairs in batches of 8 make 8 batches an epoch: 4 steps in each process.
    assert result["steps"] == 8 and len(result["history"]) == 2
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]
    assert read_spec(tmp_path / "model").name == "minilm-l6-en"
    history = json.loads((tmp_path / "model" / steps.HISTORY_FILE).read_text())
    assert history == result["history"]


def _rows(path):
    import csv

    with open(path) as f:
        return list(csv.reader(f))[1:]


def test_more_gpus_than_the_node_has_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(FinetunerError, match="num_gpus: 4 requested, but this node has 2"):
        distributed.check_processes(4)
    with pytest.raises(FinetunerError, match="num_gpus: must be >= 1"):
        distributed.check_processes(0)
