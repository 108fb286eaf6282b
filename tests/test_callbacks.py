"""Callbacks: per-epoch evaluation, best-model checkpoint, early stopping
(finetuner.training.callbacks)."""

import pytest

from finetuner.data import pairs as data
from finetuner.errors import FinetunerError
from finetuner.evaluation.evaluate import evaluate
from finetuner.evaluation.plots import history_svg
from finetuner.orchestration.steps import evaluation_html
from finetuner.training.callbacks import (
    BestModelCheckpoint,
    EarlyStopping,
    EvaluationCallback,
    Monitor,
    TrainingCheckpoint,
    WiSEFTCallback,
    callback_params,
)
from finetuner.training.loop import TrainConfig, train

CONFIG = dict(epochs=3, batch_size=8, learning_rate=1e-3, log_every=100)


@pytest.fixture
def split_pairs(pairs_csv):
    pairs = data.read_pairs(str(pairs_csv(48)))
    return pairs[:32], pairs[32:]


def test_monitor_counts_epochs_without_an_improvement_beyond_min_delta():
    monitor = Monitor("ndcg@10", "max", min_delta=0.01)
    assert monitor.update(0.50, 1)
    assert not monitor.update(0.505, 2)  # better, but by less than min_delta
    assert monitor.update(0.52, 3) and monitor.wait == 0
    assert not monitor.update(0.40, 4) and monitor.wait == 1 and monitor.best_epoch == 3
    loss = Monitor("train_loss", "min", best=0.1)  # a baseline to beat
    assert not loss.update(0.2, 1) and loss.best_epoch == 0
    assert loss.update(0.05, 2) and loss.best == 0.05


def test_every_epoch_reports_the_metrics_of_the_model_at_that_epoch(tiny_model, split_pairs):
    train_pairs, eval_pairs = split_pairs
    model = tiny_model()
    result = train(model, train_pairs, TrainConfig(**CONFIG), eval_data=eval_pairs)
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) >= {"train_loss", "ndcg@10", "mrr@10", "recall@10"}
    # The last epoch's figures are those of the trained model.
    assert evaluate(model, data.EvalSet.from_pairs(eval_pairs)) == {
        k: v for k, v in history[-1].items() if k not in ("epoch", "train_loss")
    }
    assert result["best_epoch"] == 3 and not result["stopped_early"]


def test_the_best_epochs_model_is_kept(tiny_model, split_pairs):
    train_pairs, eval_pairs = split_pairs
    model = tiny_model()
    # "min" of a metric that rises as the model learns: the best epoch is an early one.
    config = TrainConfig(**CONFIG, best_model_metric="ndcg@10", best_model_mode="min")
    result = train(model, train_pairs, config, eval_data=eval_pairs)
    values = [h["ndcg@10"] for h in result["history"]]
    assert result["best_epoch"] == values.index(min(values)) + 1 < 3, values
    kept = evaluate(model, data.EvalSet.from_pairs(eval_pairs))["ndcg@10"]
    assert kept == min(values) < values[-1]


def test_early_stopping_stops_when_the_metric_stalls(tiny_model, split_pairs):
    train_pairs, eval_pairs = split_pairs
    config = TrainConfig(
        **{**CONFIG, "epochs": 5},
        early_stopping_patience=1,
        early_stopping_options={"monitor": "ndcg@10", "mode": "min"},
    )
    result = train(tiny_model(), train_pairs, config, eval_data=eval_pairs)
    assert result["epochs"] < 5 and result["steps"] == result["epochs"] * 4
    assert "ndcg@10 has not improved by more than 0 in 1 epochs" in result["stopped_early"]


def test_early_stopping_with_a_baseline_never_beaten(tiny_model, split_pairs):
    config = TrainConfig(
        **{**CONFIG, "epochs": 4},
        early_stopping_patience=2,
        early_stopping_options={"monitor": "train_loss", "baseline": 0.0},
    )
    result = train(tiny_model(), split_pairs[0], config)  # no eval data: train_loss only
    assert result["epochs"] == 2
    assert result["stopped_early"] == "train_loss has not beaten its baseline 0 in 2 epochs"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"best_model_metric": "ndcg@5"}, "no metric 'ndcg@5' is reported each epoch"),
        (
            {"best_model_metric": "ndcg@10", "best_model_mode": "up"},
            "parameter best_model_mode: invalid value 'up'. Valid: one of auto, max, min",
        ),
        (
            {"early_stopping_patience": 1, "early_stopping_options": {"patience": 3}},
            "unknown option(s) patience; valid: monitor, mode, min_delta, baseline",
        ),
        (
            {"early_stopping_patience": 1, "early_stopping_options": {"min_delta": "x"}},
            "min_delta must be a finite number",
        ),
        ({"early_stopping_patience": -1}, "early_stopping_patience: invalid value -1"),
    ],
)
def test_bad_callback_settings_are_refused_before_training(changes, message):
    with pytest.raises(FinetunerError) as info:
        TrainConfig(**changes).validate().monitors("pairs")
    assert message in str(info.value)


def test_an_evaluation_metric_without_evaluation_names_what_is_reported():
    with pytest.raises(FinetunerError) as info:
        TrainConfig(best_model_metric="ndcg@10").monitors(None)
    assert "needs per-epoch evaluation" not in str(info.value)
    assert "the other metrics need per-epoch evaluation on eval data" in str(info.value)
    assert "Valid: train_loss." in str(info.value)


def test_callbacks_map_to_the_pipeline_parameters():
    params = callback_params(
        [
            EvaluationCallback("s3://b/eval.csv", k=5),
            BestModelCheckpoint("mrr@5", "max"),
            EarlyStopping(patience=3, min_delta=0.01, baseline=0.2),
            TrainingCheckpoint(every=50),
            WiSEFTCallback(alpha=0.5),
        ]
    )
    assert params == {
        "evaluate_every_epoch": True,
        "eval_k": 5,
        "eval_data": "s3://b/eval.csv",
        "best_model_metric": "mrr@5",
        "best_model_mode": "max",
        "early_stopping_patience": 3,
        "early_stopping_options": {
            "monitor": "",
            "mode": "auto",
            "min_delta": 0.01,
            "baseline": 0.2,
        },
        "checkpoint_every": 50,
        "wiseft_alpha": 0.5,
    }
    with pytest.raises(FinetunerError, match="EarlyStopping is given twice"):
        callback_params([EarlyStopping(), EarlyStopping()])
    with pytest.raises(FinetunerError, match="is not one of EvaluationCallback"):
        callback_params(["early-stopping"])


def test_the_report_plots_each_metric_per_epoch():
    history = [
        {"epoch": 1, "train_loss": 1.2, "ndcg@10": 0.5},
        {"epoch": 2, "train_loss": 0.8, "ndcg@10": 0.6},
    ]
    svg = history_svg(history)
    assert svg.count("<svg") == 2 and "ndcg@10 per epoch" in svg
    assert "epoch 2: 0.6000" in svg and "epoch 1: 1.2000" in svg
    metrics = {"k": 10, "kind": "pairs", "rows": 4, "history": history}
    metrics |= {"before": {"ndcg@10": 0.4}, "after": {"ndcg@10": 0.6}}
    html = evaluation_html(metrics)
    assert "Training, per epoch" in html and svg in html
