"""The training loop for pairs: in-batch losses, AdamW with linear warm-up.

torch is imported inside the functions, so validating a TrainConfig stays instant.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from finetuner.data import Pair
from finetuner.errors import FinetunerError
from finetuner.losses import DEFAULT_LOSS, build_loss, check_loss
from finetuner.progress import Progress


@dataclass
class TrainConfig:
    loss: str = DEFAULT_LOSS
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    max_steps: int | None = None  # stop early, e.g. for benchmarks
    # Forward passes per side of a batch, grouped by length to skip padding (exact).
    length_buckets: int = 2
    log_every: int = 10

    def validate(self) -> TrainConfig:
        self.loss = check_loss(self.loss)
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,  # in-batch negatives need company
            "learning_rate": 0 < self.learning_rate < 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise FinetunerError(f"parameter {name}: invalid value {getattr(self, name)}.")
        return self


def seed_everything(seed: int):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(n: int, batch_size: int, generator) -> list[list[int]]:
    """One epoch of shuffled index batches; a last batch of one pair is dropped."""
    import torch

    order = torch.randperm(n, generator=generator).tolist()
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in out if len(b) >= 2]


def parameter_groups(module, weight_decay: float) -> list[dict]:
    """The trainable parameters (not those of a frozen backbone); no weight decay on biases
    and LayerNorm weights, as usual for transformers."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def train(model, pairs: list[Pair], config: TrainConfig, device: str | None = None) -> dict:
    """Fine-tune `model` (from finetuner.models) in place on pairs; returns training metrics."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from finetuner.models import sides

    config.validate()
    if len(pairs) < 2:
        raise FinetunerError(f"training needs at least 2 pairs, got {len(pairs)}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = seed_everything(config.seed)
    embedder = model.embedder.to(device).train()
    loss_fn = build_loss(config.loss, model)
    query_side, document_side = sides(model)

    steps_per_epoch = len(batches(len(pairs), config.batch_size, torch.Generator()))
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    # The fused kernel updates all tensors at once: several times faster than the default
    # per-tensor loop, which is most of a step's overhead on a CPU.
    groups = parameter_groups(embedder, config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
    trainable = [p for group in groups for p in group["params"]]  # not a frozen backbone
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(total * config.warmup_ratio), total
    )
    # bf16 autocast on GPUs; full precision on the CPU, where bf16 is slower.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    progress = Progress(total, every=config.log_every)
    history, step = [], 0
    for epoch in range(1, config.epochs + 1):
        epoch_loss, epoch_steps = 0.0, 0
        for batch in batches(len(pairs), config.batch_size, generator):
            with autocast:
                q = query_side.embed([pairs[i][0] for i in batch], device, config.length_buckets)
                d = document_side.embed([pairs[i][1] for i in batch], device, config.length_buckets)
                loss = loss_fn(q.float(), d.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_loss += loss.item()
            epoch_steps += 1
            progress.step(
                step, len(batch), epoch=epoch, loss=loss.item(), lr=scheduler.get_last_lr()[0]
            )
            if step >= total:
                break
        history.append({"epoch": epoch, "loss": epoch_loss / epoch_steps})
        if step >= total:
            break
    embedder.eval()
    return {
        "steps": step,
        "samples_per_second": progress.samples_per_second,
        "final_loss": loss.item(),
        "history": history,
        "config": asdict(config),
    }
