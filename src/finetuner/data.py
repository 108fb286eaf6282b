"""Training data: Finetuner's two-column CSV of (query, document) pairs.

Every row is validated; the first bad one stops the read with its file, line and column.
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from finetuner import storage
from finetuner.errors import BadItem, FinetunerError

COLUMNS = ("query", "document")
# A first row made of these names is a header, not a pair.
HEADER_NAMES = {
    "query", "document", "text1", "text2", "anchor", "positive", "question", "answer",
    "text", "image", "caption",
}  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_FIELD_CHARS = 100_000

Pair = tuple[str, str]


def read_pairs(uri: str, encoding: str = "utf-8", field=None, check_row=None) -> list[Pair]:
    """All (query, document) pairs of a CSV file at a local path or s3:// URI.

    `field(uri, line, column, value) -> value` checks and converts each field when the
    items are not plain text (see `field_checker`); `check_row(uri, line, pair) -> pair` checks
    and reorders a whole row.
    """
    raw = storage.read_bytes(uri)
    if not raw.strip():
        raise FinetunerError(f"{uri} is empty: expected CSV rows of query,document.")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FinetunerError(
            f"{uri}, line {line}: bytes that are not valid {encoding} (byte {exc.start})."
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise FinetunerError(f"{uri}, line {line}: NUL byte; is this a binary file, not CSV?")
    text = text.removeprefix("\ufeff")  # the byte-order mark that spreadsheets write
    # csv's own limit would hide which column is too long; _check_row reports it instead.
    csv.field_size_limit(max(len(text), MAX_FIELD_CHARS) + 1)
    # strict: an unclosed quote is an error, not a field that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    pairs: list[Pair] = []
    line = 1  # where the current record starts; a quoted field may span lines
    try:
        for row in reader:
            start, line = line, reader.line_num + 1
            if not row or all(not f.strip() for f in row):
                continue
            if not pairs and start == 1 and {f.strip().lower() for f in row} <= HEADER_NAMES:
                continue
            pair = _check_row(uri, start, row)
            if field:
                pair = tuple(field(uri, start, col, value) for col, value in enumerate(pair, 1))
            if check_row:
                pair = check_row(uri, start, pair)
            pairs.append(pair)
    except csv.Error as exc:
        raise FinetunerError(f"{uri}, line {line}: malformed CSV ({exc}).") from None
    if not pairs:
        raise FinetunerError(f"{uri} has a header but no pairs: expected rows of query,document.")
    return pairs


def _check_row(uri: str, line: int, row: list[str]) -> Pair:
    if len(row) != len(COLUMNS):
        raise FinetunerError(
            f"{uri}, line {line}: expected 2 columns (query, document), found {len(row)}. "
            "Quote fields that contain commas."
        )
    for column, (name, value) in enumerate(zip(COLUMNS, row, strict=True), start=1):
        if not value.strip():
            raise FinetunerError(f"{uri}, line {line}, column {column} ({name}): empty {name}.")
        if len(value) > MAX_FIELD_CHARS:
            raise FinetunerError(
                f"{uri}, line {line}, column {column} ({name}): {len(value)} characters, "
                f"more than the limit of {MAX_FIELD_CHARS}."
            )
    return row[0].strip(), row[1].strip()


def resolve_media(data_uri: str, line: int, column: int, ref: str, limits=None) -> str:
    """The URI of a file named in a data file: a path inside the data file's folder (which
    must exist), an s3:// URI (which must exist) or an http(s):// URL (whose host must be
    allowed by `media.check_url`; it is fetched only when the item is loaded)."""
    from finetuner import media

    where = f"{data_uri}, line {line}, column {column}"
    kind = media.kind_of(ref)
    if kind == "http":
        try:
            media.check_url(ref, limits or media.MediaLimits())
        except BadItem as exc:
            raise BadItem(f"{where}: {exc}") from None
        return ref
    if kind == "s3":
        target = ref
    else:
        path = PurePosixPath(ref)
        if "://" in ref or path.is_absolute() or ".." in path.parts:
            raise FinetunerError(
                f"{where}: '{ref}' must be a path inside the data file's folder "
                "(no '..', not absolute) or an s3:// or http(s):// URI."
            )
        target = storage.join(storage.parent(data_uri), ref)
        if not storage.is_s3(target) and not _inside(target, storage.parent(data_uri)):
            raise FinetunerError(
                f"{where}: '{ref}' leads outside the data file's folder through a symbolic "
                "link; media must lie inside it."
            )
    if not storage.exists(target):
        raise FinetunerError(f"{where}: {target} does not exist.")
    return target


def _inside(path: str, folder: str) -> bool:
    """Whether a local path, with its symbolic links followed, lies inside folder."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def vector_checker(size: int):
    """Checks a vector field: `size` numbers separated by spaces."""

    def check(data_uri: str, line: int, column: int, value: str) -> str:
        try:
            numbers = [float(x) for x in value.split()]
        except ValueError:
            numbers = None
        if numbers is None or len(numbers) != size or not all(map(math.isfinite, numbers)):
            raise FinetunerError(
                f"{data_uri}, line {line}, column {column}: expected a vector of {size} finite "
                f"numbers separated by spaces (input_size), got {value[:60]!r}."
            )
        return value

    return check


def looks_like_image(value: str) -> bool:
    return value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value


class TextImageRows:
    """Checks text-image rows, in either column order, and returns them as (text, image).

    The first row decides which column holds the images (paths or s3:// URIs with an image
    suffix), as Finetuner did; every later row must follow it."""

    def __init__(self):
        self.image_column: int | None = None

    def __call__(self, uri: str, line: int, pair: Pair) -> Pair:
        images = [looks_like_image(value) for value in pair]
        if self.image_column is None:
            if images.count(True) != 1:
                found = "both columns" if all(images) else "neither column"
                raise FinetunerError(
                    f"{uri}, line {line}: text-to-image data needs one text column and one "
                    f"image column (a path or s3:// URI ending in {', '.join(IMAGE_SUFFIXES)}); "
                    f"{found} holds an image here."
                )
            self.image_column = images.index(True)
        column = self.image_column + 1
        if not images[self.image_column]:
            raise FinetunerError(
                f"{uri}, line {line}, column {column}: expected an image path (as on the first "
                f"row), got {pair[self.image_column][:60]!r}."
            )
        image = resolve_media(uri, line, column, pair[self.image_column])
        return pair[1 - self.image_column], image


def field_checker(spec):
    """How the fields of a model's data are checked: None for text."""
    if spec.family in ("cnn", "pointnet"):
        return resolve_media
    if spec.family == "mlp":
        return vector_checker(int(spec.options["input_size"]))
    return None


def read_model_pairs(uri: str, spec) -> list[Pair]:
    """The pairs of a CSV, checked for the model of `spec`: text-to-image rows come back as
    (text, image URI), image and mesh references resolved, vectors checked."""
    rows = TextImageRows() if spec.family == "clip" else None
    return read_pairs(uri, field=field_checker(spec), check_row=rows)


def deduplicate(pairs: list[Pair]) -> list[Pair]:
    return list(dict.fromkeys(pairs))


def check_val_split(val_split: float, has_eval_data: bool = True) -> None:
    """val_split must be a fraction, and above 0 when there is no separate eval data."""
    if not 0 <= val_split < 1:  # also false for NaN
        raise FinetunerError(f"parameter val_split: must be in [0, 1), got {val_split}.")
    if not has_eval_data and val_split == 0:
        raise FinetunerError(
            "no evaluation data: give eval_data, or a val_split > 0 to hold out pairs."
        )


def split_by_query(pairs: list[Pair], val_split: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out a fraction of the queries, with all their pairs, so none leaks into training."""
    check_val_split(val_split)
    queries = sorted({q for q, _ in pairs})
    random.Random(seed).shuffle(queries)
    n_held = round(len(queries) * val_split)
    if val_split > 0 and not 1 <= n_held < len(queries):
        raise FinetunerError(
            f"parameter val_split: {val_split} of {len(queries)} distinct queries leaves "
            "no queries for training or none for evaluation; give more data or --eval-data."
        )
    held = set(queries[:n_held])
    train = [p for p in pairs if p[0] not in held]
    evaluation = [p for p in pairs if p[0] in held]
    return train, evaluation


@dataclass
class EvalSet:
    """Queries, a corpus and, for each query, the corpus indices that are relevant."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]

    @classmethod
    def from_pairs(cls, pairs: list[Pair]) -> EvalSet:
        corpus = list(dict.fromkeys(d for _, d in pairs))
        doc_index = {d: i for i, d in enumerate(corpus)}
        by_query: dict[str, set[int]] = {}
        for q, d in pairs:
            by_query.setdefault(q, set()).add(doc_index[d])
        return cls(list(by_query), corpus, list(by_query.values()))


def write_pairs(pairs: list[Pair], path: str) -> None:
    """Pairs as a Parquet file: the format steps hand to each other."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"query": [q for q, _ in pairs], "document": [d for _, d in pairs]})
    pq.write_table(table, path)


def load_pairs(path: str) -> list[Pair]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(COLUMNS))
    return list(
        zip(table.column("query").to_pylist(), table.column("document").to_pylist(), strict=True)
    )
