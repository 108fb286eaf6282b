"""The training engine's parts chosen by name: losses and miners, optimizers with layer-wise
learning-rate decay, and learning-rate schedules. Tiny tensors and modules only."""

import math

import pytest
import torch
import torch.nn.functional as F

from finetuner.errors import FinetunerError
from finetuner.losses import (
    KIND_LOSSES,
    LOSSES,
    build_loss,
    build_miner,
    check_loss,
    loss_for,
    margin_mse,
)

DIM, CLASSES, PER_CLASS = 16, 4, 4


def leaf(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def labels() -> torch.Tensor:
    return torch.arange(CLASSES).repeat_interleave(PER_CLASS)


class FakeClip:
    """What CLIPLoss reads from a CLIP model: its learnable temperature."""

    def __init__(self):
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self):
        return self.logit_scale.exp()


def batch(kind: str):
    """A batch of a kind's loss arguments, and the leaf tensors behind its embeddings."""
    leaves = [leaf(CLASSES * PER_CLASS, seed) for seed in range(3)]
    a, b, c = (F.normalize(x, dim=-1) for x in leaves)
    scores = torch.linspace(-1, 1, len(a))
    args = {
        "pairs": (a, b),
        "labeled": (a, labels()),
        "scored": (a, b, scores),
        "margins": (a, b, c, scores),
    }[kind]
    return args, leaves


# ---------------------------------------------------------------- losses


NAMED = [(name, kind) for kind, names in KIND_LOSSES.items() for name in names]


def test_every_named_loss_is_tested():
    assert {name for name, _ in NAMED} == set(LOSSES)


@pytest.mark.parametrize("name, kind", NAMED)
def test_each_named_loss_computes_a_loss_and_gradients_on_its_kind(name, kind):
    loss = build_loss(name, FakeClip(), kind, embedding_dim=DIM, num_classes=CLASSES)
    args, leaves = batch(kind)
    value = loss(*args)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    grads = [x.grad for x in leaves if x.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["ArcFaceLoss", "CosFaceLoss", "SubCenterArcFaceLoss"])
def test_class_weight_losses_learn_with_a_loss_optimizer(name):
    from finetuner.optim import build_optimizer

    loss = build_loss(name, None, "labeled", embedding_dim=DIM, num_classes=CLASSES)
    (weights,) = loss.parameters()
    assert weights.numel() >= DIM * CLASSES
    before = weights.detach().clone()
    loss_optimizer = build_optimizer("SGD", loss.parameters(), lr=0.05)
    (emb, y), _ = batch("labeled")
    emb = emb.detach()
    values = []
    for _ in range(5):
        value = loss(emb, y)
        value.backward()
        loss_optimizer.step()
        loss_optimizer.zero_grad()
        values.append(value.item())
    assert not torch.equal(weights, before)
    assert values[-1] < values[0]


def test_losses_without_parameters_have_none():
    for name in ("MultipleNegativesRankingLoss", "TripletMarginLoss", "ContrastiveLoss"):
        assert build_loss(name, None, "pairs").parameters() == []


def test_loss_options_reach_the_loss():
    (a, b), _ = batch("pairs")

    def mnrl(options):
        return build_loss("MultipleNegativesRankingLoss", None, "pairs", options)(a, b).item()

    assert mnrl({"scale": 20.0}) == pytest.approx(mnrl(None))
    assert mnrl({"scale": 5.0}) != pytest.approx(mnrl(None))
    loss = build_loss(
        "ArcFaceLoss", None, "labeled", {"margin": 10.0, "num_classes": 7}, embedding_dim=DIM
    )
    assert loss.module.margin == pytest.approx(math.radians(10.0))
    assert loss.module.W.shape == (DIM, 7)


@pytest.mark.parametrize("name", ["ContrastiveLoss", "MultiSimilarityLoss", "CircleLoss"])
def test_any_pml_loss_by_its_name_on_labeled_data_and_pairs(name):
    from pytorch_metric_learning import losses

    (emb, y), _ = batch("labeled")
    expected = getattr(losses, name)()(emb, y)
    assert loss_for("text", name, "labeled") == name
    assert build_loss(name, None, "labeled")(emb, y).item() == pytest.approx(expected.item())
    # On pairs, pair i is class i: both sides concatenated, labels 0..n-1 twice.
    (q, d), _ = batch("pairs")
    ids = torch.arange(len(q))
    expected = getattr(losses, name)()(torch.cat([q, d]), torch.cat([ids, ids]))
    assert loss_for("text", name, "pairs") == name
    assert build_loss(name, None, "pairs")(q, d).item() == pytest.approx(expected.item())


def test_pml_objects_by_class_name_in_options():
    (emb, y), _ = batch("labeled")
    lp = build_loss("ContrastiveLoss", None, "labeled")(emb, y)
    cos = build_loss("ContrastiveLoss", None, "labeled", {"distance": "CosineSimilarity"})
    assert type(cos.module.distance).__name__ == "CosineSimilarity"
    assert cos(emb, y).item() != pytest.approx(lp.item())


def test_margin_mse_is_zero_at_the_target_margin():
    q, pos, neg = (F.normalize(torch.randn(5, DIM), dim=-1) for _ in range(3))
    target = (q * pos).sum(-1) - (q * neg).sum(-1)
    assert margin_mse(q, pos, neg, target) == pytest.approx(0.0, abs=1e-12)
    assert margin_mse(q, pos, neg, target + 0.5) == pytest.approx(0.25)


# ---------------------------------------------------------------- miners


@pytest.mark.parametrize(
    "miner, options",
    [
        ("TripletMarginMiner", {"type_of_triplets": "semihard", "margin": 0.3}),
        ("BatchHardMiner", {}),
        ("MultiSimilarityMiner", {"epsilon": 0.05}),
    ],
)
@pytest.mark.parametrize("kind", ["labeled", "pairs"])
def test_miners_pick_what_the_loss_sees(miner, options, kind):
    from pytorch_metric_learning import losses, miners

    args, _ = batch(kind)
    plain = build_loss("TripletMarginLoss", None, kind)(*args)
    mined = build_loss("TripletMarginLoss", None, kind, None, miner, options)(*args)
    assert torch.isfinite(mined) and mined.item() != pytest.approx(plain.item())
    if kind == "labeled":
        emb, y = args
        pick = getattr(miners, miner)(**options)(emb, y)
        expected = losses.TripletMarginLoss(margin=0.05)(emb, y, pick)
        assert mined.item() == pytest.approx(expected.item())


def test_miner_options_reach_the_miner():
    assert build_miner("TripletMarginMiner", {"type_of_triplets": "semihard"}).type_of_triplets == (
        "semihard"
    )
    assert build_miner("batchhardminer") is not None  # any case
    assert build_miner(None) is None and build_miner("") is None


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: check_loss("HingeLoss"),
            "unknown loss 'HingeLoss'. Valid losses: Multiple.*any pytorch-metric-learning loss",
        ),  # fmt: skip
        (lambda: check_loss("contrastiveloss"), "Did you mean ContrastiveLoss"),
        (
            lambda: build_loss("TripletMarginLoss", None, "labeled", {"margn": 1}),
            "loss_options: TripletMarginLoss has no option margn. Its options: margin, swap",
        ),
        (
            lambda: build_loss("MultipleNegativesRankingLoss", None, "pairs", {"margin": 1}),
            "no option margin. Its options: scale",
        ),
        (
            lambda: build_loss("ManifoldLoss", None, "labeled"),
            "ManifoldLoss refused .*'l'.*Its options: l, K",
        ),  # fmt: skip
        (
            lambda: build_loss("ContrastiveLoss", None, "labeled", {"distance": "Cosine"}),
            "unknown distance 'Cosine'. Valid: .*CosineSimilarity",
        ),
        (
            lambda: build_loss("ArcFaceLoss", None, "labeled", embedding_dim=DIM),
            "ArcFaceLoss learns a weight per class and needs num_classes",
        ),
        (
            lambda: build_loss("ArcFaceLoss", None, "pairs", embedding_dim=DIM, num_classes=4),
            "needs labeled data",
        ),
        (lambda: build_loss("ContrastiveLoss", None, "scored"), "not scored data"),
        (
            lambda: build_loss(
                "MultipleNegativesRankingLoss", None, "pairs", None, "BatchHardMiner"
            ),
            "parameter miner: .* MultipleNegativesRankingLoss does not take one",
        ),
        (lambda: build_miner("HardMiner"), "unknown miner 'HardMiner'. Valid miners: .*BatchHard"),
        (
            lambda: build_miner("TripletMarginMiner", {"type_of_triplet": "hard"}),
            "miner_options: TripletMarginMiner has no option type_of_triplet. Its options: margin, "
            "type_of_triplets",
        ),  # fmt: skip
        (lambda: build_miner("", {"margin": 1}), "miner_options: given without a miner"),
        (
            lambda: loss_for("text", "ArcFaceLoss", "pairs"),
            "needs labeled data.*Valid losses "
            "for pairs: MultipleNegativesRankingLoss, TripletMarginLoss, or a parameter-free",
        ),  # fmt: skip
        (
            lambda: loss_for("text", "MarginMSELoss"),
            "needs query,positive,negative,margin rows "
            r"\(data synthesis\)",
        ),  # fmt: skip
        (lambda: loss_for("text", "MarginMSELoss", "pairs"), "query,positive,negative,margin"),
        (
            lambda: loss_for("text", "ContrastiveLoss", "scored"),
            "Valid losses for scored data: CoSENTLoss, CosineSimilarityLoss",
        ),  # fmt: skip
        (lambda: loss_for("clip", "ContrastiveLoss", "pairs"), "CLIP models train with CLIPLoss"),
    ],
)
def test_bad_choices_say_what_is_valid(call, message):
    with pytest.raises(FinetunerError, match=message):
        call()


def test_class_ids_beyond_num_classes_are_refused():
    loss = build_loss("CosFaceLoss", None, "labeled", embedding_dim=DIM, num_classes=2)
    (emb, y), _ = batch("labeled")
    with pytest.raises(FinetunerError, match="num_classes 2, but the data has label id 3"):
        loss(emb, y)


def test_loss_names_resolve_by_kind():
    assert loss_for("text", "arcfaceloss", "labeled") == "ArcFaceLoss"
    assert loss_for("text", "ProxyAnchorLoss", "labeled") == "ProxyAnchorLoss"
    assert loss_for("text", "ProxyAnchorLoss") == "ProxyAnchorLoss"  # kind not known yet
    assert loss_for("text", "MultipleNegativesRankingLoss", "margins") == "MarginMSELoss"
    assert loss_for("clip", "MultipleNegativesRankingLoss", "pairs") == "CLIPLoss"
