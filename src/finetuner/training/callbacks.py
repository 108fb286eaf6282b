"""Training callbacks, as Finetuner had them, and the monitor behind two of them.

The train loop (finetuner.training.loop) acts on TrainConfig fields; these classes are the Python
API's way to set them, and each maps to pipeline parameters (`params()`), so
`fit(..., callbacks=[...])` and a pipeline run mean the same thing:

- EvaluationCallback: retrieval metrics on the eval data after every epoch;
- BestModelCheckpoint: the model of the best epoch by a metric is the one kept;
- EarlyStopping: stop when a metric has stopped improving;
- TrainingCheckpoint: checkpoints every N steps that a restarted run resumes from;
- WiSEFTCallback: weight-space ensembling of the fine-tuned and the start weights.

Metrics that can be monitored: `train_loss` (the epoch's mean), and with per-epoch
evaluation those of the evaluate step: `ndcg@k`, `mrr@k`, `map@k`, `recall@k`,
`precision@k`, `hit_rate@k` (pairs, labeled data) or `spearman`, `pearson` (scored data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetuner.errors import FinetunerError

MODES = ("auto", "min", "max")
RETRIEVAL_METRICS = ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")
EARLY_STOPPING_OPTIONS = ("monitor", "mode", "min_delta", "baseline")


def metric_names(kind: str | None, k: int) -> list[str]:
    """The metrics an epoch reports: train_loss, and the evaluation's for data of `kind`
    (None: no per-epoch evaluation)."""
    if kind is None:
        return ["train_loss"]
    if kind == "scored":
        return ["train_loss", "spearman", "pearson"]
    return ["train_loss", *(f"{name}@{k}" for name in RETRIEVAL_METRICS)]


def default_monitor(kind: str | None, k: int) -> str:
    """What early stopping watches unless told: the evaluation's main metric."""
    if kind is None:
        return "train_loss"
    return "spearman" if kind == "scored" else f"ndcg@{k}"


def resolve_mode(monitor: str, mode: str) -> str:
    """`auto`: losses are minimised, every other metric maximised."""
    if mode not in MODES:
        raise FinetunerError(f"mode '{mode}' is not valid: use one of {', '.join(MODES)}.")
    if mode == "auto":
        return "min" if "loss" in monitor else "max"
    return mode


def check_monitor(parameter: str, monitor: str, kind: str | None, k: int) -> None:
    names = metric_names(kind, k)
    if monitor not in names:
        hint = "" if kind else " (the other metrics need per-epoch evaluation on eval data)"
        raise FinetunerError(
            f"parameter {parameter}: no metric '{monitor}' is reported each epoch{hint}. "
            f"Valid: {', '.join(names)}."
        )


def early_stopping_options(options: dict) -> dict:
    """The early_stopping_options dict, checked: monitor, mode, min_delta and baseline."""
    unknown = set(options) - set(EARLY_STOPPING_OPTIONS)
    if unknown:
        raise FinetunerError(
            f"parameter early_stopping_options: unknown option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(EARLY_STOPPING_OPTIONS)}."
        )
    out = {"monitor": "", "mode": "auto", "min_delta": 0.0, "baseline": None, **options}
    if not isinstance(out["monitor"], str):
        raise FinetunerError("parameter early_stopping_options: monitor must be a metric name.")
    for name in ("min_delta", "baseline"):
        value = out[name]
        if value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            raise FinetunerError(
                f"parameter early_stopping_options: {name} must be a finite number, got {value!r}."
            )
    if out["min_delta"] < 0:
        raise FinetunerError("parameter early_stopping_options: min_delta must be >= 0.")
    resolve_mode(out["monitor"] or "x", out["mode"])
    return out


@dataclass
class Monitor:
    """The best value of a metric so far, and the epochs since it last improved by more
    than min_delta. Its fields go into training checkpoints, so a resumed run decides as an
    uninterrupted one would."""

    metric: str
    mode: str  # min or max
    min_delta: float = 0.0
    best: float | None = None  # starts at the baseline, when there is one
    best_epoch: int = 0
    wait: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; whether it is a new best."""
        sign = 1 if self.mode == "max" else -1
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1
        return improved


# The Python API's callbacks. Each maps to the pipeline parameters that do the same.


@dataclass
class EvaluationCallback:
    """Retrieval metrics on held-out data after every epoch: `eval_data` (a URI; empty
    holds out val_split of the training data) at cut-off `k`."""

    eval_data: str = ""
    k: int = 10

    def params(self) -> dict:
        out = {"evaluate_every_epoch": True, "eval_k": self.k}
        return out | ({"eval_data": self.eval_data} if self.eval_data else {})


@dataclass
class BestModelCheckpoint:
    """Keep the model of the epoch with the best `monitor`, not the last one."""

    monitor: str = "ndcg@10"
    mode: str = "auto"

    def params(self) -> dict:
        return {"best_model_metric": self.monitor, "best_model_mode": self.mode}


@dataclass
class EarlyStopping:
    """Stop when `monitor` (empty: the evaluation's main metric) has not improved by more
    than `min_delta` for `patience` epochs; with a `baseline`, improving means beating it."""

    monitor: str = ""
    mode: str = "auto"
    patience: int = 2
    min_delta: float = 0.0
    baseline: float | None = None

    def params(self) -> dict:
        options = {"monitor": self.monitor, "mode": self.mode, "min_delta": self.min_delta}
        if self.baseline is not None:
            options["baseline"] = self.baseline
        return {"early_stopping_patience": self.patience, "early_stopping_options": options}


@dataclass
class TrainingCheckpoint:
    """A checkpoint every `every` steps (and at each epoch's end) under the run's output;
    a restarted train step resumes from the newest."""

    every: int = 500

    def params(self) -> dict:
        return {"checkpoint_every": self.every}


@dataclass
class WiSEFTCallback:
    """WiSE-FT: the model ends as alpha x fine-tuned + (1 - alpha) x start weights."""

    alpha: float = 0.4

    def params(self) -> dict:
        return {"wiseft_alpha": self.alpha}


CALLBACKS = (
    EvaluationCallback, BestModelCheckpoint, EarlyStopping, TrainingCheckpoint, WiSEFTCallback,
)  # fmt: skip


def callback_params(callbacks: list) -> dict:
    """The pipeline parameters of a list of callbacks; each kind may appear once."""
    params: dict = {}
    seen: set[type] = set()
    for callback in callbacks:
        if not isinstance(callback, CALLBACKS):
            names = ", ".join(c.__name__ for c in CALLBACKS)
            raise FinetunerError(f"callbacks: {callback!r} is not one of {names}.")
        if type(callback) in seen:
            raise FinetunerError(f"callbacks: {type(callback).__name__} is given twice.")
        seen.add(type(callback))
        params |= callback.params()
    return params
