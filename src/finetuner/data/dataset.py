"""Preprocess: validated rows of data files into Parquet shards, streamed.

Rows come from `formats.read_rows`. Each is checked for the model (items that are images,
meshes or vectors are resolved and checked) and for its kind; a bad row is skipped and
counted while there are at most `max_bad_rows`, and one more fails the run, listing the
first ones. Duplicates are dropped, and a share of the queries (pairs, margins), first texts
(scored) or items (labeled) is held out for evaluation. Memory stays flat: rows go to
Parquet shards as they come, and only a 64-bit digest per row and per query is kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from finetuner.data import formats
from finetuner.data.formats import KINDS, NUMBER_ROLES, DataOptions
from finetuner.data.pairs import (
    BadRowError,
    RowChecker,
    TextImageRows,
    check_val_split,
    digest,
    field_checker,
    held_out,
)
from finetuner.errors import FinetunerError
from finetuner.io.staging import stage_dir

KIND_KEY = b"finetuner.kind"
# What a stored dataset holds: the kinds of data files, and two that evaluation alone reads
# (BEIR data, finetuner.data.beir): graded judgements of queries, and the corpus they judge,
# stored in CORPUS_FOLDER beside them.
STORED = {
    **KINDS,
    "graded": ("query_id", "query", "document_id", "score"),
    "corpus": ("document_id", "document"),
}
CORPUS_FOLDER = "_corpus"  # a leading '_' keeps its shards out of the judgements' dataset

# A column that pairs may carry besides their own: each row's mined hard negatives, a list
# of documents (finetuner.synthesis.hard_negatives), which the training adds to the batch.
NEGATIVES = "negatives"
ROWS_PER_SHARD = 250_000
BATCH_ROWS = 8192
BAD_ROW_SAMPLES = 20
LENGTH_EDGES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class BadRows:
    """Skipped rows: counted, and the first ones kept for the report and the error."""

    limit: int
    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, error: BadRowError) -> None:
        self.count += 1
        if len(self.samples) < BAD_ROW_SAMPLES:
            self.samples.append(str(error))
        if self.count <= self.limit:
            return
        if self.limit == 0:  # the default: the first bad row is the error
            raise FinetunerError(f"{self.samples[0]} (data_options.max_bad_rows is 0.)")
        listed = "\n".join(f"  - {sample}" for sample in self.samples[:5])
        raise FinetunerError(
            f"{self.count} bad rows, more than max_bad_rows={self.limit}. The first:\n"
            f"{listed}\nFix the data, or raise max_bad_rows to skip more bad rows."
        )


def open_rows(uri: str, spec, opts: DataOptions) -> tuple[str, Iterator, RowChecker]:
    """The kind of the data at `uri`, its raw rows, and the checker for the model of
    `spec` that each must pass."""
    kind, rows = formats.read_rows(uri, opts)
    _check_kind(uri, kind, spec)
    checker = RowChecker(
        uri,
        kind,
        opts,
        field=field_checker(spec, opts),
        pair_row=TextImageRows(opts.media_limits()) if _two_kinds(spec) else None,
        unit=formats.row_unit(formats.detect_format(uri, opts.format)),
    )
    return kind, rows, checker


def checked_rows(uri: str, spec, opts: DataOptions, bad: BadRows) -> tuple[str, Iterator[tuple]]:
    """The kind of the data at `uri`, and its rows, checked for the model of `spec`; bad
    rows go to `bad`."""
    kind, rows, checker = open_rows(uri, spec, opts)

    def good() -> Iterator[tuple]:
        check = checker.check
        for row in rows:
            try:
                yield check(row)
            except BadRowError as exc:
                bad.add(exc)

    return kind, good()


def _two_kinds(spec) -> bool:
    """Whether the model embeds queries and documents of different kinds (CLIP: text and
    image), so that each row holds one of each."""
    return spec.query_kind != spec.document_kind


def _check_kind(uri: str, kind: str, spec) -> None:
    if _two_kinds(spec) and kind != "pairs":
        raise FinetunerError(
            f"{uri} holds {kind} rows; {spec.name} embeds {spec.query_kind} queries and "
            f"{spec.document_kind} documents, so it trains on {spec.query_kind},"
            f"{spec.document_kind} pairs only."
        )
    if kind == "margins" and not spec.query_kind == spec.document_kind == "text":
        raise FinetunerError(
            f"{uri} holds query,positive,negative,margin rows (data synthesis), which train "
            f"text models only; {spec.name} is a {spec.family} model."
        )


# ---------------------------------------------------------------- writing shards


def _schema(kind: str):
    import pyarrow as pa

    columns = [
        pa.field(name, pa.float64() if name in NUMBER_ROLES else pa.string())
        for name in STORED[kind]
    ]
    return pa.schema(columns, metadata={KIND_KEY: kind.encode()})


class ShardWriter:
    """Rows of one kind into `folder/part-NNNNN.parquet`, a batch at a time."""

    def __init__(
        self, folder: str | Path, kind: str, extra: dict | None = None, staging: bool = False
    ):
        import pyarrow as pa

        self.folder = Path(folder)
        # Staged rows are read back once, at once: encoding and compressing them is not worth
        # its time.
        self.options = {"compression": "none", "use_dictionary": False} if staging else {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.schema = _schema(kind)
        for name, type_ in (extra or {}).items():  # e.g. the split's group digest
            self.schema = self.schema.append(pa.field(name, type_))
        self.pending: list[tuple] = []
        self.rows = self.shard_rows = self.shards = 0
        self.writer = None

    def write(self, values: tuple) -> None:
        self.pending.append(values)
        if len(self.pending) >= BATCH_ROWS:
            self._flush()

    def write_batch(self, batch) -> None:
        """Write the columns of an Arrow record batch that this writer has."""
        import pyarrow as pa

        self._flush()
        columns = [batch.column(name) for name in self.schema.names]
        self._write(pa.record_batch(columns, schema=self.schema))

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            columns = [list(column) for column in zip(*self.pending, strict=True)]
            self._write(pa.record_batch(columns, schema=self.schema))
            self.pending = []

    def _write(self, batch) -> None:
        import pyarrow.parquet as pq

        if not batch.num_rows:
            return
        if self.writer is None:
            path = self.folder / f"part-{self.shards:05d}.parquet"
            self.writer = pq.ParquetWriter(path, self.schema, **self.options)
            self.shards += 1
        self.writer.write_batch(batch)
        self.rows += batch.num_rows
        self.shard_rows += batch.num_rows
        if self.shard_rows >= ROWS_PER_SHARD:
            self.writer.close()
            self.writer, self.shard_rows = None, 0

    def close(self) -> int:
        """Flush, close, and make sure the folder holds a (possibly empty) dataset."""
        import pyarrow.parquet as pq

        self._flush()
        if self.writer is not None:
            self.writer.close()
        if self.shards == 0:
            pq.write_table(self.schema.empty_table(), self.folder / "part-00000.parquet")
        return self.rows


# ---------------------------------------------------------------- preprocess


@dataclass
class Stats:
    """What the data report shows: rows counted while streaming, and the labels and
    lengths of the kept train rows, counted a batch at a time."""

    kind: str = "pairs"
    rows_read: int = 0
    duplicates: int = 0
    labels: Counter = field(default_factory=Counter)
    lengths: list[Counter] = field(default_factory=lambda: [Counter(), Counter()])

    def add_batch(self, batch) -> None:
        import numpy as np
        import pyarrow.compute as pc

        if self.kind == "labeled":
            for item in pc.value_counts(batch.column("label")).to_pylist():
                self.labels[item["values"]] += item["counts"]
        sides = KINDS[self.kind][:1] if self.kind == "labeled" else KINDS[self.kind][:2]
        edges = np.array(LENGTH_EDGES)
        for side, name in enumerate(sides):
            words = pc.add(pc.count_substring(batch.column(name), " "), 1).to_numpy()
            bins = edges[np.searchsorted(edges, words, side="right") - 1]
            self.lengths[side].update(dict(zip(*np.unique(bins, return_counts=True), strict=True)))


def group_of(kind: str, values: tuple) -> str:
    """What the held-out split keeps together: a query with all its documents, a first
    text with all its scores; labeled items are held out one by one."""
    return values[0] if kind != "labeled" else "\x1f".join(values)


def stage(
    uris: list[str], spec, opts: DataOptions, folder: Path, stats: Stats, bad: BadRows
) -> tuple[str, set[int]]:
    """Checked, deduplicated rows of the files, in one kind, with their split group's digest
    as a column; returns the kind and the set of group digests."""
    import pyarrow as pa

    kind, writer, seen, groups = None, None, set(), set()
    for uri in uris:
        file_kind, rows, checker = open_rows(uri, spec, opts)
        if kind is None:
            kind, stats.kind = file_kind, file_kind
            writer = ShardWriter(folder, kind, {"group": pa.uint64()}, staging=True)
        elif file_kind != kind:
            raise FinetunerError(f"{uri} holds {file_kind} rows, but the data before it {kind}.")
        # The loop runs for every row: locals, and no calls that can be spared.
        read = duplicates = 0
        write, by_first, check = writer.write, kind != "labeled", checker.check
        for row in rows:
            try:
                values = check(row)
            except BadRowError as exc:
                bad.add(exc)
                continue
            read += 1
            # hash() is enough for duplicates within this process: its 64 bits collide
            # among 10^6 rows with a chance of 3e-8.
            size = len(seen)
            seen.add(hash(values))
            if len(seen) == size:
                duplicates += 1
                continue
            group = digest(values[0] if by_first else group_of(kind, values))
            groups.add(group)
            write((*values, group))
        stats.rows_read += read  # good rows; bad ones are counted apart
        stats.duplicates += duplicates
    writer.close()
    return kind, groups


def check_eval_shape(where: str, kind: str, rows: int, labels: Counter) -> None:
    """That eval data has something to evaluate: for labeled data, an item with another
    of its label to find."""
    if kind == "labeled" and max(labels.values(), default=0) < 2:
        raise FinetunerError(
            f"{where}: no label of the eval data has two items ({rows} items, {len(labels)} "
            "labels): evaluation has each item find the others of its label, so it needs a "
            "label with two or more items. Give more eval data, or a larger val_split."
        )


def check_train_shape(where: str, rows: int) -> None:
    if rows < 2:
        raise FinetunerError(
            f"{where}: {rows} train row(s) after duplicates and the held-out split; training "
            "needs at least 2, since a batch holds two or more rows. Give more data, or a "
            "smaller val_split."
        )


def split_staged(
    staged: Path,
    kind: str,
    held: set[int],
    train_out: str,
    eval_out: str | None = None,
    stats: Stats | None = None,
    eval_stats: Stats | None = None,
) -> tuple[int, int]:
    """Route the staged rows by their group: held ones to eval_out, the rest to train_out
    (whose labels and lengths `stats` counts; `eval_stats` those of eval_out)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    train = ShardWriter(train_out, kind)
    evaluation = ShardWriter(eval_out, kind) if eval_out else None
    held_array = pa.array(np.fromiter(held, dtype=np.uint64, count=len(held)))
    for batch in ds.dataset(staged, format="parquet").to_batches(batch_size=BATCH_ROWS):
        mask = pc.is_in(batch.column("group"), value_set=held_array)
        parts = [(train, batch.filter(pc.invert(mask)))]
        if evaluation:
            parts.append((evaluation, batch.filter(mask)))
        for writer, part in parts:
            writer.write_batch(part)
        if stats:
            stats.add_batch(parts[0][1])
        if eval_stats and evaluation:
            eval_stats.add_batch(parts[1][1])
    return train.close(), evaluation.close() if evaluation else 0


@dataclass
class Preprocessed:
    counts: dict
    stats: Stats
    bad: BadRows

    def report(self, train_data: str, eval_data: str) -> str:
        """The data report, Markdown: counts, labels, text lengths and bad rows."""
        kind = self.counts["kind"]
        lines = [
            "# Data report",
            "",
            f"- train data: `{train_data}`",
            f"- eval data: `{eval_data or '(held out from the train data)'}`",
            f"- kind: {kind} ({', '.join(KINDS[kind])})",
            "",
            "| count | value |",
            "|---|---|",
            *(f"| {k.replace('_', ' ')} | {v} |" for k, v in self.counts.items() if k != "kind"),
        ]
        if self.stats.labels:
            lines += ["", "## Labels", "", "| label | rows |", "|---|---|"]
            for label, n in self.stats.labels.most_common(50):
                lines.append(f"| {label} | {n} |")
            if len(self.stats.labels) > 50:
                lines.append(f"| ({len(self.stats.labels) - 50} more labels) | |")
        sides = KINDS[kind][:1] if kind == "labeled" else KINDS[kind][:2]
        lines += ["", "## Length of the items, in words (train data)", ""]
        lines += ["| words | " + " | ".join(sides) + " |", "|---" * (len(sides) + 1) + "|"]
        for low, high in zip(LENGTH_EDGES, [*LENGTH_EDGES[1:], None], strict=True):
            label = f"{low}-{high - 1}" if high else f"{low}+"
            counts = " | ".join(str(self.stats.lengths[i][low]) for i in range(len(sides)))
            lines.append(f"| {label} | {counts} |")
        if self.bad.samples:
            lines += ["", f"## Bad rows skipped: {self.bad.count} (the first ones)", ""]
            lines += [f"- {sample}" for sample in self.bad.samples]
        return "\n".join(lines) + "\n"


def preprocess(
    spec, train_data: str, eval_data: str, val_split: float, seed: int,
    opts: DataOptions, train_out: str, eval_out: str,
) -> Preprocessed:  # fmt: skip
    """Check, deduplicate and split the data into train and eval datasets (Parquet shards)."""
    check_val_split(val_split, has_eval_data=bool(eval_data))
    stats, eval_stats, bad = Stats(), Stats(), BadRows(opts.max_bad_rows)
    with stage_dir("stage") as tmp:
        kind, groups = stage([train_data], spec, opts, Path(tmp) / "train", stats, bad)
        eval_stats.kind = kind
        if eval_data:
            eval_kind, _ = stage([eval_data], spec, opts, Path(tmp) / "eval", Stats(), bad)
            if eval_kind != kind:
                raise FinetunerError(f"{eval_data} holds {eval_kind} rows, the train data {kind}.")
            n_train = split_staged(Path(tmp) / "train", kind, set(), train_out, None, stats)[0]
            n_eval = split_staged(Path(tmp) / "eval", kind, set(), eval_out, None, eval_stats)[0]
        else:
            held = held_out(groups, val_split, seed)
            n_train, n_eval = split_staged(
                Path(tmp) / "train", kind, held, train_out, eval_out, stats, eval_stats
            )
    check_train_shape(train_data, n_train)
    check_eval_shape(eval_data or train_data, kind, n_eval, eval_stats.labels)
    counts = {
        "kind": kind,
        "rows_read": stats.rows_read + bad.count,
        "bad_rows_skipped": bad.count,
        "duplicates_dropped": stats.duplicates,
        "train_rows": n_train,
        "eval_rows": n_eval,
    }
    return Preprocessed(counts, stats, bad)


# ---------------------------------------------------------------- reading shards


@dataclass
class Dataset:
    """A preprocessed dataset: its kind and its rows as an Arrow table (compact, and random
    access by index, which the samplers need)."""

    kind: str
    table: object  # pyarrow.Table
    corpus: object = None  # graded data: the corpus, a pyarrow.Table of STORED["corpus"]

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def has_negatives(self) -> bool:
        """Whether each row carries its mined hard negatives, as its last value."""
        return NEGATIVES in self.table.column_names

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()

    def rows(self, indices: list[int]) -> list[tuple]:
        part = self.table.take(indices)
        columns = (part.column(n).to_pylist() for n in self.table.column_names)
        return list(zip(*columns, strict=True))

    def corpus_items(self) -> tuple[list[str], list[str]]:
        """Graded data: the ids and the texts of its corpus."""
        return self.corpus.column("document_id").to_pylist(), self.corpus.column(
            "document"
        ).to_pylist()


def load(folder: str | Path) -> Dataset:
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(folder), format="parquet")
    metadata = dataset.schema.metadata or {}
    kind = metadata.get(KIND_KEY, b"pairs").decode()
    corpus = None
    if kind == "graded":
        corpus = ds.dataset(str(Path(folder, CORPUS_FOLDER)), format="parquet").to_table()
    return Dataset(kind, dataset.to_table(columns=list(STORED[kind])), corpus)

    columns = list(KINDS[kind])
    if kind == "pairs" and NEGATIVES in dataset.schema.names:
        columns.append(NEGATIVES)
    return Dataset(kind, dataset.to_table(columns=columns))


def from_rows(rows: list[tuple], kind: str = "pairs") -> Dataset:
    """An in-memory dataset of rows of a kind."""
    import pyarrow as pa

    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in STORED[kind]]
    return Dataset(kind, pa.table([list(c) for c in columns], schema=_schema(kind)))


def as_dataset(data) -> Dataset:
    """A Dataset as it is, or one made from a list of (query, document) pairs."""
    return data if isinstance(data, Dataset) else from_rows(list(data), "pairs")


def write(rows: list[tuple], folder: str | Path, kind: str = "pairs") -> int:
    """Write rows of a kind as a dataset (for tests and small tools)."""
    writer = ShardWriter(folder, kind)
    for values in rows:
        writer.write(values)
    return writer.close()
