"""Losses over a batch of (query, document) embedding pairs, chosen by name."""

from __future__ import annotations

from finetuner.errors import FinetunerError

LOSSES = ("MultipleNegativesRankingLoss", "TripletMarginLoss", "CLIPLoss")
DEFAULT_LOSS = "MultipleNegativesRankingLoss"
# CLIP's symmetric loss needs the model's learnable temperature: it trains CLIP models only,
# and is theirs whatever the loss parameter says while it is left at its default.
CLIP_LOSS = "CLIPLoss"


def check_loss(name: str) -> str:
    for valid in LOSSES:
        if name.lower() == valid.lower():
            return valid
    raise FinetunerError(
        f"parameter loss: unknown loss '{name}'. Valid losses: {', '.join(LOSSES)}."
    )


def loss_for(family: str, name: str) -> str:
    """The loss a model family trains with, given the loss parameter."""
    name = check_loss(name)
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
            f"Valid losses here: {', '.join(n for n in LOSSES if n != CLIP_LOSS)}."
        )
    return name


def build_loss(name: str, model=None):
    """A callable (query_emb, doc_emb) -> scalar loss. Embeddings are unit length.

    CLIPLoss reads the temperature from `model.scale()` at every call, so it is learnt."""
    import torch
    import torch.nn.functional as F

    name = check_loss(name)
    if name == CLIP_LOSS:
        from finetuner.models.clip import clip_loss

        clip_symmetric = clip_loss()

        def symmetric(q, d):
            # Text-to-image and image-to-text cross-entropy, averaged.
            return clip_symmetric(d, q, model.scale())

        return symmetric
    if name == "MultipleNegativesRankingLoss":
        scale = 20.0  # inverse temperature on cosine similarities, as in sentence-transformers

        def mnrl(q, d):
            # Every other document in the batch is a negative for each query.
            scores = q @ d.T * scale
            return F.cross_entropy(scores, torch.arange(len(q), device=q.device))

        return mnrl

    from pytorch_metric_learning import losses

    triplet = losses.TripletMarginLoss(margin=0.05)

    def triplet_loss(q, d):
        # Pair i is class i: its query and document are positives, all else negatives.
        labels = torch.arange(len(q), device=q.device)
        return triplet(torch.cat([q, d]), torch.cat([labels, labels]))

    return triplet_loss
