"""Data-parallel training on several GPUs of one node: one process per GPU, started by
torchrun (`torch.distributed.run`).

Every process builds the same model and trains on its own share of each epoch's batches.
A training step runs as one forward pass of a DistributedDataParallel wrapper (see
`Context.data_parallel`), which starts every process from process 0's weights and averages
the gradients across the processes in the backward pass, so the weights stay identical
everywhere. Process 0 alone prints progress, writes checkpoints and saves the model.
Without CUDA (e.g. in tests) the processes run on the CPU and talk through gloo.

This module knows nothing of what a process runs: `launch` starts a module's entry point
(`run_process`), so the training layer does not import the steps that call it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.io.staging import stage_dir


@dataclass
class Context:
    rank: int
    world: int
    device: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: list) -> list:
        """This process's share of an epoch's batches: every world-th one. Each process gets
        as many, so every step has a batch in each."""
        usable = len(batches) // self.world * self.world
        return batches[self.rank : usable : self.world]

    def data_parallel(self, modules: list, forward: Callable):
        """A DistributedDataParallel of `modules` (the embedder, and a loss's own weights)
        that, called, returns `forward(*args)`: a whole training step's forward passes in
        one call. Its construction gives every process process 0's weights and buffers; the
        backward pass of its result averages the gradients across the processes.

        One call per step, whatever the step does inside (a query and a document side,
        a forward pass per length bucket, two towers), so every process makes the same
        calls. Parameters that a step never reaches (a text backbone's unused pooler)
        are found on the first step: the graph is static (`static_graph`), as each step
        reaches the same ones. Frozen parameters are no part of it."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        class Step(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.parts = torch.nn.ModuleList(modules)

            def forward(self, *args):
                return forward(*args)

        cuda = self.device.startswith("cuda")
        return DistributedDataParallel(
            Step(),
            device_ids=[torch.device(self.device).index] if cuda else None,
            static_graph=True,
        )

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes: a step's loss is its global batch's, on
        every node."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world

    def all(self, flag: bool) -> bool:
        """Whether `flag` holds in every process (so that all take a step, or none)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())


def context() -> Context | None:
    """The process's place in a torchrun launch, with the process group started; None
    outside one."""
    if "LOCAL_RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Context(rank, world, f"cuda:{local}" if cuda else "cpu")


def check_processes(num_gpus: int) -> None:
    import torch

    if num_gpus < 1:
        raise FinetunerError(f"parameter num_gpus: must be >= 1, got {num_gpus}.")
    available = torch.cuda.device_count()
    if available and num_gpus > available:
        raise FinetunerError(
            f"parameter num_gpus: {num_gpus} requested, but this node has {available} GPUs."
        )


def launch(num_gpus: int, module: str, kwargs: dict) -> dict:
    """Run a module's torchrun entry point in `num_gpus` processes: `python -m module
    kwargs.json result.json`, which calls `run_process`. The result of process 0."""
    import torch

    check_processes(num_gpus)
    if not torch.cuda.is_available():
        print(
            f"no CUDA device: training in {num_gpus} CPU processes (gloo)",
            file=sys.stderr,
            flush=True,
        )
    with stage_dir("ddp") as tmp:
        payload, result = Path(tmp, "kwargs.json"), Path(tmp, "result.json")
        payload.write_text(json.dumps(kwargs))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={num_gpus}", "-m", module, str(payload), str(result),
        ]  # fmt: skip
        status = subprocess.run(command).returncode
        if status != 0 or not result.exists():
            raise FinetunerError(
                f"distributed training in {num_gpus} processes failed (exit status {status}); "
                "the processes' errors are above."
            )
        return json.loads(result.read_text())


def run_process(function: Callable[..., dict], argv: list[str]) -> int:
    """One process of a torchrun launch (a module's `__main__`, see `launch`): call
    `function` with the launch's keywords, and let process 0 write its result."""
    import torch.distributed as dist

    payload, result_path = argv
    ctx = context()
    try:
        result = function(**json.loads(Path(payload).read_text()))
        if ctx is None or ctx.main:
            Path(result_path).write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
