"""Losses over a batch of (query, document) embedding pairs, chosen by name."""

from __future__ import annotations

from finetuner.errors import FinetunerError

LOSSES = ("MultipleNegativesRankingLoss", "TripletMarginLoss")
DEFAULT_LOSS = "MultipleNegativesRankingLoss"


def check_loss(name: str) -> str:
    for valid in LOSSES:
        if name.lower() == valid.lower():
            return valid
    raise FinetunerError(
        f"parameter loss: unknown loss '{name}'. Valid losses: {', '.join(LOSSES)}."
    )


def build_loss(name: str):
    """A callable (query_emb, doc_emb) -> scalar loss. Embeddings are unit length."""
    import torch
    import torch.nn.functional as F

    name = check_loss(name)
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
