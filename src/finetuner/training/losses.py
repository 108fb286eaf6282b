"""Losses, chosen by name with an options dict, for each kind of training data.

- pairs (query, document): loss(q_emb, d_emb); the other documents of a batch are negatives;
  pairs with mined hard negatives: MNRL(q_emb, d_emb, negatives_emb), the batch's negatives
  joining its documents as candidates;
- labeled (item, label): loss(emb, labels), labels as integer ids;
- scored (text1, text2, score): loss(emb1, emb2, scores);
- margins (query, positive, negative, margin): loss(q, pos, neg, margins), for
  MarginMSELoss; `finetuner synthesize` writes these rows.

Besides the named losses, any pytorch-metric-learning (PML) loss trains by its exact class
name, on labeled data, or on pairs where pair i is class i (its query and document are
positives, all else negatives). PML losses may take a PML miner, which picks the pairs or
triplets of a batch that the loss sees.

Classification-style PML losses (ArcFace, CosFace, ProxyAnchor, ...) learn a weight per
class: they train on labeled data only, and their parameters need an optimizer of their
own (`Loss.parameters()`).

Embeddings are unit length.
"""

from __future__ import annotations

import inspect

from finetuner.errors import FinetunerError
from finetuner.parameters import AUTO

# Each kind's named losses; the first is its default. Any PML loss also trains on pairs
# (parameter-free ones) and labeled data (all).
KIND_LOSSES: dict[str, tuple[str, ...]] = {
    "pairs": ("MultipleNegativesRankingLoss", "TripletMarginLoss", "CLIPLoss"),
    "labeled": ("TripletMarginLoss", "ArcFaceLoss", "CosFaceLoss", "SubCenterArcFaceLoss"),
    "scored": ("CoSENTLoss", "CosineSimilarityLoss"),
    "margins": ("MarginMSELoss",),
}
LOSSES = tuple(dict.fromkeys(n for names in KIND_LOSSES.values() for n in names))
# CLIP's symmetric loss needs the model's learnable temperature: it trains CLIP models only,
# and is theirs when the loss is auto.
CLIP_LOSS = "CLIPLoss"
MARGIN_MSE = "MarginMSELoss"
MNRL_SCALE = 20.0  # inverse temperature on cosine similarities, as in sentence-transformers
COSENT_SCALE = 20.0
TRIPLET_MARGIN = 0.05

# The options of the losses that are ours, with their defaults.
OWN_LOSS_OPTIONS: dict[str, dict] = {
    "MultipleNegativesRankingLoss": {"scale": MNRL_SCALE},
    "CLIPLoss": {},
    "CoSENTLoss": {"scale": COSENT_SCALE},
    "CosineSimilarityLoss": {},
    "MarginMSELoss": {},
}
# Our defaults for PML losses, under the user's options.
PML_DEFAULTS: dict[str, dict] = {"TripletMarginLoss": {"margin": TRIPLET_MARGIN}}
# PML classes that are not losses to choose: abstract, or not called with labels.
_NOT_CHOOSABLE = {"BaseMetricLossFunction", "GenericPairLoss", "VICRegLoss"}
# Options a PML class passes to its parents itself; the user cannot set them.
_INTERNAL_OPTIONS = {"mat_based_loss"}
# Options that take a PML object, which an options dict may give by its class name.
_OBJECT_OPTIONS = {
    "distance": "distances",
    "reducer": "reducers",
    "embedding_regularizer": "regularizers",
    "weight_regularizer": "regularizers",
}


# ---------------------------------------------------------------- names


def _subclass_names(module, base, excluded) -> tuple[str, ...]:
    return tuple(
        name
        for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, base) and name not in excluded
    )


def pml_loss_names() -> tuple[str, ...]:
    """The pytorch-metric-learning losses that train by name."""
    from pytorch_metric_learning import losses

    return _subclass_names(losses, losses.BaseMetricLossFunction, _NOT_CHOOSABLE)


def check_loss(name: str) -> str:
    """The loss's name as spelt here: the named losses in any case, PML losses exactly."""
    for valid in LOSSES:
        if name.lower() == valid.lower():
            return valid
    pml = pml_loss_names()
    if name in pml:
        return name
    near = [n for n in pml if n.lower() == name.lower()]
    hint = f" Did you mean {near[0]}?" if near else ""
    raise FinetunerError(
        f"parameter loss: unknown loss '{name}'. Valid losses: {', '.join(LOSSES)}; auto, "
        f"the data's own; or any "
        f"pytorch-metric-learning loss by its exact class name (such as ContrastiveLoss or "
        f"MultiSimilarityLoss).{hint}"
    )


def is_pml(name: str) -> bool:
    return name not in OWN_LOSS_OPTIONS and name in pml_loss_names()


def learns_class_weights(name: str) -> bool:
    """Whether a PML loss learns a weight per class (ArcFace and the like): it needs the
    number of classes, so labeled data."""
    from pytorch_metric_learning.losses.mixins import WeightMixin

    cls = _pml_class(name)
    if issubclass(cls, WeightMixin):
        return True
    # Others name the sizes as required arguments (P2SGradLoss).
    required = {
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.default is inspect.Parameter.empty
    }
    return bool(required & {"num_classes", "descriptors_dim"})


def loss_for(family: str, name: str, kind: str | None = None) -> str:
    """The loss a model trains with on a kind of data, given the loss parameter: auto is
    the model's and the data's own (a family's own loss, as CLIP's, else the kind's first in
    KIND_LOSSES); a loss given that does not fit them is refused. With the kind not known
    yet (before the data is read), only the model is checked."""
    from finetuner.models.registry import get_family

    valid = KIND_LOSSES[kind or "pairs"]
    own = get_family(family)
    if name == AUTO:
        if own.losses:
            return own.losses[0]
        if kind is None:
            return AUTO
        name = valid[0]
    name = check_loss(name)
    if own.losses:  # a family that trains with its own losses only (CLIP)
        if name not in own.losses:
            raise FinetunerError(
                f"parameter loss: {family} models train with {' or '.join(own.losses)} "
                f"only (part of the model, as CLIP's learnable temperature is), not {name}."
            )
        return name
    if name == CLIP_LOSS:
        raise FinetunerError(
            f"parameter loss: {CLIP_LOSS} trains CLIP models (text-to-image) only. "
            f"Valid losses here: {', '.join(n for n in valid if n != CLIP_LOSS)}."
        )
    if name == MARGIN_MSE and kind not in (None, "margins"):
        raise FinetunerError(
            f"parameter loss: {MARGIN_MSE} trains on query,positive,negative,margin rows, "
            f"which `finetuner synthesize` makes from queries and a corpus; this data is "
            f"{kind}. Valid losses for {kind} data: "
            f"{', '.join(n for n in KIND_LOSSES[kind] if n != CLIP_LOSS)}."
        )
    if (name == MARGIN_MSE or kind == "margins") and not (
        own.query_kind == own.document_kind == "text"
    ):
        raise FinetunerError(
            f"parameter loss: {MARGIN_MSE} and its query,positive,negative,margin rows train "
            f"text models only; this is a {family} model."
        )
    if kind is None:
        return name
    if name in valid:
        return name
    if kind in ("pairs", "labeled") and is_pml(name):
        if kind == "pairs" and learns_class_weights(name):
            raise FinetunerError(
                f"parameter loss: {name} learns a weight per class, so it needs labeled data "
                f"(item,label); pairs have no classes. Valid losses for pairs: "
                f"{', '.join(n for n in valid if n != CLIP_LOSS)}, or a parameter-free "
                f"pytorch-metric-learning loss."
            )
        return name
    extra = ", or any pytorch-metric-learning loss" if kind == "labeled" else ""
    raise FinetunerError(
        f"parameter loss: {name} does not train on {kind} data. Valid losses for "
        f"{kind} data: {', '.join(n for n in valid if n != CLIP_LOSS)}{extra}."
    )


# ---------------------------------------------------------------- building


class Loss:
    """A loss for one kind of data, called as the module docstring says. `parameters()`
    are its own learnable ones (ArcFace's class weights; none for most losses), for a
    `loss_optimizer` of their own; `to(device)` moves them before that is built."""

    def __init__(self, name: str, fn, module=None):
        self.name = name
        self.fn = fn
        self.module = module  # the PML loss, if any

    def __call__(self, *args):
        return self.fn(*args)

    def parameters(self) -> list:
        return list(self.module.parameters()) if self.module is not None else []

    def to(self, device) -> Loss:
        if self.module is not None:
            self.module.to(device)
        return self

    def __repr__(self) -> str:
        return f"Loss({self.name})"


def build_loss(
    name: str,
    model=None,
    kind: str = "pairs",
    options: dict | None = None,
    miner: str | None = None,
    miner_options: dict | None = None,
    *,
    embedding_dim: int | None = None,
    num_classes: int | None = None,
) -> Loss:
    """The loss `name` with its options, for a kind of data (see the module's docstring).

    CLIPLoss reads the temperature from `model.scale()` at every call, so it is learnt.
    Losses that learn class weights take `embedding_size` and `num_classes` from their
    options, else from `embedding_dim` and `num_classes` (the labels of the data, as ids
    0..num_classes-1 over the whole data set, not per batch)."""
    name = check_loss(name)
    options = dict(options or {})
    if name in OWN_LOSS_OPTIONS:
        if miner:
            raise FinetunerError(
                f"parameter miner: miners pick pairs or triplets for pytorch-metric-learning "
                f"losses; {name} does not take one."
            )
        options = _own_options(name, options)
        return Loss(name, _own_loss(name, model, kind, options))
    if kind not in ("pairs", "labeled"):
        raise FinetunerError(
            f"parameter loss: {name} trains on pairs or labeled data, not {kind} data."
        )
    loss, classes = _pml_loss(name, options, embedding_dim, num_classes)
    if kind == "pairs" and list(loss.parameters()):
        raise FinetunerError(
            f"parameter loss: {name} learns a weight per class, so it needs labeled data "
            f"(item,label); pairs have no classes."
        )
    mine = build_miner(miner, miner_options)
    return Loss(name, _with_labels(loss, mine, kind, classes), module=loss)


def _own_options(name: str, options: dict) -> dict:
    defaults = OWN_LOSS_OPTIONS[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise FinetunerError(
            f"parameter loss_options: {name} has no option {', '.join(unknown)}. "
            f"Its options: {valid}."
        )
    return {**defaults, **options}


def _own_loss(name: str, model, kind: str, options: dict):
    import torch
    import torch.nn.functional as F

    if name == CLIP_LOSS:
        from finetuner.models.clip_net import clip_loss

        clip_symmetric = clip_loss()
        return lambda q, d: clip_symmetric(d, q, model.scale())  # images, texts, scale
    if name == "MultipleNegativesRankingLoss":
        scale = options["scale"]

        def mnrl(q, d, negatives=None, excluded=None):
            # Every other document in the batch is a negative for each query, and so is
            # every mined hard negative of the batch (finetuner.synthesis.hard_negatives)
            # but those `excluded` for a query ([i, j]: negative j is a positive of query i).
            scores = q @ d.T * scale
            if negatives is not None:
                extra = q @ negatives.T * scale
                if excluded is not None:
                    extra = extra.masked_fill(excluded, -torch.inf)
                scores = torch.cat([scores, extra], dim=1)
            return F.cross_entropy(scores, torch.arange(len(q), device=q.device))

        return mnrl
    if name == "CoSENTLoss":
        return lambda a, b, scores: cosent(a, b, scores, options["scale"])
    if name == MARGIN_MSE:
        return margin_mse
    return cosine_similarity_loss


def _with_labels(loss, miner, kind: str, num_classes: int | None):
    """Call a PML loss with labels, and its miner's picks where it has one. A loss with a
    weight per class would fail on a device-side index error beyond `num_classes`."""
    import torch

    def labeled(emb, labels):
        if num_classes is not None and int(labels.max()) >= num_classes:
            raise FinetunerError(
                f"parameter loss_options: {type(loss).__name__} has num_classes "
                f"{num_classes}, but the data has label id {int(labels.max())}."
            )
        return loss(emb, labels, miner(emb, labels) if miner else None)

    if kind == "labeled":
        return labeled

    def pairs(q, d):
        # Pair i is class i: its query and document are positives, all else negatives.
        labels = torch.arange(len(q), device=q.device)
        return labeled(torch.cat([q, d]), torch.cat([labels, labels]))

    return pairs


def _pml_class(name: str):
    from pytorch_metric_learning import losses

    return getattr(losses, name)


def _pml_loss(name: str, options: dict, embedding_dim: int | None, num_classes: int | None):
    """The PML loss, and its number of classes where it learns a weight per class."""
    cls = _pml_class(name)
    options = {**PML_DEFAULTS.get(name, {}), **options}
    if learns_class_weights(name):
        # P2SGradLoss calls the embedding size descriptors_dim.
        size = "descriptors_dim" if "descriptors_dim" in _options_of(cls) else "embedding_size"
        for option, value in ((size, embedding_dim), ("num_classes", num_classes)):
            options.setdefault(option, value)
            if options[option] is None:
                raise FinetunerError(
                    f"parameter loss_options: {name} learns a weight per class and needs "
                    f"{option}; give it in loss_options or train on labeled data."
                )
        return _construct(cls, options, "loss_options"), options["num_classes"]
    return _construct(cls, options, "loss_options"), None


# ---------------------------------------------------------------- miners


def pml_miner_names() -> tuple[str, ...]:
    from pytorch_metric_learning import miners

    names = _subclass_names(miners, miners.BaseMiner, {"EmbeddingsAlreadyPackagedAsTriplets"})
    return tuple(n for n in names if not n.startswith("Base"))


def build_miner(name: str | None, options: dict | None = None):
    """The PML miner `name` (any case) with its options, or None without a name."""
    if not name:
        if options:
            raise FinetunerError("parameter miner_options: given without a miner.")
        return None
    from pytorch_metric_learning import miners

    names = pml_miner_names()
    match = [n for n in names if n.lower() == name.lower()]
    if not match:
        raise FinetunerError(
            f"parameter miner: unknown miner '{name}'. Valid miners: {', '.join(names)}."
        )
    return _construct(getattr(miners, match[0]), dict(options or {}), "miner_options")


# ---------------------------------------------------------------- PML options


def _options_of(cls) -> list[str]:
    """The keyword options a PML class takes: its own and those it passes on to its
    parents through **kwargs."""
    import torch

    out = []
    for klass in cls.__mro__:
        if klass in (torch.nn.Module, object):
            break
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        out += [
            p.name
            for p in params
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return [n for n in dict.fromkeys(out) if n not in _INTERNAL_OPTIONS]


def _construct(cls, options: dict, parameter: str):
    valid = _options_of(cls)
    name = cls.__name__
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise FinetunerError(
            f"parameter {parameter}: {name} has no option {', '.join(unknown)}. "
            f"Its options: {', '.join(valid)}."
        )
    options = {k: _pml_object(k, v, parameter) for k, v in options.items()}
    try:
        return cls(**options)
    except (TypeError, ValueError, AssertionError) as e:
        raise FinetunerError(
            f"parameter {parameter}: {name} refused its options {options}: {e}. "
            f"Its options: {', '.join(valid)}."
        ) from e


def _pml_object(option: str, value, parameter: str):
    """An option that takes a PML object (distance, reducer, regularizer) may name its
    class, as a JSON options dict can hold no objects: {"distance": "CosineSimilarity"}."""
    if option not in _OBJECT_OPTIONS or not isinstance(value, str):
        return value
    import importlib

    module = importlib.import_module(f"pytorch_metric_learning.{_OBJECT_OPTIONS[option]}")
    names = [n for n, c in vars(module).items() if inspect.isclass(c) and "Base" not in n]
    if value not in names:
        raise FinetunerError(
            f"parameter {parameter}: unknown {option} '{value}'. Valid: {', '.join(names)}."
        )
    return getattr(module, value)()


# ---------------------------------------------------------------- loss functions


def cosine_similarity_loss(a, b, scores):
    """The squared error between each pair's cosine and its score (scores in [-1, 1])."""
    import torch.nn.functional as F

    return F.mse_loss((a * b).sum(-1), scores)


def cosent(a, b, scores, scale: float = COSENT_SCALE):
    """CoSENT: every pair scored higher should have a higher cosine than every pair scored
    lower; log(1 + sum exp(scale * (cos_low - cos_high))). Only the order of scores counts."""
    import torch

    cos = (a * b).sum(-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    higher = scores[:, None] > scores[None, :]  # pairs where i should be above j
    diff = diff[higher]
    zero = torch.zeros(1, device=cos.device, dtype=cos.dtype)
    return torch.logsumexp(torch.cat([zero, diff]), dim=0)


def margin_mse(q, pos, neg, target_margins):
    """MarginMSE (Hofstaetter et al. 2020, as sentence-transformers' MarginMSELoss): the
    squared error between the model's margin, sim(q, pos) - sim(q, neg), and a teacher's
    (a cross-encoder's) margin for the same triple. Embeddings are unit length, so sim is
    the cosine, and the model's margin lies in [-2, 2]: synthesis gives margins of
    probabilities, in [-1, 1], which it can match (raw logit margins could not be)."""
    import torch.nn.functional as F

    return F.mse_loss((q * pos).sum(-1) - (q * neg).sum(-1), target_margins)
