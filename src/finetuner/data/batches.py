"""Training batches, with media items decoded ahead in DataLoader workers.

A model side that embeds media (images, meshes) has `prepare_one(item) -> tensor`, the CPU
work of one item (read through the media cache, decode, transform), and
`embed_prepared(tensor, device)`. Workers prepare the next batches while the main process
trains on the current one. An item that turns out bad only now (say, a file changed after
preprocess) drops its row from the batch and is counted; it never stops a worker. Text is
tokenized in the main process, where the length buckets are formed.
"""

from __future__ import annotations

from finetuner.errors import BadItem


def media_columns(kind: str, sides: tuple) -> dict:
    """The columns of a kind's rows whose items a side prepares from media."""
    columns = {0: sides[0]} if kind == "labeled" else {0: sides[0], 1: sides[1]}
    return {c: side for c, side in columns.items() if hasattr(side, "prepare_one")}


def prepare(rows: list[tuple], columns: dict) -> tuple[list[tuple], dict, list[str]]:
    """The rows whose media all prepared, their stacked tensors by column, and the bad
    items' messages."""
    import torch

    kept, bad = [], []
    items: dict[int, list] = {c: [] for c in columns}
    for row in rows:
        try:
            prepared = [side.prepare_one(row[c]) for c, side in columns.items()]
        except BadItem as exc:
            bad.append(str(exc))
            continue
        kept.append(row)
        for column, tensor in zip(columns, prepared, strict=True):
            items[column].append(tensor)
    tensors = {c: torch.stack(v) for c, v in items.items() if v}
    return kept, tensors, bad


class PreparedBatches:
    """A map-style dataset of whole batches: `[b]` is batch b's kept rows, media tensors and
    bad-item messages."""

    def __init__(self, data, batches: list[list[int]], columns: dict):
        self.data, self.batches, self.columns = data, batches, columns

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        return prepare(self.data.rows(self.batches[b]), self.columns)


def batch_loader(
    data, batches: list[list[int]], columns: dict, workers: int, seed: int, pin: bool = False
):
    """Batches as (rows, tensors, bad messages), prepared in `workers` processes when there
    are media columns, else read here with nothing to prepare. `pin`: the tensors come in
    pinned (page-locked) memory, for an asynchronous copy to a GPU. The workers run torch
    with one thread (the DataLoader sets it), so they do not compete with the training
    step's threads."""
    if not columns:
        return ((data.rows(batch), {}, []) for batch in batches)
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        PreparedBatches(data, batches, columns),
        batch_size=None,  # each item is already a batch
        collate_fn=_as_is,  # not default_convert, which makes the rows' tuples lists
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),  # seeds the workers' random draws
        pin_memory=pin,
    )


def _as_is(batch):
    return batch
