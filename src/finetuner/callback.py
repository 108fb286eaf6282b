"""Finetuner's callbacks, where its users import them: `from finetuner.callback import
EarlyStopping`. They live in finetuner.training.callbacks."""

from finetuner.training.callbacks import (
    BestModelCheckpoint,
    EarlyStopping,
    EvaluationCallback,
    TrainingCheckpoint,
    WiSEFTCallback,
)

__all__ = [
    "BestModelCheckpoint",
    "EarlyStopping",
    "EvaluationCallback",
    "TrainingCheckpoint",
    "WiSEFTCallback",
]
