import pytest
import torch

from finetuner.catalogue import lookup
from finetuner.data import pairs as data
from finetuner.data.samplers import random_batches as batches
from finetuner.errors import FinetunerError
from finetuner.evaluation.evaluate import evaluate
from finetuner.models import TextModel
from finetuner.training.loop import TrainConfig, train


def test_batches_cover_every_pair_once_and_drop_a_lonely_last():
    out = batches(65, 16, torch.Generator().manual_seed(0))
    assert [len(b) for b in out] == [16, 16, 16, 16]  # the 65th pair alone is dropped
    assert len({i for b in out for i in b}) == 64
    assert batches(10, 4, torch.Generator().manual_seed(0))[-1].__len__() == 2


@pytest.mark.parametrize("loss", ["MultipleNegativesRankingLoss", "TripletMarginLoss"])
def test_each_loss_learns_the_training_pairs(tiny_model, pairs_csv, loss):
    pairs = data.read_pairs(str(pairs_csv(32)))
    eval_set = data.EvalSet.from_pairs(pairs)
    model = tiny_model()
    before = evaluate(model, eval_set)["ndcg@10"]
    config = TrainConfig(loss=loss, epochs=4, batch_size=16, learning_rate=1e-3, log_every=100)
    result = train(model, pairs, config)
    after = evaluate(model, eval_set)["ndcg@10"]
    assert result["steps"] == 8
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert after > before + 0.05, (before, after)


def test_real_minilm_improves_on_what_it_was_tuned_on(pairs_csv, minilm_spec):
    pairs = data.read_pairs(str(pairs_csv(32)))
    eval_set = data.EvalSet.from_pairs(pairs)
    model = TextModel.pretrained(minilm_spec)
    before = evaluate(model, eval_set)["ndcg@10"]
    train(model, pairs, TrainConfig(epochs=2, batch_size=16, learning_rate=1e-4, log_every=100))
    after = evaluate(model, eval_set)["ndcg@10"]
    assert after > before + 0.02, (before, after)


def test_same_seed_gives_identical_weights(tiny_model, pairs_csv):
    pairs = data.read_pairs(str(pairs_csv(40)))
    config = dict(epochs=1, batch_size=8, learning_rate=1e-3, seed=7, log_every=100)
    runs = []
    for seed in (7, 7, 8):
        model = tiny_model()
        train(model, pairs, TrainConfig(**{**config, "seed": seed}))
        runs.append(model.embedder.state_dict())
    same = all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    differs = any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    assert same and differs


def test_progress_lines_on_stderr(tiny_model, pairs_csv, capsys):
    pairs = data.read_pairs(str(pairs_csv(40)))
    train(tiny_model(), pairs, TrainConfig(epochs=2, batch_size=8, log_every=2))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[train]")]
    assert len(lines) == 5  # steps 2, 4, 6, 8 and 10 of 10
    assert lines[-1].startswith("[train] step 10/10")
    for field in ("loss ", "lr ", "samples/s", "ETA "):
        assert field in lines[0]


def test_a_terminal_gets_a_progress_bar_and_logs_get_lines():
    import io

    from finetuner.io.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress(4, every=2, stream=stream)
        progress.resume_at(1)  # from a checkpoint: the bar starts there
        for step in (2, 3, 4):
            progress.step(step, 8, loss=0.5)
    assert "4/4" in terminal.getvalue() and "loss=0.5" in terminal.getvalue()
    assert "[train]" not in terminal.getvalue()
    assert log.getvalue().splitlines()[0].startswith("[train] step 2/4 | loss 0.5")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"loss": "HingeLoss"}, "Valid losses: MultipleNegativesRankingLoss, TripletMarginLoss"),
        ({"batch_size": 1}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0}, "learning_rate"),
    ],
)
def test_bad_settings_are_refused(change, message):
    with pytest.raises(FinetunerError, match=message):
        TrainConfig(**change).validate()


def test_choices_by_name_train(tiny_model, pairs_csv):
    """An optimizer with options, a cosine schedule stepped per epoch, layer-wise decay."""
    pairs = data.read_pairs(str(pairs_csv(32)))
    model = tiny_model()
    config = TrainConfig(
        epochs=2, batch_size=8, learning_rate=1e-3, optimizer="SGD",
        optimizer_options={"momentum": 0.9}, scheduler="cosine", scheduler_step="epoch",
        layerwise_decay=0.5, log_every=1000,
    )  # fmt: skip
    result = train(model, pairs, config)
    assert result["steps"] == 8 and all(h["train_loss"] > 0 for h in result["history"])


def test_arcface_with_its_own_optimizer_on_labeled_vectors():
    """ArcFace's class weights learn with a loss optimizer of their own; a miner goes with
    a pytorch-metric-learning loss."""
    import numpy as np

    from finetuner import models
    from finetuner.data import dataset

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6))
    rows = [(" ".join(f"{x:.4f}" for x in centres[i % 4] + 0.2 * rng.normal(size=6)), f"c{i % 4}")
            for i in range(64)]  # fmt: skip
    spec = lookup("mlp", model_options={"input_size": 6, "hidden_sizes": [16]})
    for loss, extra in (("ArcFaceLoss", {}), ("TripletMarginLoss", {"miner": "BatchHardMiner"})):
        model = models.pretrained(spec)
        config = TrainConfig(loss=loss, epochs=4, batch_size=16, learning_rate=1e-2, **extra)
        result = train(model, dataset.from_rows(rows, "labeled"), config)
        assert result["loss"] == loss and result["sampler"] == "class"
        assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"], (
            loss,
            result,
        )


def test_the_loss_optimizer_is_chosen_by_name_with_options(tmp_path):
    from finetuner import models
    from finetuner.data import dataset
    from finetuner.training import checkpoints

    rows = [(f"{i % 4} {i % 3} 1", f"c{i % 4}") for i in range(32)]
    spec = lookup("mlp", model_options={"input_size": 3, "hidden_sizes": [8]})
    base = dict(loss="ArcFaceLoss", batch_size=8, log_every=100, loss_optimizer="SGD")
    config = TrainConfig(
        **base, loss_optimizer_options={"momentum": 0.5}, loss_learning_rate=0.2,
        checkpoint_dir=str(tmp_path), checkpoint_every=1, max_steps=2,
    )  # fmt: skip
    train(models.pretrained(spec), dataset.from_rows(rows, "labeled"), config)
    group = checkpoints.latest(str(tmp_path))["optimizer1"]["param_groups"][0]
    assert (group["momentum"], group["lr"]) == (0.5, 0.2)
    bad = TrainConfig(**base, loss_optimizer_options={"betas": [0.9, 0.99]})
    with pytest.raises(FinetunerError, match="loss_optimizer_options: SGD has no option betas"):
        train(models.pretrained(spec), dataset.from_rows(rows, "labeled"), bad)


def test_wiseft_blends_the_fine_tuned_with_the_pretrained_weights():
    import numpy as np

    from finetuner import models

    rng = np.random.default_rng(1)
    pairs = [(" ".join(map(str, rng.normal(size=4))), " ".join(map(str, rng.normal(size=4))))
             for _ in range(32)]  # fmt: skip
    spec = lookup("mlp", model_options={"input_size": 4, "hidden_sizes": [8]})

    def weights(alpha):
        model = models.pretrained(spec)
        train(model, pairs, TrainConfig(batch_size=8, learning_rate=1e-2, wiseft_alpha=alpha))
        return model.embedder.state_dict()

    pretrained = models.pretrained(spec).embedder.state_dict()
    tuned, half, none = weights(1.0), weights(0.5), weights(0.0)
    for name, value in pretrained.items():
        assert not torch.equal(tuned[name], value)
        torch.testing.assert_close(none[name], value)
        torch.testing.assert_close(half[name], (tuned[name] + value) / 2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 1}, "parameter batch_size: invalid value 1. Valid: an integer >= 2 "
         "(in-batch negatives and positives need two or more rows in a batch)."),
        ({"learning_rate": float("nan")}, "parameter learning_rate: invalid value nan. Valid: "
         "a number in (0, 1)"),
        ({"warmup_ratio": 1}, "parameter warmup_ratio: invalid value 1. Valid: a number in "
         "[0, 1)"),
        ({"num_items_per_class": 1}, "parameter num_items_per_class: invalid value 1. Valid: "
         "an integer >= 2 (the class sampler gives each item another of its label"),
        ({"wiseft_alpha": 1.5}, "parameter wiseft_alpha: invalid value 1.5. Valid: a number "
         "in [0, 1]"),
        ({"max_steps": 0}, "parameter max_steps: invalid value 0. Valid: an integer >= 1, or "
         "None (None: no limit)."),
        ({"epochs": 2.5}, "parameter epochs: invalid value 2.5. Valid: an integer >= 1, or auto."),
        ({"max_grad_norm": 0}, "parameter max_grad_norm: invalid value 0. Valid: a number > 0"),
    ],
)  # fmt: skip
def test_messages_state_the_valid_range_and_why(change, message):
    with pytest.raises(FinetunerError) as caught:
        TrainConfig(**change).validate()
    assert str(caught.value).startswith(message), str(caught.value)


def _vector_pairs(poisoned: int | None = None, n: int = 12) -> list[tuple[str, str]]:
    rows = [(f"{i} {i % 3}", f"{i + 1} {i % 3}") for i in range(n)]
    if poisoned is not None:  # a row that preprocess would refuse: NaN once read
        rows[poisoned] = ("nan 1", rows[poisoned][1])
    return rows


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    import re

    from finetuner import models
    from finetuner.data import dataset
    from finetuner.training import checkpoints

    spec = lookup("mlp", model_options={"input_size": 2, "hidden_sizes": [8]})
    folder = str(tmp_path / "checkpoints")
    config = TrainConfig(
        batch_size=2, learning_rate=1e-2, sampler="random", checkpoint_dir=folder,
        checkpoint_every=1, log_every=1000, seed=3,
    )  # fmt: skip
    model = models.pretrained(spec)
    with pytest.raises(FinetunerError) as caught:
        train(model, dataset.from_rows(_vector_pairs(poisoned=7), "pairs"), config)
    message = str(caught.value)
    found = re.match(r"training stopped at step (\d+) \(epoch 1, batch \d+\): the loss is nan, "
                     r"not a finite number\. Nothing is exported; the last checkpoint is kept\.",
                     message)  # fmt: skip
    assert found, message
    step = int(found.group(1))
    assert step > 1  # this seed puts the poisoned row in a later batch
    assert checkpoints.complete_steps(folder)[-1] == step - 1
    weights = checkpoints.latest(folder)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    # The weights in memory did not take the bad step in either.
    assert all(torch.isfinite(p).all() for p in model.embedder.parameters())


def test_the_train_step_checks_the_data_before_it_loads_the_model(tmp_path):
    from finetuner.data import dataset
    from finetuner.orchestration import steps

    dataset.write([(f"item {i}", f"label {i}") for i in range(6)], tmp_path / "train", "labeled")
    spec = lookup("mlp", model_options={"input_size": 2}).model_dump()
    with pytest.raises(FinetunerError, match="no label of the train data has two items"):
        steps.train(spec, str(tmp_path / "train"), str(tmp_path / "model"), {
            "loss": "TripletMarginLoss", "epochs": 1, "batch_size": 4, "learning_rate": 1e-3,
        })  # fmt: skip
    assert not (tmp_path / "model").exists()


def test_only_finite_metrics_are_logged():
    from finetuner.orchestration.steps import loggable

    metrics = {"a": float("nan"), "b": 0.5, "c": float("inf"), "d": 3, "e": None, "f": True}
    assert loggable(metrics) == {"b": 0.5, "d": 3}
