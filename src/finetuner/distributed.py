"""Data-parallel training on several GPUs of one node: one process per GPU, started by
torchrun (`torch.distributed.run`).

Every process builds the same model from the same seed and trains on its own share of each
epoch's batches; after each backward pass the gradients are averaged across the processes
(as DistributedDataParallel does), so the weights stay identical everywhere. Process 0
alone prints progress, writes checkpoints and saves the model. Without CUDA (e.g. in tests)
the processes run on the CPU and talk through gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.staging import stage_dir


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
        as many, so the gradient averaging of every step has all of them."""
        usable = len(batches) // self.world * self.world
        return batches[self.rank : usable : self.world]

    def broadcast(self, module) -> None:
        """Give every process process 0's weights and buffers (a projection head's random
        start, say), so that all begin alike."""
        import torch.distributed as dist

        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)

    def average_gradients(self, parameters: list) -> None:
        """All-reduce the gradients as one flat buffer, and divide by the world size."""
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


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


def launch(num_gpus: int, kwargs: dict) -> dict:
    """Run finetuner.steps.train(**kwargs) in `num_gpus` processes through torchrun; the
    result of process 0."""
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
            f"--nproc-per-node={num_gpus}", "-m", "finetuner.distributed",
            str(payload), str(result),
        ]  # fmt: skip
        status = subprocess.run(command).returncode
        if status != 0 or not result.exists():
            raise FinetunerError(
                f"distributed training in {num_gpus} processes failed (exit status {status}); "
                "the processes' errors are above."
            )
        return json.loads(result.read_text())


def main(argv: list[str]) -> int:
    """One process of a torchrun launch: train, and let process 0 write the result."""
    import torch.distributed as dist

    from finetuner import steps

    payload, result_path = argv
    ctx = context()
    try:
        result = steps.train(**json.loads(Path(payload).read_text()))
        if ctx is None or ctx.main:
            Path(result_path).write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
