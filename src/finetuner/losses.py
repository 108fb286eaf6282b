"""Losses, chosen by name, for each kind of training data.

- pairs (query, document): loss(q_emb, d_emb); the other documents of a batch are negatives;
- labeled (item, label): loss(emb, labels), labels as integer ids;
- scored (text1, text2, score): loss(emb1, emb2, scores).

Embeddings are unit length.
"""

from __future__ import annotations

from finetuner.errors import FinetunerError

# Each kind's losses; the first is its default.
KIND_LOSSES: dict[str, tuple[str, ...]] = {
    "pairs": ("MultipleNegativesRankingLoss", "TripletMarginLoss", "CLIPLoss"),
    "labeled": ("TripletMarginLoss",),
    "scored": ("CoSENTLoss", "CosineSimilarityLoss"),
}
LOSSES = tuple(dict.fromkeys(n for names in KIND_LOSSES.values() for n in names))
DEFAULT_LOSS = "MultipleNegativesRankingLoss"
# CLIP's symmetric loss needs the model's learnable temperature: it trains CLIP models only,
# and is theirs whatever the loss parameter says while it is left at its default.
CLIP_LOSS = "CLIPLoss"
MNRL_SCALE = 20.0  # inverse temperature on cosine similarities, as in sentence-transformers
COSENT_SCALE = 20.0
TRIPLET_MARGIN = 0.05


def check_loss(name: str) -> str:
    for valid in LOSSES:
        if name.lower() == valid.lower():
            return valid
    raise FinetunerError(
        f"parameter loss: unknown loss '{name}'. Valid losses: {', '.join(LOSSES)}."
    )


def loss_for(family: str, name: str, kind: str | None = None) -> str:
    """The loss a model trains with on a kind of data, given the loss parameter. Left at its
    default, the parameter means the default of the model and the data. With the kind not
    known yet (before the data is read), only the model is checked."""
    name = check_loss(name)
    valid = KIND_LOSSES[kind or "pairs"]
    if family == "clip":
        if name not in (CLIP_LOSS, DEFAULT_LOSS):
            raise FinetunerError(
                f"parameter loss: CLIP models train with {CLIP_LOSS} (its learnable "
                f"temperature is part of the model), not {name}."
            )
        return CLIP_LOSS
    if name == CLIP_LOSS:
        raise FinetunerError(
            f"parameter loss: {CLIP_LOSS} trains CLIP models (text-to-image) only. "
            f"Valid losses here: {', '.join(n for n in valid if n != CLIP_LOSS)}."
        )
    if kind is None:
        return name
    if name == DEFAULT_LOSS:
        return valid[0]
    if name not in valid:
        raise FinetunerError(
            f"parameter loss: {name} does not train on {kind} data. Valid losses for "
            f"{kind} data: {', '.join(n for n in valid if n != CLIP_LOSS)}."
        )
    return name


def build_loss(name: str, model=None, kind: str = "pairs"):
    """The loss function of `name` for a kind of data (see the module's docstring).

    CLIPLoss reads the temperature from `model.scale()` at every call, so it is learnt."""
    import torch
    import torch.nn.functional as F

    name = check_loss(name)
    if name == CLIP_LOSS:
        from finetuner.models.clip import clip_loss

        clip_symmetric = clip_loss()
        return lambda q, d: clip_symmetric(d, q, model.scale())  # images, texts, scale
    if name == "MultipleNegativesRankingLoss":

        def mnrl(q, d):
            # Every other document in the batch is a negative for each query.
            scores = q @ d.T * MNRL_SCALE
            return F.cross_entropy(scores, torch.arange(len(q), device=q.device))

        return mnrl
    if name == "TripletMarginLoss":
        from pytorch_metric_learning import losses

        triplet = losses.TripletMarginLoss(margin=TRIPLET_MARGIN)
        if kind == "labeled":
            return triplet

        def triplet_pairs(q, d):
            # Pair i is class i: its query and document are positives, all else negatives.
            labels = torch.arange(len(q), device=q.device)
            return triplet(torch.cat([q, d]), torch.cat([labels, labels]))

        return triplet_pairs
    if name == "CoSENTLoss":
        return cosent
    return cosine_similarity_loss


def cosine_similarity_loss(a, b, scores):
    """The squared error between each pair's cosine and its score (scores in [-1, 1])."""
    import torch.nn.functional as F

    return F.mse_loss((a * b).sum(-1), scores)


def cosent(a, b, scores):
    """CoSENT: every pair scored higher should have a higher cosine than every pair scored
    lower; log(1 + sum exp(scale * (cos_low - cos_high))). Only the order of scores counts."""
    import torch

    cos = (a * b).sum(-1) * COSENT_SCALE
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    higher = scores[:, None] > scores[None, :]  # pairs where i should be above j
    diff = diff[higher]
    zero = torch.zeros(1, device=cos.device, dtype=cos.dtype)
    return torch.logsumexp(torch.cat([zero, diff]), dim=0)
