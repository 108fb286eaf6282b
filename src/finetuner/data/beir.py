"""BEIR-format data with graded relevance, as the BEIR benchmarks and Vertex AI ship it: a
folder (a path or an s3:// prefix) holding

- corpus.jsonl: one JSON object per line, `_id`, `text` and an optional `title`; a document
  is its title and text joined by a space, as BEIR's models read it;
- queries.jsonl: `_id` and `text`;
- qrels/train.tsv and qrels/test.tsv: tab-separated `query-id`, `corpus-id`, `score` (a
  grade, an integer >= 0) under that header.

Training takes the train judgements graded above 0 as (query, document) pairs. Evaluation
ranks the whole corpus for each query of the test judgements (eval_data, a qrels TSV over
the same corpus and queries, if given; else qrels/test.tsv; without it, a val_split of the
train queries) and scores the ranking with graded nDCG (finetuner.evaluation.metrics). Its
dataset is of kind "graded": the judgements, and the corpus beside them.

Every row is checked as a data file's rows are: a bad one is named by its file, line and
column (a JSON field by its name) and skipped while data_options.max_bad_rows allows.
data_options.size caps the rows read of each qrels file. The queries, and the texts of the
judged documents, are kept in memory; the corpus is streamed to the eval dataset.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from finetuner.data import formats
from finetuner.data.dataset import (
    CORPUS_FOLDER,
    BadRows,
    Preprocessed,
    ShardWriter,
    Stats,
    check_train_shape,
)
from finetuner.data.formats import BadRow, DataOptions
from finetuner.data.pairs import BadRowError, check_val_split, digest, held_out
from finetuner.errors import FinetunerError
from finetuner.io import storage

CORPUS = "corpus.jsonl"
QUERIES = "queries.jsonl"
TRAIN_QRELS = "qrels/train.tsv"
TEST_QRELS = "qrels/test.tsv"
QRELS_HEADER = ["query-id", "corpus-id", "score"]
LAYOUT = (
    "a BEIR folder of corpus.jsonl (_id, title, text), queries.jsonl (_id, text) and "
    "qrels/train.tsv, optionally qrels/test.tsv (query-id, corpus-id, score)"
)


def is_beir(uri: str, fmt: str = "auto") -> bool:
    """Whether train_data names BEIR data: data_options.format is beir, or it is auto and
    `uri` is a folder that holds corpus.jsonl."""
    if fmt != "auto":
        return fmt == "beir"
    try:
        return storage.exists(storage.join(uri, CORPUS))
    except FinetunerError:  # not a URI, or no bucket: the file checks say so
        return False


def declared_format(data_options) -> str:
    """data_options' format as given, before the options are checked ("auto" if none)."""
    value = data_options.get("format", "auto") if isinstance(data_options, dict) else "auto"
    return value if isinstance(value, str) else "auto"


@dataclass(frozen=True)
class Files:
    """The files of BEIR data; `test` is "" when the eval queries are held out."""

    folder: str
    corpus: str
    queries: str
    train: str
    test: str


def locate(folder: str, eval_data: str = "") -> Files:
    """The files of the BEIR folder `folder` (train_data), each readable; the test
    judgements are eval_data if given, else qrels/test.tsv if the folder has one."""
    storage.check_uri(folder, "train_data")

    def need(name: str) -> str:
        uri = storage.join(folder, name)
        if storage.kind(uri) is None:
            raise FinetunerError(
                f"parameter train_data: {folder} has no {name}; BEIR data is {LAYOUT}."
            )
        return storage.check_file(uri, "train_data", f"the BEIR file {name}")

    if eval_data:
        expected = "a qrels TSV (query-id, corpus-id, score)"
        test = storage.check_file(eval_data, "eval_data", expected)
    elif storage.kind(storage.join(folder, TEST_QRELS)) is not None:
        test = need(TEST_QRELS)
    else:
        test = ""
    return Files(folder, need(CORPUS), need(QUERIES), need(TRAIN_QRELS), test)


# ---------------------------------------------------------------- reading the files


def _where(uri: str, line: int, column: str) -> str:
    return f"{uri}, line {line}, column {column}"


def _json_lines(uri: str, opts: DataOptions, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """The JSON objects of a JSON Lines file with their lines; a line that is not one is a
    bad row."""
    f = formats._open_text(uri, "jsonl", opts)

    def objects() -> Iterator[tuple[int, dict]]:
        with f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                value = formats._json_object(line, text)
                if isinstance(value, BadRow):
                    bad.add(BadRowError(f"{value.where(uri)}: {value.reason}."))
                    continue
                yield line, value

    return formats._guarded(uri, objects(), opts)


def _text(uri: str, line: int, obj: dict, name: str, required: bool = True) -> str:
    """A field of a JSON object as text, stripped: a string (or a number, for an id)."""
    value = obj.get(name)
    if value is None:
        if required:
            raise BadRowError(f"{_where(uri, line, name)}: '{name}' is missing.")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRowError(
            f"{_where(uri, line, name)}: '{name}' is a {type(value).__name__}, not text."
        )
    return str(value).strip()


def _checked_text(uri: str, line: int, column: str, text: str, opts: DataOptions) -> str:
    if not text:
        raise BadRowError(f"{_where(uri, line, column)}: empty text.")
    if len(text) > opts.max_field_chars:
        raise BadRowError(
            f"{_where(uri, line, column)}: {len(text)} characters, more than the limit of "
            f"{opts.max_field_chars} (data_options.max_field_chars)."
        )
    return text


def _id(uri: str, line: int, obj: dict, seen) -> str:
    value = _text(uri, line, obj, "_id")
    if not value:
        raise BadRowError(f"{_where(uri, line, '_id')}: empty _id.")
    if value in seen:
        raise BadRowError(f"{_where(uri, line, '_id')}: _id '{value[:60]}' appears twice.")
    return value


def read_queries(uri: str, opts: DataOptions, bad: BadRows) -> dict[str, str]:
    """Each query's text by its _id."""
    queries: dict[str, str] = {}
    for line, obj in _json_lines(uri, opts, bad):
        try:
            query_id = _id(uri, line, obj, queries)
            text = _checked_text(uri, line, "text", _text(uri, line, obj, "text"), opts)
        except BadRowError as exc:
            bad.add(exc)
            continue
        queries[query_id] = text
    return queries


def read_corpus(
    uri: str, opts: DataOptions, bad: BadRows, wanted: set[str], writer: ShardWriter | None
) -> tuple[set[str], dict[str, str]]:
    """The ids of the corpus, and the texts of the `wanted` ones; every document goes to
    `writer` (the eval dataset's corpus) as it is read."""
    ids: set[str] = set()
    texts: dict[str, str] = {}
    for line, obj in _json_lines(uri, opts, bad):
        try:
            document_id = _id(uri, line, obj, ids)
            title = _text(uri, line, obj, "title", required=False)
            body = _text(uri, line, obj, "text")
            text = _checked_text(uri, line, "text", f"{title} {body}".strip(), opts)
        except BadRowError as exc:
            bad.add(exc)
            continue
        ids.add(document_id)
        if document_id in wanted:
            texts[document_id] = text
        if writer is not None:
            writer.write((document_id, text))
    return ids, texts


@dataclass(frozen=True)
class Judgement:
    line: int
    query_id: str
    document_id: str
    score: int


def read_qrels(uri: str, opts: DataOptions, bad: BadRows) -> list[Judgement]:
    """The judgements of a qrels TSV; its header, if it has one, is skipped."""
    f = formats._open_text(uri, "csv", opts)
    csv.field_size_limit(1 << 30)
    judged: dict[tuple[str, str], int] = {}
    out: list[Judgement] = []

    def rows() -> Iterator[tuple[int, list[str]]]:
        with f:
            yield from formats._records(csv.reader(f, "excel-tab", strict=True), uri)

    for n, (line, fields) in enumerate(formats._guarded(uri, rows(), opts)):
        if n == 0 and [v.strip().lower().lstrip("\ufeff") for v in fields] == QRELS_HEADER:
            continue
        if opts.size and len(out) >= opts.size:
            break
        try:
            judgement = _judgement(uri, line, fields, opts, judged)
        except BadRowError as exc:
            bad.add(exc)
            continue
        judged[judgement.query_id, judgement.document_id] = line
        out.append(judgement)
    return out


def _judgement(uri: str, line: int, fields: list[str], opts, judged: dict) -> Judgement:
    row = formats._csv_row(line, fields, 3, opts.encoding)
    if isinstance(row, BadRow):
        reason = row.reason
        if row.column is None:  # a count of columns
            found = len(fields)
            reason = f"expected 3 tab-separated columns (query-id, corpus-id, score), found {found}"
        raise BadRowError(f"{row.where(uri)}: {reason}.")
    query_id, document_id, score = (v.strip() for v in row.values)
    for column, name, value in ((1, "query-id", query_id), (2, "corpus-id", document_id)):
        if not value:
            raise BadRowError(f"{_where(uri, line, str(column))} ({name}): empty {name}.")
    try:
        grade = int(score)
    except ValueError:
        grade = -1
    if grade < 0:
        raise BadRowError(
            f"{_where(uri, line, '3')} (score): '{score[:40]}' is not a grade; valid: an "
            "integer, 0 or more (0: judged not relevant)."
        )
    first = judged.get((query_id, document_id))
    if first is not None:
        raise BadRowError(
            f"{_where(uri, line, '1')} (query-id): query '{query_id[:60]}' and document "
            f"'{document_id[:60]}' are judged twice, first on line {first}."
        )
    return Judgement(line, query_id, document_id, grade)


def _known(uri: str, judgements, queries, corpus_ids, files: Files, bad) -> list[Judgement]:
    """The judgements of a query and a document that exist; the others are bad rows."""
    kept = []
    for j in judgements:
        if j.query_id not in queries:
            where, name = _where(uri, j.line, "1"), f"query '{j.query_id[:60]}'"
            bad.add(BadRowError(f"{where} (query-id): {name} is not in {files.queries}."))
        elif j.document_id not in corpus_ids:
            where, name = _where(uri, j.line, "2"), f"document '{j.document_id[:60]}'"
            bad.add(BadRowError(f"{where} (corpus-id): {name} is not in {files.corpus}."))
        else:
            kept.append(j)
    return kept


# ---------------------------------------------------------------- train pairs and eval judgements


@dataclass
class Read:
    """BEIR data read and checked: the train pairs, the eval judgements as
    (query_id, query, document_id, score) rows, and what the data report counts."""

    pairs: list[tuple[str, str]]
    eval_rows: list[tuple[str, str, str, float]]
    counts: dict = field(default_factory=dict)


def check_model(spec) -> None:
    if not spec.query_kind == spec.document_kind == "text":
        raise FinetunerError(
            f"BEIR data holds text queries and documents; {spec.name} embeds "
            f"{spec.query_kind} queries and {spec.document_kind} documents. Choose a text model."
        )


def read(
    files: Files,
    opts: DataOptions,
    bad: BadRows,
    val_split: float,
    seed: int,
    corpus_writer: ShardWriter | None = None,
) -> Read:
    """Read and check BEIR data; with `corpus_writer`, the corpus goes to it."""
    check_val_split(val_split, has_eval_data=bool(files.test))
    queries = read_queries(files.queries, opts, bad)
    train = read_qrels(files.train, opts, bad)
    test = read_qrels(files.test, opts, bad) if files.test else []
    wanted = {j.document_id for j in (*train, *test)}
    corpus_ids, texts = read_corpus(files.corpus, opts, bad, wanted, corpus_writer)
    train = _known(files.train, train, queries, corpus_ids, files, bad)
    test = _known(files.test, test, queries, corpus_ids, files, bad)
    if not files.test:  # hold out a share of the train queries, with all their judgements
        held = held_out({digest(j.query_id) for j in train}, val_split, seed)
        test = [j for j in train if digest(j.query_id) in held]
        train = [j for j in train if digest(j.query_id) not in held]
    positives = (j for j in train if j.score > 0)
    pairs = list(dict.fromkeys((queries[j.query_id], texts[j.document_id]) for j in positives))
    eval_rows = [(j.query_id, queries[j.query_id], j.document_id, float(j.score)) for j in test]
    eval_queries = {j.query_id for j in test if j.score > 0}
    where = files.test or f"{files.train} (the held-out queries)"
    check_train_shape(f"{files.train} (its judgements graded above 0)", len(pairs))
    if not eval_queries:
        raise FinetunerError(
            f"{where}: no judgement grades a document above 0, so no query has anything to "
            "find in evaluation. Give test judgements with grades above 0, or a larger val_split."
        )
    counts = {
        "kind": "pairs",
        "corpus_documents": len(corpus_ids),
        "queries": len(queries),
        "train_judgements": len(train),
        "train_rows": len(pairs),
        "eval_judgements": len(test),
        "eval_queries": len(eval_queries),
        "bad_rows_skipped": bad.count,
    }
    return Read(pairs, eval_rows, counts)


class BeirPreprocessed(Preprocessed):
    def report(self, train_data: str, eval_data: str) -> str:
        test = eval_data or "qrels/test.tsv, or the held-out train queries"
        lines = super().report(train_data, eval_data).splitlines()
        lines[3] = f"- eval data: `{test}`"
        lines[4] = (
            "- format: BEIR (corpus, queries, graded qrels); trains on the (query, document) "
            "pairs graded above 0, evaluates graded nDCG over the whole corpus"
        )
        return "\n".join(lines) + "\n"


def preprocess(
    spec, folder: str, eval_data: str, val_split: float, seed: int,
    opts: DataOptions, train_out: str, eval_out: str,
) -> Preprocessed:  # fmt: skip
    """Check BEIR data and write the train pairs (a pairs dataset) and the eval judgements
    with the corpus (a graded dataset)."""
    import pyarrow as pa

    check_model(spec)
    files = locate(folder, eval_data)
    bad = BadRows(opts.max_bad_rows)
    corpus = ShardWriter(Path(eval_out, CORPUS_FOLDER), "corpus")
    result = read(files, opts, bad, val_split, seed, corpus)
    corpus.close()
    train = ShardWriter(train_out, "pairs")
    for pair in result.pairs:
        train.write(pair)
    train.close()
    judgements = ShardWriter(eval_out, "graded")
    for row in result.eval_rows:
        judgements.write(row)
    judgements.close()
    stats = Stats("pairs", rows_read=len(result.pairs))
    columns = list(zip(*result.pairs, strict=True))
    stats.add_batch(pa.table({"query": list(columns[0]), "document": list(columns[1])}))
    return BeirPreprocessed(result.counts, stats, bad)
