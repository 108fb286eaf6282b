"""The training engine's parts chosen by name: losses and miners, optimizers with layer-wise
learning-rate decay, and learning-rate schedules. Tiny tensors and modules only."""

import math

import pytest
import torch
import torch.nn.functional as F

from finetuner.errors import FinetunerError
from finetuner.training.losses import (
    KIND_LOSSES,
    LOSSES,
    build_loss,
    build_miner,
    check_loss,
    loss_for,
    margin_mse,
)
from finetuner.training.optim import SCHEDULERS, build_optimizer, build_scheduler, steps_for

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
        (lambda: loss_for("cnn", "MarginMSELoss"), "train text models only; this is a cnn"),
        (
            lambda: loss_for("text", "MarginMSELoss", "pairs"),
            "query,positive,negative,margin rows, which `finetuner synthesize` makes.*Valid "
            "losses for pairs data: MultipleNegativesRankingLoss",
        ),  # fmt: skip
        (
            lambda: loss_for("text", "ContrastiveLoss", "scored"),
            "Valid losses for scored data: CoSENTLoss, CosineSimilarityLoss",
        ),  # fmt: skip
        (
            lambda: loss_for("clip", "ContrastiveLoss", "pairs"),
            "clip models train with CLIPLoss only",
        ),
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
    assert loss_for("text", "auto", "margins") == "MarginMSELoss"
    assert loss_for("text", "MarginMSELoss") == "MarginMSELoss"  # kind not known yet
    assert loss_for("clip", "auto", "pairs") == "CLIPLoss"
    with pytest.raises(FinetunerError, match="does not train on margins data"):
        loss_for("text", "MultipleNegativesRankingLoss", "margins")


# ---------------------------------------------------------------- optimizers


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(config)


def group_of(optimizer, param) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


@pytest.mark.parametrize(
    "name, options, cls, check",
    [
        ("adamw", {}, "AdamW", {"fused": True}),
        ("AdamW", {"betas": [0.8, 0.9], "fused": False}, "AdamW", {"betas": (0.8, 0.9)}),
        ("sgd", {"momentum": 0.9, "nesterov": True}, "SGD", {"momentum": 0.9}),
        ("RMSprop", {"alpha": 0.9}, "RMSprop", {"alpha": 0.9}),
        ("Adagrad", {"lr_decay": 0.01}, "Adagrad", {"lr_decay": 0.01}),
    ],
)
def test_optimizers_by_name_with_options(tiny_bert, name, options, cls, check):
    optimizer = build_optimizer(name, tiny_bert, 1e-3, options)
    assert type(optimizer).__name__ == cls
    for key, value in check.items():
        assert all(tuple(g[key]) == value if key == "betas" else g[key] == value
                   for g in optimizer.param_groups)  # fmt: skip
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}


def test_no_weight_decay_on_biases_and_layer_norms(tiny_bert):
    optimizer = build_optimizer("AdamW", tiny_bert, 1e-3, {"weight_decay": 0.1})
    params = dict(tiny_bert.named_parameters())
    assert group_of(optimizer, params["encoder.layer.0.attention.self.query.weight"])[
        "weight_decay"
    ] == pytest.approx(0.1)
    for name in ("encoder.layer.0.attention.self.query.bias", "embeddings.LayerNorm.weight"):
        assert group_of(optimizer, params[name])["weight_decay"] == 0.0
    # Without the option, the optimizer's own default: AdamW's 0.01, SGD's 0.
    default = build_optimizer("AdamW", tiny_bert, 1e-3)
    assert group_of(default, params["pooler.dense.weight"])["weight_decay"] == pytest.approx(0.01)
    sgd = build_optimizer("SGD", tiny_bert, 1e-3)
    assert {g["weight_decay"] for g in sgd.param_groups} == {0.0}


def test_frozen_parameters_are_left_out():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    module[0].requires_grad_(False)
    optimizer = build_optimizer("adamw", module, 1e-3)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in module[1].parameters()}


def test_layerwise_decay_lowers_the_learning_rate_down_the_layers(tiny_bert):
    lr, decay = 1e-3, 0.5
    optimizer = build_optimizer("AdamW", tiny_bert, lr, {"weight_decay": 0.1}, decay)
    expected = {
        "embeddings.word_embeddings.weight": lr * decay**3,
        "embeddings.LayerNorm.bias": lr * decay**3,
        "encoder.layer.0.attention.self.query.weight": lr * decay**2,
        "encoder.layer.1.output.dense.bias": lr * decay,
        "encoder.layer.2.intermediate.dense.weight": lr,
        "pooler.dense.weight": lr,
    }
    params = dict(tiny_bert.named_parameters())
    for name, want in expected.items():
        assert group_of(optimizer, params[name])["lr"] == pytest.approx(want), name
    # Weight decay still skips biases and LayerNorm weights in every layer.
    assert group_of(optimizer, params["embeddings.LayerNorm.bias"])["weight_decay"] == 0.0
    assert group_of(optimizer, params["embeddings.word_embeddings.weight"])[
        "weight_decay"
    ] == pytest.approx(0.1)
    # A schedule scales every group's own learning rate.
    scheduler = build_scheduler("linear", optimizer, 0, 4)
    optimizer.step()
    scheduler.step()
    bottom = group_of(optimizer, params["embeddings.word_embeddings.weight"])["lr"]
    assert bottom == pytest.approx(lr * decay**3 * 0.75)


@pytest.mark.parametrize(
    "args, message",
    [
        (("adamx", "bert"), "unknown optimizer 'adamx'. Valid optimizers .*AdamW.*SGD"),
        (("LBFGS", "bert"), "unknown optimizer 'LBFGS'"),
        (("SGD", "bert", 1e-3, {"momentun": 0.9}),
         "optimizer_options: SGD has no option momentun. Its options: momentum, dampening"),
        (("SGD", "bert", 1e-3, {"momentum": -1}), "SGD refused its options .*Invalid momentum"),
        (("AdamW", "bert", 1e-3, {"lr": 0.1}), "the learning_rate parameter"),
        (("AdamW", "bert", 1e-3, None, 1.5), r"layerwise_decay: must be in \(0, 1\]"),
        (("AdamW", torch.nn.Linear(4, 4), 1e-3, None, 0.9),
         "layerwise_decay: .*transformer.*Linear has none"),
        (("AdamW", [torch.nn.Parameter(torch.ones(2))], 1e-3, None, 0.9),
         "needs the model's module"),
    ],
)  # fmt: skip
def test_bad_optimizer_choices_say_what_is_valid(tiny_bert, args, message):
    name, params, *rest = args
    params = tiny_bert if params == "bert" else params
    with pytest.raises(FinetunerError, match=message):
        build_optimizer(name, params, *(rest or [1e-3]))


# ---------------------------------------------------------------- schedulers

# lr at steps 0..10 with base lr 1, 2 warm-up steps of 10.
CURVES = {
    "linear": ({}, {0: 0, 1: 0.5, 2: 1, 6: 0.5, 8: 0.25, 10: 0}),
    "cosine": ({}, {0: 0, 1: 0.5, 2: 1, 4: (1 + math.cos(math.pi / 4)) / 2, 6: 0.5, 10: 0}),
    "cosine_with_restarts": ({"num_cycles": 2}, {1: 0.5, 2: 1, 4: 0.5, 6: 1, 8: 0.5}),
    "polynomial": ({"power": 2.0, "lr_end": 0.0}, {1: 0.5, 2: 1, 6: 0.25, 8: 0.0625, 10: 0}),
    "constant": ({}, {0: 1, 1: 1, 6: 1, 10: 1}),
    "constant_with_warmup": ({}, {0: 0, 1: 0.5, 2: 1, 6: 1, 10: 1}),
}


@pytest.mark.parametrize("name", list(CURVES))
def test_each_schedule_shapes_the_learning_rate(name):
    assert set(CURVES) == set(SCHEDULERS)
    options, points = CURVES[name]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(name, optimizer, 2, 10, options)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    for step, want in points.items():
        assert lrs[step] == pytest.approx(want, abs=1e-6), (step, lrs)


def test_bad_scheduler_choices_say_what_is_valid():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cases = [
        (lambda: build_scheduler("cosine_annealing", optimizer, 0, 10),
         "unknown scheduler 'cosine_annealing'. Valid schedulers: linear, cosine, "),
        (lambda: build_scheduler("cosine", optimizer, 0, 10, {"power": 2}),
         "cosine has no option power. Its options: num_cycles"),
        (lambda: build_scheduler("linear", optimizer, 0, 10, {"num_cycles": 2}),
         "linear has no option num_cycles. Its options: none"),
        (lambda: build_scheduler("polynomial", optimizer, 0, 10, {"lr_end": 2.0}),
         "polynomial refused its options .*lr_end"),
        (lambda: build_scheduler("linear", optimizer, 11, 10), "num_warmup_steps: must be from 0"),
        (lambda: steps_for("step", 4, 3), "scheduler_step: unknown value 'step'. Valid: batch, "
         "epoch"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(FinetunerError, match=message):
            call()


def test_scheduler_steps_per_batch_or_per_epoch():
    assert steps_for("batch", 4, 3) == 12
    assert steps_for("epoch", 4, 3) == 3

    def lrs_per_batch(scheduler_step: str) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler("linear", optimizer, 0, steps_for(scheduler_step, 4, 3))
        seen = []
        for _ in range(3):
            for _ in range(4):
                seen.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                if scheduler_step == "batch":
                    scheduler.step()
            if scheduler_step == "epoch":
                scheduler.step()
        return seen

    per_epoch = lrs_per_batch("epoch")
    assert per_epoch == pytest.approx([1.0] * 4 + [2 / 3] * 4 + [1 / 3] * 4)
    assert lrs_per_batch("batch") == pytest.approx([1 - i / 12 for i in range(12)])
