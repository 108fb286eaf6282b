"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"; sentence-transformers' CachedMultipleNegativesRankingLoss): a training step
on a large batch, and so with many in-batch negatives, in the memory of a small one.

1. Embed the batch in mini-batches without gradients, keeping each one's random state.
2. Compute the loss on all the embeddings, and its gradient with respect to them (the
   cache); a loss's own weights (CLIP's temperature, ArcFace's class weights) get theirs.
3. Embed each mini-batch again, with gradients and under its random state (so dropout
   drops the same units), and backpropagate its share of the cached gradient.

The weights' gradients are the whole batch's loss's; memory holds the activations of one
mini-batch at a time, for a second forward pass's time. It works for any loss, since the
loss only ever sees embeddings; a model whose forward pass depends on the batch
(BatchNorm in training mode) is refused, as its mini-batches would train another model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from finetuner.errors import FinetunerError


def check_model(embedder, family: str) -> None:
    """Refuse a model whose embeddings depend on the rest of the batch (see the module's
    docstring). Called with the model in training mode."""
    import torch

    batch_norm = torch.nn.modules.batchnorm._BatchNorm
    if any(isinstance(m, batch_norm) and m.training for m in embedder.modules()):
        raise FinetunerError(
            f"parameter mini_batch_size: {family} models normalise with the statistics of "
            "each forward pass (BatchNorm), so embedding a batch in mini-batches would train "
            "another model than the batch's. Set mini_batch_size to 0 (off) for this model."
        )


class _RandomState:
    """The random state before a forward pass, to run it again alike (dropout)."""

    def __init__(self, device: str):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.device_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    @contextlib.contextmanager
    def restored(self):
        """Run under the kept state; the state outside is left as it was."""
        import torch

        devices = [torch.device(self.device)] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda:
                torch.cuda.set_rng_state(self.device_state, self.device)
            yield


class GradCache:
    """A training step in mini-batches: called with a batch's rows, prepared media tensors
    (by column) and the autocast context, it leaves the batch's gradients in the weights
    and returns its loss (no graph attached).

    `embed(column, rows, prepared)` embeds one column of some rows with gradients;
    `loss(embeddings, rows)` is the batch's loss from its `columns` columns' embeddings.
    In a parallel run (`parallel`), the loss gathers the embeddings of every process
    (finetuner.training.loop.loss_of), and the gradients of `modules` are averaged here,
    as the processes may make different numbers of mini-batches."""

    def __init__(
        self,
        embedder,
        family: str,
        columns: int,
        mini_batch_size: int,
        device: str,
        embed: Callable,
        loss: Callable,
        parallel=None,
        modules: list | None = None,
    ):
        check_model(embedder, family)
        self.columns, self.size, self.device = columns, mini_batch_size, device
        self.embed, self.loss = embed, loss
        self.parallel, self.modules = parallel, list(modules or [embedder])
        if parallel is not None:  # the processes start from process 0's weights
            parallel.replicate(self.modules)

    def _spans(self, rows: int) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.size, rows)) for lo in range(0, rows, self.size)]

    def _embed(self, column: int, rows: list, prepared: dict, span: tuple[int, int]):
        lo, hi = span
        return self.embed(column, rows[lo:hi], {c: t[lo:hi] for c, t in prepared.items()})

    def __call__(self, rows: list, prepared: dict, autocast=None):
        import torch

        autocast = autocast or contextlib.nullcontext()
        spans = self._spans(len(rows))
        states, cached = {}, []
        with torch.no_grad():
            for column in range(self.columns):
                parts = []
                for span in spans:
                    states[column, span] = _RandomState(self.device)
                    with autocast:
                        parts.append(self._embed(column, rows, prepared, span))
                cached.append(torch.cat(parts).requires_grad_())
        with autocast:
            loss = self.loss(cached, rows)
        loss.backward()  # the cache: each embedding's gradient, in cached[c].grad
        for column in range(self.columns):
            for span in spans:
                with states[column, span].restored(), autocast:
                    embeddings = self._embed(column, rows, prepared, span)
                embeddings.backward(cached[column].grad[span[0] : span[1]])
        if self.parallel is not None:
            params = [p for module in self.modules for p in module.parameters()]
            self.parallel.average_gradients(params)
        return loss.detach()
