"""Training data files, read row by row: Finetuner's CSV, JSON Lines and Parquet.

Four kinds of data; the first three as Finetuner had them:
- pairs: (query, document), e.g. a question and its answer, or a text and an image;
- labeled: (item, label), items of one label being alike (CSV: `is_labeled`);
- scored: (text1, text2, score), a similarity score for two items;
- margins: (query, positive, negative, margin), a teacher's score(positive) -
  score(negative) for MarginMSELoss, as `finetuner synthesize` writes them.

A reader yields each row's fields in the kind's column order, with the line (CSV, JSONL)
or row number (Parquet) it came from, or a BadRow saying what is wrong with it; the
caller decides whether a bad row is skipped or ends the run. Files are streamed, so
memory does not grow with their size.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from finetuner.errors import FinetunerError
from finetuner.io import storage

KINDS: dict[str, tuple[str, ...]] = {
    "pairs": ("query", "document"),
    "labeled": ("item", "label"),
    "scored": ("text1", "text2", "score"),
    "margins": ("query", "positive", "negative", "margin"),
}
# The columns that hold a number, not an item.
NUMBER_ROLES = ("score", "margin")
# Other names a JSONL or Parquet column may have, per role.
ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "anchor", "question", "text"),
    "document": ("document", "positive", "answer", "image"),
    "item": ("item", "text", "image", "mesh", "vector"),
    "label": ("label",),
    "text1": ("text1", "sentence1"),
    "text2": ("text2", "sentence2"),
    "score": ("score",),
    "positive": ("positive",),
    "negative": ("negative",),
    "margin": ("margin",),
}
# A first CSV row made of these names is a header, not data.
HEADER_NAMES = {name for names in ALIASES.values() for name in names} | {"text1", "text2"}
FORMATS = ("csv", "jsonl", "parquet")
DIALECTS = ("auto", "excel", "excel-tab", "unix")
SNIFF_BYTES = 64 * 1024


# The media cache (finetuner.data.media) must hold one file: max_file_bytes stays within it.
MEDIA_CACHE_BYTES = 2 * 1024 * 2**20


class DataOptions(BaseModel):
    """How data files are read: Finetuner's CSVOptions, and the limits on bad rows."""

    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(
        None, ge=1, le=sys.maxsize, description="read at most this many rows of each file"
    )
    dialect: str = Field(
        "auto",
        description="CSV dialect: auto (sniffed), excel, excel-tab, unix, or a delimiter char",
    )
    encoding: str = Field("utf-8", description="text encoding of CSV and JSONL files")
    is_labeled: bool = Field(False, description="a two-column CSV holds item,label rows")
    max_bad_rows: int = Field(
        0, ge=0, description="bad rows skipped and counted; one more fails the run"
    )
    max_field_chars: int = Field(100_000, ge=1, description="longest text field, in characters")
    format: Literal["auto", "csv", "jsonl", "parquet", "beir"] = Field(
        "auto",
        description="file format; auto: by suffix (.jsonl, .parquet), else CSV, and a folder "
        "with corpus.jsonl is BEIR data (finetuner.data.beir); beir: train_data is such a folder",
    )
    max_file_bytes: int = Field(
        50 * 2**20,
        ge=1,
        le=MEDIA_CACHE_BYTES,
        description="largest image or mesh file; at most the media cache's 2 GiB, which "
        "must hold one file",
    )
    max_image_pixels: int = Field(50_000_000, ge=1, description="largest image, width x height")
    max_image_side: int = Field(20_000, ge=1, description="longest image side, in pixels")

    @field_validator("dialect")
    @classmethod
    def _dialect(cls, value: str) -> str:
        if value in DIALECTS:
            return value
        if len(value) != 1 or value in '"\r\n':
            raise ValueError(
                f"valid: one of {', '.join(DIALECTS)}, or one character as the delimiter "
                "(not a quote or a line break, which CSV reserves)"
            )
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            info = codecs.lookup(value)
        except LookupError:
            raise ValueError(
                "not an encoding Python knows; valid: a text encoding such as utf-8, "
                "utf-8-sig, utf-16, latin-1 or cp1252"
            ) from None
        if not getattr(info, "_is_text_encoding", True):  # e.g. rot13, base64: bytes codecs
            raise ValueError(
                "not a text encoding (it maps bytes to bytes); valid: a text encoding such as "
                "utf-8, utf-16 or latin-1"
            )
        return value

    def media_limits(self):
        """The caps on images and meshes, as finetuner.data.media takes them."""
        from finetuner.data.media import MediaLimits

        return MediaLimits(
            max_file_bytes=self.max_file_bytes,
            max_image_pixels=self.max_image_pixels,
            max_image_side=self.max_image_side,
        )


def options(values: dict | None) -> DataOptions:
    """DataOptions from a dict; an unknown or bad option is an error that names it, its
    value, what is valid and what the option is for."""
    from pydantic import ValidationError

    if values is not None and not isinstance(values, dict):
        raise FinetunerError(
            f'parameter data_options: expected a JSON object like {{"max_bad_rows": 10}}, '
            f"got {type(values).__name__} {values!r}."
        )
    try:
        return DataOptions(**(values or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        if name == "point_cloud_size":
            raise FinetunerError(
                "parameter data_options.point_cloud_size: here it is a model option, "
                'model_options {"num_points": N} (pointnet-base).'
            ) from None
        if error["type"] == "extra_forbidden":
            raise FinetunerError(
                f"parameter data_options: unknown option '{name}'. Valid options: "
                f"{', '.join(DataOptions.model_fields)}."
            ) from None
        field = DataOptions.model_fields.get(name)
        # Our own checks say what is valid and why; pydantic's say what is valid only.
        own = error["type"] == "value_error"
        why = f" ({name}: {field.description})" if field and not own else ""
        message = error["msg"].removeprefix("Value error, ")
        raise FinetunerError(
            f"parameter data_options.{name}: invalid value {error['input']!r}: {message}{why}."
        ) from None


DATA_FILE = "a CSV, JSONL or Parquet file"


def check_source(uri: str, parameter: str = "") -> None:
    """That a data file can be opened for reading: it exists, and a local one is a regular
    file (a folder cannot be read as data, and a named pipe would block the reader)."""
    expected = DATA_FILE
    if parameter == "train_data":  # a folder of the right files is BEIR data
        expected += ", or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)"
    storage.check_file(uri, parameter, expected)


def _check_local(uri: str) -> None:
    storage.check_local_file(uri, expected=DATA_FILE)


def _guarded(uri: str, rows: Iterator, opts: DataOptions) -> Iterator:
    """The rows, with a failure to read or decode the file as the error that names it
    (a UTF-16 file without its byte-order mark, a disk error) rather than a traceback."""
    try:
        yield from rows
    except (UnicodeError, OSError) as exc:
        raise _unreadable(uri, exc, opts) from None


def _unreadable(uri: str, exc: Exception, opts: DataOptions) -> FinetunerError:
    if isinstance(exc, UnicodeError):
        return FinetunerError(
            f"{uri}: cannot decode as {opts.encoding} ({exc}); set data_options.encoding to "
            "the file's text encoding."
        )
    return FinetunerError(f"{uri}: cannot read ({exc}).")


class Row(NamedTuple):  # a tuple: made for every row, so it must be cheap
    line: int
    values: tuple


@dataclass(frozen=True)
class BadRow:
    line: int
    column: int | None
    reason: str

    def where(self, uri: str, unit: str = "line") -> str:
        column = f", column {self.column}" if self.column else ""
        return f"{uri}, {unit} {self.line}{column}"


def detect_format(uri: str, declared: str = "auto") -> str:
    if declared == "beir":  # a folder of files, read by finetuner.data.beir
        raise FinetunerError(
            f"parameter data_options.format: beir names a folder of BEIR data as train_data; "
            f"{uri} is read as one file here. Valid for it: auto, csv, jsonl or parquet."
        )
    if declared != "auto":
        return declared
    suffixes = PurePosixPath(str(uri)).suffixes
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return "csv"


def row_unit(fmt: str) -> str:
    return "row" if fmt == "parquet" else "line"


def read_rows(uri: str, opts: DataOptions) -> tuple[str, Iterator[Row | BadRow]]:
    """The kind of the data at `uri` and its rows, streamed: CSV and JSONL as they
    download, Parquet (which needs to seek) from a local copy."""
    fmt = detect_format(uri, opts.format)
    if not storage.is_s3(uri):
        _check_local(uri)
    try:
        if fmt == "parquet":
            kind, rows = _parquet_rows(uri, storage.local_copy(uri), opts)
        else:
            text = _open_text(uri, fmt, opts)
            kind, rows = (_csv_rows if fmt == "csv" else _jsonl_rows)(uri, text, opts)
    except (UnicodeError, OSError) as exc:
        raise _unreadable(uri, exc, opts) from None
    rows = _guarded(uri, rows, opts)
    return kind, itertools.islice(rows, opts.size) if opts.size else rows


def _open_text(uri: str, fmt: str, opts: DataOptions):
    """A CSV or JSONL file as text, decoded as it downloads."""
    return io.TextIOWrapper(
        storage.open_binary(uri),
        encoding=opts.encoding,
        # Decoding never fails here: bad bytes become surrogates, reported with their field.
        errors="surrogateescape",
        newline="" if fmt == "csv" else None,
    )


def _expected(opts: DataOptions) -> str:
    if opts.is_labeled:
        return "item,label"
    return "query,document (or text1,text2,score, or query,positive,negative,margin)"


def _no_data(uri: str, opts: DataOptions) -> FinetunerError:
    expected = _expected(opts)
    return FinetunerError(f"{uri} has a header but no data rows: expected rows of {expected}.")


# ---------------------------------------------------------------- CSV


def _dialect(uri: str, sample: str, opts: DataOptions):
    if opts.dialect in ("excel", "excel-tab", "unix"):
        return csv.get_dialect(opts.dialect)
    if opts.dialect != "auto":
        if len(opts.dialect) != 1:
            raise FinetunerError(
                f"parameter data_options.dialect: '{opts.dialect}' is neither one of "
                f"{', '.join(DIALECTS)} nor a one-character delimiter."
            )

        class Given(csv.excel):
            delimiter = opts.dialect

        return Given
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel  # one column, or too little to tell: the common case


def _csv_rows(uri: str, f, opts: DataOptions) -> tuple[str, Iterator[Row | BadRow]]:
    # Whole lines to sniff the dialect from; the reader then starts again from them.
    head, size = [], 0
    while size < SNIFF_BYTES and (line := f.readline()):
        head.append(line)
        size += len(line)
    if head and head[0].startswith("\ufeff"):  # the byte-order mark that spreadsheets write
        head[0] = head[0][1:]
    sample = "".join(head)
    if "\x00" in sample:
        line = sample[: sample.index("\x00")].count("\n") + 1
        f.close()
        raise FinetunerError(f"{uri}, line {line}: NUL byte; is this a binary file, not CSV?")
    dialect = _dialect(uri, sample, opts)
    # csv's own limit would hide which column is too long; the checks report it instead.
    csv.field_size_limit(1 << 30)
    reader = csv.reader(itertools.chain(head, f), dialect, strict=True)
    first = _first_record(reader, uri)
    if first is None:
        f.close()
        raise FinetunerError(f"{uri} is empty: expected rows of {_expected(opts)}.")
    start, values = first
    header = {v.strip().lower() for v in values} <= HEADER_NAMES
    width = len(values)
    kind = {3: "scored", 4: "margins"}.get(width, "labeled" if opts.is_labeled else "pairs")
    if width not in (2, 3, 4):
        f.close()
        delimiter = repr(dialect.delimiter)
        raise FinetunerError(
            f"{uri}, line {start}: expected 2 columns (query,document or item,label), 3 "
            f"(text1,text2,score) or 4 (query,positive,negative,margin), found {width} with "
            f"delimiter {delimiter}. Quote fields that contain the delimiter, or set "
            "data_options.dialect."
        )

    def rows() -> Iterator[Row | BadRow]:
        with f:
            if not header:
                yield _csv_row(start, values, width, opts.encoding)
            empty = header
            # _records, inlined: this loop runs for every row of the file.
            line = reader.line_num + 1
            try:
                for fields in reader:
                    start_line, line = line, reader.line_num + 1
                    if fields and (fields[0].strip() or any(v.strip() for v in fields)):
                        empty = False
                        yield _csv_row(start_line, fields, width, opts.encoding)
            except csv.Error as exc:
                raise FinetunerError(f"{uri}, line {line}: malformed CSV ({exc}).") from None
            if empty:
                raise _no_data(uri, opts)

    return kind, rows()


def _records(reader, uri: str) -> Iterator[tuple[int, list[str]]]:
    line = reader.line_num + 1
    try:
        for fields in reader:
            start, line = line, reader.line_num + 1
            if fields and (fields[0].strip() or any(v.strip() for v in fields)):
                yield start, fields
    except csv.Error as exc:  # strict: e.g. an unclosed quote; nothing after it is sure
        raise FinetunerError(f"{uri}, line {line}: malformed CSV ({exc}).") from None


def _first_record(reader, uri: str) -> tuple[int, list[str]] | None:
    return next(_records(reader, uri), None)


def _csv_row(line: int, fields: list[str], width: int, encoding: str) -> Row | BadRow:
    if len(fields) != width:
        return BadRow(
            line, None, f"expected {width} columns like the first row, found {len(fields)}"
        )
    joined = "".join(fields)  # one scan of the row; the bad field is found only if needed
    if "\x00" in joined or (not joined.isascii() and _has_undecodable(joined)):
        for column, value in enumerate(fields, 1):
            if "\x00" in value:
                return BadRow(line, column, "NUL byte")
            if _has_undecodable(value):
                return BadRow(line, column, f"bytes that are not valid {encoding}")
    return Row(line, tuple(fields))


def _has_undecodable(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


# ---------------------------------------------------------------- JSONL and Parquet


def _columns(names: list[str], uri: str, opts: DataOptions) -> tuple[str, list[str]]:
    """The kind of a table with these column names, and the column of each role."""
    present = set(names)
    if "margin" in present:
        kind = "margins"
    elif "score" in present:
        kind = "scored"
    elif "label" in present:
        kind = "labeled"
    else:
        kind = "pairs"
    chosen = []
    for role in KINDS[kind]:
        match = next((n for n in ALIASES[role] if n in present and n not in chosen), None)
        if match is None:
            raise FinetunerError(
                f"{uri}: no column for '{role}' among {sorted(present)}. Named columns: "
                "query,document (or text,image); item,label; text1,text2,score; or "
                "query,positive,negative,margin."
            )
        chosen.append(match)
    return kind, chosen


def _jsonl_rows(uri: str, f, opts: DataOptions) -> tuple[str, Iterator[Row | BadRow]]:
    lines = ((n, text) for n, text in enumerate(f, 1) if text.strip())
    first = next(lines, None)
    if first is None:
        f.close()
        raise FinetunerError(f"{uri} has no rows: expected one JSON object per line.")
    parsed = _json_object(*first)
    if isinstance(parsed, BadRow):
        f.close()
        raise FinetunerError(f"{parsed.where(uri)}: {parsed.reason}.")
    kind, columns = _columns(list(parsed), uri, opts)

    def rows() -> Iterator[Row | BadRow]:
        with f:
            yield _json_row(*first, columns)
            for n, text in lines:
                yield _json_row(n, text, columns)

    return kind, rows()


def _json_object(line: int, text: str) -> dict | BadRow:
    if _has_undecodable(text):
        return BadRow(line, None, "bytes that are not valid text in the file's encoding")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow(line, None, f"not valid JSON ({exc.msg} at character {exc.pos + 1})")
    except ValueError as exc:  # an integer of more digits than Python converts
        return BadRow(line, None, f"a number Python cannot read ({exc})")
    except RecursionError:
        return BadRow(line, None, "JSON nested too deeply; expected an object of values")
    if not isinstance(value, dict):
        return BadRow(line, None, f"expected a JSON object, got {type(value).__name__}")
    return value


def _json_row(line: int, text: str, columns: list[str]) -> Row | BadRow:
    value = _json_object(line, text)
    if isinstance(value, BadRow):
        return value
    return _named_row(line, [value.get(c) for c in columns], columns)


def _named_row(line: int, values: list, columns: list[str]) -> Row | BadRow:
    out = []
    for column, (name, value) in enumerate(zip(columns, values, strict=True), 1):
        if value is None:
            return BadRow(line, column, f"'{name}' is missing")
        if isinstance(value, list):  # a vector, for the MLP
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
                return BadRow(line, column, f"'{name}' is a list but not of numbers")
            try:
                value = " ".join(repr(float(x)) for x in value)
            except OverflowError:  # an integer beyond any float
                return BadRow(line, column, f"'{name}' holds a number too large for a float")
        elif isinstance(value, float) and name in NUMBER_ROLES:
            value = repr(value) if math.isfinite(value) else str(value)
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            return BadRow(line, column, f"'{name}' is a {type(value).__name__}, not a value")
        out.append(str(value))
    return Row(line, tuple(out))


def _parquet_rows(uri: str, path, opts: DataOptions) -> tuple[str, Iterator[Row | BadRow]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise FinetunerError(f"{uri}: not a readable Parquet file ({exc}).") from None
    kind, columns = _columns(_unique_names(parquet, uri), uri, opts)

    def rows() -> Iterator[Row | BadRow]:
        number = 0
        for batch in _batches(parquet, columns, uri):
            data = [batch.column(c).to_pylist() for c in columns]
            for values in zip(*data, strict=True):
                number += 1
                yield _named_row(number, list(values), columns)
        if number == 0:
            raise _no_data(uri, opts)

    return kind, rows()


def _unique_names(parquet, uri: str) -> list[str]:
    names = parquet.schema_arrow.names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FinetunerError(
            f"{uri}: the column(s) {', '.join(twice)} appear more than once; each column "
            "name must be unique."
        )
    return names


def _batches(parquet, columns: list[str], uri: str):
    """The file's record batches; a corrupt page is an error that names the file."""
    batches = parquet.iter_batches(batch_size=8192, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # pyarrow raises several types for corrupt data
            raise FinetunerError(f"{uri}: not a readable Parquet file ({exc}).") from None
        yield batch


# ---------------------------------------------------------------- one text per row

# The column that holds the texts of a JSONL or Parquet file of queries or documents.
TEXT_COLUMNS = ("text", "query", "document", "question", "passage", "sentence", "content")


def read_texts(uri: str, opts: DataOptions) -> Iterator[Row | BadRow]:
    """The rows of a file of texts, one text per row (queries or documents, for data
    synthesis): a one-column CSV (a first row `text`, `query` or `document` is a header),
    or JSONL or Parquet with a column named as in TEXT_COLUMNS (or Parquet's only column).

    A CSV is read with the excel dialect unless data_options.dialect says otherwise: a
    sniffer would take the commas in the texts for delimiters."""
    fmt = detect_format(uri, opts.format)
    if not storage.is_s3(uri):
        _check_local(uri)
    try:
        if fmt == "parquet":
            rows = _parquet_texts(uri, storage.local_copy(uri))
        else:
            text = _open_text(uri, fmt, opts)
            rows = _csv_texts(uri, text, opts) if fmt == "csv" else _jsonl_texts(uri, text)
    except (UnicodeError, OSError) as exc:
        raise _unreadable(uri, exc, opts) from None
    rows = _guarded(uri, rows, opts)
    return itertools.islice(rows, opts.size) if opts.size else rows


def _csv_texts(uri: str, f, opts: DataOptions) -> Iterator[Row | BadRow]:
    dialect = csv.excel if opts.dialect == "auto" else _dialect(uri, "", opts)
    csv.field_size_limit(1 << 30)
    with f:
        lines = iter(f)
        first = next(lines, None)
        if first is None:
            return
        if first.startswith("\ufeff"):
            first = first[1:]
        reader = csv.reader(itertools.chain([first], lines), dialect, strict=True)
        header = True
        for start, fields in _records(reader, uri):
            if header and len(fields) == 1 and fields[0].strip().lower() in TEXT_COLUMNS:
                header = False
                continue
            header = False
            if len(fields) != 1:
                yield BadRow(
                    start,
                    None,
                    f"expected one text per row, found {len(fields)} fields: quote texts that "
                    f"contain the delimiter {dialect.delimiter!r}, or give JSONL",
                )
                continue
            yield _csv_row(start, fields, 1, opts.encoding)


def _text_column(names: list[str], uri: str) -> str:
    match = next((n for n in TEXT_COLUMNS if n in names), None)
    if match is None:
        raise FinetunerError(
            f"{uri}: no text column among {sorted(names)}. Name it one of "
            f"{', '.join(TEXT_COLUMNS)}."
        )
    return match


def _jsonl_texts(uri: str, f) -> Iterator[Row | BadRow]:
    with f:
        column = None
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            value = _json_object(n, text)
            if isinstance(value, BadRow):
                yield value
                continue
            column = column or _text_column(list(value), uri)
            yield _named_row(n, [value.get(column)], [column])


def _parquet_texts(uri: str, path) -> Iterator[Row | BadRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise FinetunerError(f"{uri}: not a readable Parquet file ({exc}).") from None
    names = _unique_names(parquet, uri)
    column = names[0] if len(names) == 1 else _text_column(names, uri)
    number = 0
    for batch in _batches(parquet, [column], uri):
        for value in batch.column(column).to_pylist():
            number += 1
            yield _named_row(number, [value], [column])
