"""Rows and their items: checking a data file's rows for their kind (RowChecker), the items
that are not text (images, meshes, vectors) and text-image rows; reading (query, document)
pairs whole; the held-out split and eval sets.

Data files at scale go through finetuner.data.dataset, which streams them; this module serves
it (and does not import it) and the code that wants a list of pairs."""

from __future__ import annotations

import math
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from finetuner.data import formats
from finetuner.data.formats import KINDS, NUMBER_ROLES, BadRow, DataOptions
from finetuner.errors import BadItem, FinetunerError
from finetuner.io import storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_FIELD_CHARS = 100_000

Pair = tuple[str, str]


class BadRowError(FinetunerError):
    """One row's problem, with its location; skipped while max_bad_rows allows."""


def digest(text: str) -> int:
    """A 64-bit key of a text that is the same in every process (unlike hash()), so a seed
    holds out the same queries in every run. Two checksums, as they are several times
    faster than a cryptographic hash; a rare collision only holds two queries out together."""
    data = text.encode("utf-8", "surrogatepass")
    return zlib.crc32(data) << 32 | zlib.adler32(data)


def _text_error(where: str, role: str, value: str, opts: DataOptions) -> BadRowError:
    if not value:
        return BadRowError(f"{where} ({role}): empty {role}.")
    return BadRowError(
        f"{where} ({role}): {len(value)} characters, more than the limit of "
        f"{opts.max_field_chars} (data_options.max_field_chars)."
    )


# Training reads scores and margins as float32: a larger one would be inf there.
MAX_NUMBER = 3.4028234663852886e38


def _score(value: str) -> float | None:
    """The score, or None if it is not a finite number in float32."""
    try:
        score = float(value)
    except ValueError:
        return None
    return score if math.isfinite(score) and abs(score) <= MAX_NUMBER else None


@dataclass
class RowChecker:
    """Checks the rows of one file for a model: `check(row) -> values`, raising BadRowError.

    `field(uri, line, column, value)` resolves items that are not text (see
    field_checker); `pair_row(uri, line, pair)` orders text-image pairs."""

    uri: str
    kind: str
    opts: DataOptions
    field: Callable | None = None
    pair_row: Callable | None = None
    unit: str = "line"

    def check(self, row: formats.Row | BadRow) -> tuple:
        # The hot loop of preprocess: messages are only built for a bad row.
        if isinstance(row, BadRow):
            raise BadRowError(f"{row.where(self.uri, self.unit)}: {row.reason}.")
        limit = self.opts.max_field_chars
        if self.kind == "pairs" and not self.field and not self.pair_row:  # text pairs
            query, document = row.values[0].strip(), row.values[1].strip()
            if query and document and len(query) <= limit and len(document) <= limit:
                return query, document
        values = []
        for column, role in enumerate(KINDS[self.kind], 1):
            value = row.values[column - 1]
            if role in NUMBER_ROLES:
                score = _score(value)
                if score is None:
                    what = (
                        f"'{value[:40]}' is not a finite number (valid: magnitude up to "
                        f"{MAX_NUMBER:.3g}, float32's largest, in which training computes)"
                    )
                    raise BadRowError(f"{self._where(row.line, column)} ({role}): {what}.")
                values.append(score)
                continue
            value = value.strip()
            if not value or len(value) > limit:
                raise _text_error(self._where(row.line, column), role, value, self.opts)
            if self.field and role != "label":
                value = self._item(row.line, column, value)
            values.append(value)
        if self.pair_row:
            values = list(self._guard(self.pair_row, self.uri, row.line, tuple(values)))
        return tuple(values)

    def _where(self, line: int, column: int) -> str:
        return f"{self.uri}, {self.unit} {line}, column {column}"

    def _item(self, line: int, column: int, value: str) -> str:
        return self._guard(self.field, self.uri, line, column, value)

    @staticmethod
    def _guard(fn, *args):
        try:
            return fn(*args)
        except BadRowError:
            raise
        except FinetunerError as exc:  # the item checkers name the row themselves
            raise BadRowError(str(exc)) from None


def read_pairs(
    uri: str, encoding: str = "utf-8", field=None, check_row=None, max_field_chars=None
) -> list[Pair]:
    """All (query, document) pairs of a data file (CSV, JSONL or Parquet) at a local path or
    s3:// URI; the first bad row is an error that names its line and column.

    `field(uri, line, column, value) -> value` checks and converts each field when the
    items are not plain text (see `field_checker`); `check_row(uri, line, pair) -> pair`
    checks and reorders a whole row.
    """
    opts = DataOptions(encoding=encoding, max_field_chars=max_field_chars or MAX_FIELD_CHARS)
    kind, rows = formats.read_rows(uri, opts)
    if kind != "pairs":
        raise FinetunerError(f"{uri} holds {kind} rows, not query,document pairs.")
    checker = RowChecker(uri, kind, opts, field, check_row)
    pairs = []
    for row in rows:
        try:
            pairs.append(checker.check(row))
        except BadRowError as exc:
            raise FinetunerError(str(exc)) from None
    return pairs


def resolve_media(data_uri: str, line: int, column: int, ref: str, limits=None) -> str:
    """The URI of a file named in a data file: a path inside the data file's folder (which
    must exist), an s3:// URI (which must exist) or an http(s):// URL (whose host must be
    allowed by `media.check_url`; it is fetched only when the item is loaded)."""
    from finetuner.data import media

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
        if not storage.is_s3(target):
            _check_local_media(where, ref, target, storage.parent(data_uri))
            return target
    if not storage.exists(target):
        raise FinetunerError(f"{where}: {target} does not exist.")
    return target


def _check_local_media(where: str, ref: str, target: str, folder: str) -> None:
    """A local media file must be a readable regular file inside the data file's folder,
    its symbolic links followed."""
    try:
        inside = Path(target).resolve(strict=True).is_relative_to(Path(folder).resolve())
        info = os.stat(target)
    except FileNotFoundError:
        raise BadItem(f"{where}: {target} does not exist.") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        raise BadItem(f"{where}: {target} is a loop of symbolic links.") from None
    except (OSError, ValueError) as exc:  # a loop (3.13), a too long name, a NUL byte
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadItem(f"{where}: cannot read {target} ({reason}).") from None
    if not inside:
        raise FinetunerError(
            f"{where}: '{ref}' leads outside the data file's folder through a symbolic "
            "link; media must lie inside it."
        )
    if stat.S_ISDIR(info.st_mode):
        raise BadItem(f"{where}: {target} is a folder; expected an image or mesh file.")
    if not stat.S_ISREG(info.st_mode):
        raise BadItem(f"{where}: {target} is not a regular file (a named pipe, device or socket).")


def vector_checker(size: int):
    """Checks a vector field: `size` numbers separated by spaces."""

    import numpy as np

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
        # The model reads float32 (models.mlp_net.parse_vectors): what overflows there, in a
        # number or in the vector's length, would make the loss NaN.
        vector = np.array(numbers, dtype=np.float32)
        with np.errstate(over="ignore"):
            finite = np.isfinite(vector).all() and np.isfinite(np.linalg.norm(vector))
        if not finite:
            largest = np.finfo(np.float32).max
            raise BadItem(
                f"{data_uri}, line {line}, column {column}: the vector is too large for "
                f"float32, in which the model computes: its numbers and its length (L2 norm) "
                f"must stay below {largest:.3g}; got {value[:60]!r}. Scale the vectors down."
            )
        return value

    return check


def looks_like_image(value: str) -> bool:
    return value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value


class TextImageRows:
    """Checks text-image rows, in either column order, and returns them as (text, image).

    The first row decides which column holds the images (paths or s3:// URIs with an image
    suffix), as Finetuner did; every later row must follow it."""

    def __init__(self, limits=None):
        self.image_column: int | None = None
        self.check_image = media_checker("image", limits)

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
        image = self.check_image(uri, line, column, pair[self.image_column])
        return pair[1 - self.image_column], image


def media_checker(kind: str, limits=None):
    """Checks a media field ("image" or "mesh"): resolved as resolve_media does, then
    verified, so a corrupt file is a bad row now and not a failure in training: an
    image's header, size caps and structure; a mesh parsed. An http(s) item is only
    checked for its host here: it is fetched when it is loaded."""
    from finetuner.data import media

    limits = limits or media.MediaLimits()
    cache = media.MediaCache(limits)
    verify = media.verify_image if kind == "image" else media.verify_mesh

    def check(data_uri: str, line: int, column: int, ref: str) -> str:
        target = resolve_media(data_uri, line, column, ref, limits)
        if media.kind_of(target) != "http":
            try:
                verify(target, cache, limits)
            except BadItem as exc:
                raise BadItem(f"{data_uri}, line {line}, column {column}: {exc}") from None
        return target

    return check


def field_checker(spec, opts=None):
    """How the fields of a model's data are checked (`opts`: DataOptions, for the media
    caps): None for text."""
    limits = opts.media_limits() if opts is not None else None
    if spec.query_kind != spec.document_kind:
        return None  # a model of two kinds checks its rows with TextImageRows
    kind = spec.document_kind
    if kind in ("image", "mesh"):
        return media_checker(kind, limits)
    if kind == "vector":  # a vector model's options give the length (MLP: input_size)
        return vector_checker(int(spec.options["input_size"]))
    return None


def read_model_pairs(uri: str, spec) -> list[Pair]:
    """The pairs of a data file, checked for the model of `spec`: text-to-image rows come
    back as (text, image URI), image and mesh references resolved, vectors checked."""
    rows = TextImageRows() if spec.query_kind != spec.document_kind else None
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
    """Hold out a fraction of the queries, with all their pairs, so none leaks into training;
    the same queries as preprocess holds out of the same data."""
    check_val_split(val_split)
    keys = [digest(q) for q, _ in pairs]
    held = held_out(set(keys), val_split, seed)
    train = [p for p, key in zip(pairs, keys, strict=True) if key not in held]
    evaluation = [p for p, key in zip(pairs, keys, strict=True) if key in held]
    return train, evaluation


def held_out(groups: set[int], val_split: float, seed: int) -> set[int]:
    """Exactly round(n * val_split) groups, chosen by the seed, the same in every run."""
    import numpy as np

    ordered = np.sort(np.fromiter(groups, dtype=np.uint64, count=len(groups)))
    ordered = np.random.default_rng(seed).permutation(ordered)
    n_held = round(len(ordered) * val_split)
    if val_split > 0 and not 1 <= n_held < len(ordered):
        raise FinetunerError(
            f"parameter val_split: {val_split} of {len(ordered)} distinct queries leaves "
            "no queries for training or none for evaluation; give more data or --eval-data."
        )
    return set(ordered[:n_held].tolist())


@dataclass
class EvalSet:
    """Queries, a corpus and, for each query, the corpus indices that are relevant.

    For labeled data the queries are corpus items (`self_index[i]` is query i's row), and
    an item's relevant rows are the others of its label. Graded data (BEIR) has `gains`:
    each query's judged corpus indices and their grades, those above 0 its relevant."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]
    self_index: list[int] | None = None
    gains: list[dict[int, float]] | None = None

    @classmethod
    def from_graded(cls, rows: list[tuple], corpus_ids: list[str], corpus: list[str]) -> EvalSet:
        """(query_id, query, document_id, score) judgements over a corpus (its ids and
        texts): each query ranks the whole corpus. A query with no document graded above 0
        has nothing to find and is left out."""
        index = {doc: i for i, doc in enumerate(corpus_ids)}
        texts: dict[str, str] = {}
        judged: dict[str, dict[int, float]] = {}
        for query_id, query, document_id, score in rows:
            texts[query_id] = query
            judged.setdefault(query_id, {})[index[document_id]] = score
        kept = [q for q, gains in judged.items() if any(g > 0 for g in gains.values())]
        if not kept:
            raise FinetunerError(
                "the eval judgements grade no document above 0: no query has anything to find."
            )
        return cls(
            [texts[q] for q in kept],
            corpus,
            [{doc for doc, g in judged[q].items() if g > 0} for q in kept],
            gains=[judged[q] for q in kept],
        )

    @classmethod
    def from_pairs(cls, pairs: list[Pair]) -> EvalSet:
        return cls._relevant(pairs, list(dict.fromkeys(d for _, d in pairs)))

    @classmethod
    def from_margins(cls, rows: list[tuple]) -> EvalSet:
        """(query, positive, negative, margin) rows: each query is to find its positive
        in a corpus of all positives and negatives, the hard negatives among them."""
        pairs = list(dict.fromkeys((q, p) for q, p, _, _ in rows))
        corpus = list(dict.fromkeys([*(p for _, p in pairs), *(n for _, _, n, _ in rows)]))
        return cls._relevant(pairs, corpus)

    @classmethod
    def _relevant(cls, pairs: list[Pair], corpus: list[str]) -> EvalSet:
        """Each query's documents among `corpus`, by their place in it."""
        doc_index = {d: i for i, d in enumerate(corpus)}
        by_query: dict[str, set[int]] = {}
        for q, d in pairs:
            by_query.setdefault(q, set()).add(doc_index[d])
        return cls(list(by_query), corpus, list(by_query.values()))

    @classmethod
    def from_labeled(cls, rows: list[tuple[str, str]]) -> EvalSet:
        """Every item with another of its label is a query; a label alone has nothing to
        find and is left out as a query (it stays in the corpus)."""
        corpus = [item for item, _ in rows]
        by_label: dict[str, set[int]] = {}
        for i, (_, label) in enumerate(rows):
            by_label.setdefault(label, set()).add(i)
        queries, relevant, self_index = [], [], []
        for i, (item, label) in enumerate(rows):
            others = by_label[label] - {i}
            if others:
                queries.append(item)
                relevant.append(others)
                self_index.append(i)
        if not queries:
            raise FinetunerError("the eval data has no label with two items: nothing to find.")
        return cls(queries, corpus, relevant, self_index)
