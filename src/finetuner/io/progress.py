"""Progress of long work on stderr: step, loss, samples/s and ETA. A line every few steps
(what logs keep), or a tqdm bar when stderr is a terminal."""

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
        self.first = 0  # the step training (re)started from
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=label, file=self.stream, unit="step")

    def resume_at(self, step: int) -> None:
        """Training goes on from a checkpoint at `step`: the rate and ETA count from here."""
        self.first = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def step(self, step: int, samples: int, **values: float) -> None:
        """Record a finished step; print every `every` steps and at the last."""
        self.samples += samples
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            if step >= self.total:
                self.bar.close()
            return
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.samples / elapsed if elapsed else 0.0
        eta = elapsed / max(step - self.first, 1) * (self.total - step)
        fields = "".join(f" | {k} {v:.4g}" for k, v in values.items())
        print(
            f"[{self.label}] step {step}/{self.total}{fields} | {rate:.1f} samples/s"
            f" | ETA {timedelta(seconds=round(eta))}",
            file=self.stream,
            flush=True,
        )

    @property
    def samples_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed else 0.0
