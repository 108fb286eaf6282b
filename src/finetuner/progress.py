"""One-line progress reports on stderr for long work: step, loss, samples/s and ETA."""

from __future__ import annotations

import sys
import time
from datetime import timedelta


class Progress:
    def __init__(self, total_steps: int, every: int = 10, stream=None, label: str = "train"):
        self.total = total_steps
        self.every = max(1, every)
        self.stream = stream or sys.stderr
        self.label = label
        self.start = time.perf_counter()
        self.samples = 0

    def step(self, step: int, samples: int, **values: float) -> None:
        """Record a finished step; print every `every` steps and at the last."""
        self.samples += samples
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.samples / elapsed if elapsed else 0.0
        eta = elapsed / step * (self.total - step)
        fields = " | ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(
            f"[{self.label}] step {step}/{self.total} | {fields} | {rate:.1f} samples/s"
            f" | ETA {timedelta(seconds=round(eta))}",
            file=self.stream,
            flush=True,
        )

    @property
    def samples_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed else 0.0
