"""Batch samplers: which rows go into each training batch, one epoch at a time.

- random: shuffled rows;
- class: `num_items_per_class` items of each of several labels, so every item has
  positives in its batch (labeled data);
- no_duplicates: no text twice in a batch, so an in-batch negative is never a copy of the
  positive (pairs, for MultipleNegativesRankingLoss and CLIPLoss).

Every sampler shuffles with a seeded torch.Generator, so a seed gives the same batches.
With row lengths, random and no_duplicates batches are grouped by length (see
`group_by_length`).
"""

from __future__ import annotations

from collections import deque

from finetuner.errors import FinetunerError

SAMPLERS = ("auto", "random", "class", "no_duplicates")


def check_sampler(name: str, kind: str | None = None) -> str:
    """A valid sampler name, and one that fits the data's kind where that is known."""
    if name not in SAMPLERS:
        raise FinetunerError(
            f"parameter sampler: unknown sampler '{name}'. Valid samplers: {', '.join(SAMPLERS)}."
        )
    if name == "class" and kind != "labeled":
        raise FinetunerError(
            f"parameter sampler: the class sampler needs labeled data (item,label); this "
            f"data is {kind}."
        )
    return name


def default_sampler(kind: str, loss: str) -> str:
    if kind == "labeled":
        return "class"
    if kind == "pairs" and loss in ("MultipleNegativesRankingLoss", "CLIPLoss"):
        return "no_duplicates"
    return "random"


def _order(n: int, generator) -> list[int]:
    import torch

    return torch.randperm(n, generator=generator).tolist()


def _rotate_to_fit(waiting: deque, fits, look_ahead: int) -> bool:
    """Rotate `waiting` until its first entry fits; False if none of the next look_ahead do."""
    for _ in range(min(len(waiting), look_ahead)):
        if fits(waiting[0]):
            return True
        waiting.rotate(-1)
    return False


def group_by_length(order: list[int], lengths, window: int) -> list[int]:
    """The shuffled order with each run of `window` rows sorted by length, longest first.

    Batches cut from it hold texts of similar length, so padding, which is 30-50% of a
    randomly batched text's tokens, mostly goes; each batch still draws its rows from a
    random `window` of the data, and the batches are shuffled afterwards."""
    out = []
    for start in range(0, len(order), window):
        out += sorted(order[start : start + window], key=lambda i: -lengths[i])
    return out


def _shuffled(batches: list[list[int]], generator) -> list[list[int]]:
    return [batches[i] for i in _order(len(batches), generator)]


def random_batches(
    n: int, batch_size: int, generator, lengths=None, window: int = 1
) -> list[list[int]]:
    """Shuffled index batches; a last batch of one row is dropped. With `lengths`, the rows
    of each `window` batches are grouped by length."""
    order = _order(n, generator)
    grouped = lengths is not None and window > 1
    if grouped:
        order = group_by_length(order, lengths, window * batch_size)
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    out = [b for b in out if len(b) >= 2]
    return _shuffled(out, generator) if grouped else out


def class_batches(labels: list, batch_size: int, per_class: int, generator) -> list[list[int]]:
    """Batches of `per_class` items of each of several labels (fewer where a label has
    fewer), no label twice. Labels with a single item cannot give a positive and are left
    out."""
    if per_class < 2:
        raise FinetunerError(f"parameter num_items_per_class: must be >= 2, got {per_class}.")
    by_label: dict = {}
    for i in _order(len(labels), generator):
        by_label.setdefault(labels[i], []).append(i)
    groups = []
    for items in by_label.values():
        chunks = [items[i : i + per_class] for i in range(0, len(items), per_class)]
        groups += [c for c in chunks if len(c) >= 2]
    if not groups:
        raise FinetunerError("no label has two items: the class sampler cannot form positives.")
    waiting = deque(groups[g] for g in _order(len(groups), generator))
    batches, batch, used = [], [], set()
    while waiting:
        # The first waiting group of a label not yet in the batch; if there is none, the
        # batch is done.
        if not _rotate_to_fit(waiting, lambda g, used=used: labels[g[0]] not in used, len(waiting)):
            batches.append(batch)
            batch, used = [], set()
            continue
        group = waiting.popleft()
        if batch and len(batch) + len(group) > batch_size:
            batches.append(batch)
            batch, used = [], set()
        batch = batch + group
        used.add(labels[group[0]])
    if len(batch) >= 2:
        batches.append(batch)
    return batches


def no_duplicate_batches(
    rows: list[tuple], batch_size: int, generator, lengths=None, window: int = 1
) -> list[list[int]]:
    """Shuffled batches in which no text appears twice. A row that clashes with the batch
    being filled waits for a later one; a batch ends when it is full, or when none of the
    next rows fits it (looking a few batches ahead, so the work stays linear). With
    `lengths`, the rows of each `window` batches are grouped by length."""
    order = _order(len(rows), generator)
    grouped = lengths is not None and window > 1
    if grouped:
        order = group_by_length(order, lengths, window * batch_size)
    waiting = deque(order)
    look_ahead = 4 * batch_size
    batches, batch, seen = [], [], set()
    while waiting:
        fresh = lambda i, seen=seen: not any(t in seen for t in rows[i])  # noqa: E731
        if not _rotate_to_fit(waiting, fresh, look_ahead):
            batches.append(batch)
            batch, seen = [], set()
            continue
        i = waiting.popleft()
        batch.append(i)
        seen.update(rows[i])
        if len(batch) == batch_size:
            batches.append(batch)
            batch, seen = [], set()
    batches.append(batch)
    batches = [b for b in batches if len(b) >= 2]
    return _shuffled(batches, generator) if grouped else batches
