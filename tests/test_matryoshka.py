"""Matryoshka embeddings: the loss at every width, metrics at every width, truncated
inference (PyTorch and ONNX), checks before training, and one run through the pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from finetuner.data import pairs as data
from finetuner.errors import FinetunerError
from finetuner.evaluation.evaluate import correlation, evaluate
from finetuner.training import matryoshka
from finetuner.training.loop import TrainConfig, train
from finetuner.training.losses import build_loss

TEXTS = ["aardvark", "nocturnal burrowing mammal of Africa", "x", "a longer text " * 5]


def unit(rows: int, width: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def prefix(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first dim columns at unit length, written out rather than through the module."""
    p = x[:, :dim]
    return p / p.norm(dim=1, keepdim=True)


# Each kind of data: a loss for it and a batch of its arguments (embeddings first).
BATCHES = {
    "pairs": ("MultipleNegativesRankingLoss", lambda: (unit(8, 32, 0), unit(8, 32, 1))),
    "scored": ("CoSENTLoss", lambda: (unit(8, 32, 0), unit(8, 32, 1), torch.rand(8))),
    "labeled": ("TripletMarginLoss", lambda: (unit(8, 32, 0), torch.tensor([0, 0, 1, 1] * 2))),
    "margins": (
        "MarginMSELoss",
        lambda: (unit(8, 32, 0), unit(8, 32, 1), unit(8, 32, 2), torch.rand(8) - 0.5),
    ),
}


@pytest.mark.parametrize("kind", list(BATCHES))
def test_the_loss_is_the_weighted_sum_of_the_loss_at_each_width(kind):
    name, batch = BATCHES[kind]
    args = batch()
    plain = build_loss(name, kind=kind)
    wrapped = matryoshka.wrap(plain, kind, [32, 16, 4], [1.0, 0.5, 2.0], width=32)
    count = matryoshka.EMBEDDING_ARGS[kind]
    by_hand = sum(
        weight * plain(*(prefix(e, dim) for e in args[:count]), *args[count:])
        for dim, weight in ((32, 1.0), (16, 0.5), (4, 2.0))
    )
    torch.testing.assert_close(wrapped(*args), by_hand)
    # One width, the full one, weight 1: the plain loss.
    alone = matryoshka.wrap(plain, kind, [32], [], width=32)
    torch.testing.assert_close(alone(*args), plain(*args))


def test_the_gradient_reaches_every_width():
    q, d = unit(8, 32, 0).requires_grad_(), unit(8, 32, 1)
    loss = matryoshka.wrap(build_loss("MultipleNegativesRankingLoss"), "pairs", [4], [], 32)
    loss(q, d).backward()
    assert q.grad[:, :4].abs().sum() > 0 and q.grad[:, 4:].abs().sum() == 0


@pytest.mark.parametrize(
    "dims, weights, message",
    [
        ([0, 8], [], "invalid dimension 0"),
        ([8, "a"], [], "invalid dimension 'a'"),
        ([8.5], [], "invalid dimension 8.5"),
        ([16, 16], [], "names a dimension twice"),
        ([16, 8], [1.0], "not one weight per dimension"),
        ([16, 8], [1.0, -1], "invalid weight -1"),
        ([], [1.0], "matryoshka_weights: given without matryoshka_dims"),
    ],
)
def test_bad_dims_and_weights_are_refused_naming_the_parameter(dims, weights, message):
    config = TrainConfig(matryoshka_dims=dims, matryoshka_weights=weights)
    with pytest.raises(FinetunerError, match=message):
        config.validate()


def test_dims_as_kfp_hands_them_over_are_whole_numbers():
    config = TrainConfig.from_strings({"matryoshka_dims": "[64.0, 32]"}).validate()
    assert config.matryoshka_dims == [64, 32] and config.matryoshka_weights == [1.0, 1.0]


def test_a_dim_wider_than_the_model_and_a_class_weight_loss_are_refused():
    with pytest.raises(FinetunerError, match="512 is wider than the model's 384-d.*1 to 384"):
        matryoshka.check([384, 512], [], "auto", 384)
    with pytest.raises(FinetunerError, match="ArcFaceLoss learns class weights"):
        matryoshka.check([384, 128], [], "ArcFaceLoss", 384)


class ByHand:
    """A model whose embeddings are another's first `dim` columns, renormalised here."""

    def __init__(self, model, dim):
        self.model, self.dim = model, dim

    def encode(self, items, batch_size=64, device="cpu"):
        emb = self.model.encode(items, batch_size=batch_size, device=device)[:, : self.dim]
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_training_with_dims_and_the_metrics_at_each_width(tiny_model, pairs_csv):
    pairs = data.read_pairs(str(pairs_csv(32)))
    eval_set = data.EvalSet.from_pairs(pairs)
    model = tiny_model()  # 32-d
    before = evaluate(model, eval_set, dims=[32, 8])["ndcg@10@dim8"]
    config = TrainConfig(
        epochs=4, batch_size=16, learning_rate=1e-3, log_every=100, matryoshka_dims=[32, 8]
    )
    train(model, pairs, config)
    metrics = evaluate(model, eval_set, dims=[32, 16, 8])
    # The full width keeps its keys; each narrower width gets its own.
    assert set(metrics) == {f"{m}@10{at}" for m in ("precision", "recall", "hit_rate", "mrr",
                            "ndcg", "map") for at in ("", "@dim16", "@dim8")}  # fmt: skip
    assert metrics["ndcg@10@dim8"] > before + 0.05, (before, metrics["ndcg@10@dim8"])
    for dim in (16, 8):
        at = evaluate(ByHand(model, dim), eval_set)
        assert {f"{k}@dim{dim}": v for k, v in at.items()} == {
            k: v for k, v in metrics.items() if k.endswith(f"@dim{dim}")
        }
    rows = [(q, d, 1.0 if i % 2 else 0.0) for i, (q, d) in enumerate(pairs[:12])]
    scored = correlation(model, rows, dims=[8])
    assert scored["spearman@dim8"] == pytest.approx(correlation(ByHand(model, 8), rows)["spearman"])

    from finetuner.orchestration.steps import evaluation_html

    report = evaluation_html(
        {"kind": "pairs", "rows": 32, "k": 10, "before": metrics, "after": metrics}
    )
    assert "<td>ndcg@10@dim8</td>" in report


def test_a_class_weight_loss_is_refused_before_training(tiny_model):
    from finetuner.data.dataset import from_rows

    rows = [(f"item {i}", str(i % 3)) for i in range(12)]
    config = TrainConfig(loss="ArcFaceLoss", matryoshka_dims=[16], epochs=1, batch_size=6)
    with pytest.raises(FinetunerError, match="parameter matryoshka_dims: ArcFaceLoss"):
        train(tiny_model(), from_rows(rows, "labeled"), config)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from finetuner.catalogue import lookup
    from finetuner.export.publish import export
    from finetuner.models import TextModel

    model = TextModel.pretrained(lookup("minilm-l6-en", max_length=32))
    out = tmp_path_factory.mktemp("export") / "out"
    export(model, {"k": 10, "before": {}, "after": {}}, str(out))
    return str(out), model.encode(TEXTS)


def test_get_model_and_encode_give_the_renormalised_prefix(exported):
    from finetuner.export import inference

    output, full = exported
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    model = inference.get_model(output, truncate_dim=128)
    emb = inference.encode(model, TEXTS)
    assert emb.shape == (4, 128) and model.output_dim == 128
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    whole = inference.get_model(output)
    by_encode = inference.encode(whole, TEXTS, truncate_dim=128)
    np.testing.assert_allclose(by_encode, expected, atol=1e-6)
    # ONNX at a width: the same embeddings as PyTorch.
    onnx = inference.get_model(output, is_onnx=True, truncate_dim=128)
    np.testing.assert_allclose(inference.encode(onnx, TEXTS), emb, atol=1e-5)
    narrower = inference.encode(onnx, TEXTS, truncate_dim=32)
    np.testing.assert_allclose(narrower, inference.encode(model, TEXTS, truncate_dim=32), atol=1e-5)
    for bad in (0, 385, 64.0, "64"):
        with pytest.raises(FinetunerError, match=f"truncate_dim: invalid value {bad!r}.*1 to 384"):
            inference.get_model(output, truncate_dim=bad)
    with pytest.raises(FinetunerError, match="truncate_dim: invalid value 256.*1 to 128"):
        inference.encode(model, TEXTS, truncate_dim=256)


def test_the_command_refuses_a_dim_wider_than_the_model(pairs_csv, tmp_path):
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "finetuner", "run", "--train-data", str(pairs_csv()),
         "--output", str(output), "--matryoshka-dims", "[384, 768]"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: parameter matryoshka_dims: 768 is wider than the ")
    assert "Valid: dimensions from 1 to 384" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()


def test_fit_trains_evaluates_and_promotes_at_each_width(pairs_csv, tmp_path):
    import finetuner

    output = tmp_path / "runs" / "one"
    run = finetuner.fit(
        model="minilm-l6-en",
        train_data=str(pairs_csv(48)),
        output=str(output),
        batch_size=16,
        max_length=32,
        epochs=1,
        matryoshka_dims=[384, 128, 32],
        matryoshka_weights=[1, 1, 0.5],
        promote=True,
        promotion_metric="ndcg@10@dim32",
    )
    after = run.metrics()["after"]
    assert {"ndcg@10", "ndcg@10@dim128", "ndcg@10@dim32", "mrr@10@dim32"} <= set(after)
    assert not any(k.endswith("@dim384") for k in after)
    assert set(run.metrics()["before"]) == set(after)
    written = json.loads((output / "metrics.json").read_text())
    assert written["after"] == after
    promoted = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    assert promoted["after"]["ndcg@10@dim32"] == after["ndcg@10@dim32"]
    model = finetuner.get_model(str(output), truncate_dim=32)
    assert finetuner.encode(model, TEXTS).shape == (4, 32)
