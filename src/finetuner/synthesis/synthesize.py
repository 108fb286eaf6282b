"""Data synthesis: MarginMSE training rows from unlabelled queries and a corpus.

The same family of method as Finetuner's `synthesize` and GPL (Wang et al. 2022):
1. a relation miner (a text embedding model of the catalogue) embeds the queries, then the
   corpus a chunk at a time; an exact top-k over each chunk is merged into a running
   top-k per query, so memory holds the query embeddings, one chunk and queries x k
   candidates, never a queries x corpus matrix nor the corpus's embeddings;
2. a cross-encoder scores each (query, candidate) pair, in batches;
3. the positive is the candidate the cross-encoder scores highest (the miner only finds
   the candidates: it is the weaker judge, and GPL's positives were known, not mined);
   the other `num_relations - 1` candidates are hard negatives;
4. each row is (query, positive, negative, margin), margin = score(positive) -
   score(negative).

Scores are the cross-encoder's probabilities (sigmoid of its logit), so margins lie in
[0, 1]: the fine-tuned model's margins are cosine differences, in [-2, 2], and can match
them (see losses.margin_mse).

Inputs are checked first: empty sets, num_relations out of range. Duplicate queries and
documents are dropped and counted (a duplicated document would be mined as its own
negative, with margin 0). A query that is also a corpus document (the same text after
stripping spaces) is excluded from its own candidates. Nothing draws at random: the same
inputs and models give the same rows; `seed` seeds torch for models that would draw.
The output is written locally, then published in one step: nothing half-written.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.io.staging import stage_dir
from finetuner.parameters import RunParameters

# The defaults of `finetuner synthesize`, those of the pipeline parameters.
DEFAULT_NUM_RELATIONS = RunParameters.model_fields["num_relations"].default
DEFAULT_MAX_LENGTH = 256
CORPUS_CHUNK = 4096  # corpus documents embedded and ranked at a time
QUERY_BLOCK = 1024  # queries per score matrix: QUERY_BLOCK x CORPUS_CHUNK floats
SCORE_BLOCK = 256  # queries whose candidates are scored, and written, at a time
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
COLUMNS = ("query", "positive", "negative", "margin")


@dataclass(frozen=True)
class SynthesisModels:
    """The models of a synthesis: a text model of the catalogue that mines candidates, and
    a cross-encoder that scores them. `*_weights` give a model folder to load instead of
    the usual sources (mirror, package, upstream), as `finetuner run --weights` does."""

    relation_miner: str
    cross_encoder: str
    relation_miner_weights: str = ""
    cross_encoder_weights: str = ""


# Finetuner's English preset: an MS MARCO bi-encoder mines, an MS MARCO cross-encoder scores.
DATA_SYNTHESIS_EN = SynthesisModels(
    RunParameters.model_fields["relation_miner"].default,
    RunParameters.model_fields["cross_encoder"].default,
)


@dataclass
class Synthesis:
    """The outcome of a synthesis: where the rows went, and what was counted and timed."""

    output: str
    counts: dict = field(default_factory=dict)

    def report(self) -> str:
        """Markdown: the counts and the throughput."""
        lines = ["# Data synthesis", "", f"- output: `{self.output}`", "", "| count | value |"]
        lines.append("|---|---|")
        for name, value in self.counts.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"| {name.replace('_', ' ')} | {shown} |")
        return "\n".join(lines) + "\n"


def _log(message: str) -> None:
    print(f"[synthesize] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checks


def output_format(output: str) -> str:
    suffix = PurePosixPath(str(output)).suffix.lower()
    if suffix not in OUTPUT_FORMATS or str(output).endswith("/"):
        raise FinetunerError(
            f"parameter output: {output} must name a file ending in "
            f"{', '.join(OUTPUT_FORMATS)} (s3:// or a path)."
        )
    return OUTPUT_FORMATS[suffix]


def check_output(output: str, overwrite: bool = False) -> str:
    storage.check_uri(output, "output")
    fmt = output_format(output)
    found = storage.kind(output)
    if found == "folder":
        raise FinetunerError(f"parameter output: {output} is a folder; expected a file.")
    if not overwrite and found == "file":
        raise FinetunerError(f"parameter output: {output} already exists; choose a new one.")
    storage.check_writable(output, "output", folder=False)
    return fmt


def check_num_relations(num_relations) -> int:
    if isinstance(num_relations, bool) or not isinstance(num_relations, int) or num_relations < 2:
        raise FinetunerError(
            f"parameter num_relations: must be an integer >= 2 (one positive and at least "
            f"one negative per query), got {num_relations!r}."
        )
    return num_relations


@contextmanager
def _named(parameter: str):
    """Errors of the shared resolvers, said of this parameter where they name none."""
    try:
        yield
    except FinetunerError as exc:
        if str(exc).startswith("parameter "):
            raise
        raise FinetunerError(f"parameter {parameter}: {exc}") from None


def miner_spec(models: SynthesisModels, max_length: int):
    """The relation miner's ModelSpec: a text-to-text model of the catalogue."""
    from finetuner.catalogue import CATALOGUE, get_entry, lookup
    from finetuner.catalogue.weights import check_weights

    entry = get_entry(models.relation_miner)
    if entry.task != "text-to-text":
        valid = [e.name for e in CATALOGUE if e.task == "text-to-text"]
        raise FinetunerError(
            f"parameter relation_miner: {entry.name} ({entry.task}) is not a text model; the "
            f"relation miner embeds texts. Valid relation miners: {', '.join(valid)}."
        )
    if models.relation_miner_weights:  # named as this parameter, not as run's `weights`
        check_weights(entry, models.relation_miner_weights, "relation_miner_weights")
    with _named("relation_miner"):
        return lookup(entry.name, max_length=max_length, weights=models.relation_miner_weights)


def cross_encoder_source(name: str, weights: str = "") -> str:
    """Where the cross-encoder's weights come from, through the same resolver as every
    backbone: `weights` if given, else `$FINETUNER_MODEL_MIRROR/<name>/`, else the hub id
    (its local cache when HF_HUB_OFFLINE is set)."""
    from finetuner.catalogue import CATALOGUE, get_entry
    from finetuner.catalogue.weights import check_weights, resolve_source

    entry = get_entry(name)
    if entry.task != "synthesis":  # the catalogue's scorers of pairs
        valid = [e.name for e in CATALOGUE if e.task == "synthesis"]
        raise FinetunerError(
            f"parameter cross_encoder: {entry.name} ({entry.task}) is not a cross-encoder. "
            f"Valid cross-encoders: {', '.join(valid)}."
        )
    if weights:
        return check_weights(entry, weights, "cross_encoder_weights")
    with _named("cross_encoder"):
        return resolve_source(entry)


def load_cross_encoder(source: str, max_length: int = DEFAULT_MAX_LENGTH, device=None):
    """A sentence-transformers CrossEncoder from a resolved weights source; it must give one
    score per pair."""
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    from finetuner.models.weights import local_path

    hf_logging.disable_progress_bar()
    path = local_path(source)
    try:
        model = CrossEncoder(str(path), max_length=max_length, device=device)
    except (OSError, ValueError) as exc:
        raise FinetunerError(f"cannot load a cross-encoder from {source}: {exc}") from None
    if model.num_labels != 1:
        raise FinetunerError(
            f"the cross-encoder at {source} gives {model.num_labels} scores per pair; "
            "synthesis needs a relevance model with one (num_labels=1)."
        )
    return model


# ---------------------------------------------------------------- reading texts


@dataclass
class Texts:
    """The distinct texts of a file, in the order first seen, and how many rows it had."""

    texts: list[str]
    rows: int
    duplicates: int


def read_texts(uri: str, what: str, opts) -> Texts:
    """The distinct texts of a query or corpus file; bad rows fail as in preprocess (or are
    skipped up to data_options.max_bad_rows)."""
    from finetuner.data import formats
    from finetuner.data.dataset import BadRowError, BadRows

    storage.check_file(uri, what)
    unit = formats.row_unit(formats.detect_format(uri, opts.format))
    bad, seen, rows = BadRows(opts.max_bad_rows), {}, 0
    for row in formats.read_texts(uri, opts):
        if isinstance(row, formats.BadRow):
            bad.add(BadRowError(f"{row.where(uri, unit)}: {row.reason}."))
            continue
        text = row.values[0].strip()
        if not text or len(text) > opts.max_field_chars:
            what_is_wrong = (
                f"{len(text)} characters, more than the limit of {opts.max_field_chars} "
                "(data_options.max_field_chars)"
                if text
                else "empty text"
            )
            bad.add(BadRowError(f"{uri}, {unit} {row.line}: {what_is_wrong}."))
            continue
        rows += 1
        seen.setdefault(text, None)
    if not seen:
        raise FinetunerError(
            f"parameter {what}: {uri} holds no texts; expected one text per row (a "
            f"one-column CSV, or JSONL or Parquet with a column named "
            f"{' or '.join(formats.TEXT_COLUMNS[:3])})."
        )
    return Texts(list(seen), rows, rows - len(seen))


# ---------------------------------------------------------------- mining


class RunningTopK:
    """The k best corpus rows per query, merged chunk by chunk with torch.topk: it keeps
    queries x k scores and ids, and works on QUERY_BLOCK x (k + chunk) scores at a time,
    whatever the corpus size.

    `self_index[i]` is the corpus row that query i must not find (its own text), or -1.
    `exclude` is a (query row, corpus row) pair of index tensors, of any number of pairs
    that must not be found either (hard negative mining: a query's positives); their
    scores are kept aside, in `excluded_scores`, in the pairs' order."""

    def __init__(self, queries, k: int, self_index=None, exclude=None):
        import torch

        self.queries = queries  # (n, d) unit-length float32 tensor
        self.k = k
        n = len(queries)
        self.scores = torch.full((n, k), -torch.inf)
        self.indices = torch.full((n, k), -1, dtype=torch.long)
        self.self_index = self_index if self_index is not None else torch.full((n,), -1)
        self.exclude = None
        if exclude is not None:  # sorted by corpus row, then query row: sliced per chunk
            query_rows, corpus_rows = exclude
            self.exclude_order = torch.argsort(corpus_rows * n + query_rows)
            self.exclude = (query_rows[self.exclude_order], corpus_rows[self.exclude_order])
            self.excluded_scores = torch.full((len(query_rows),), -torch.inf)

    def _excluded_in(self, offset: int, width: int):
        """The excluded pairs whose corpus row is in this chunk, sorted by query row: their
        query rows, their columns in the chunk, and their places in `excluded_scores`."""
        import torch

        query_rows, corpus_rows = self.exclude
        lo, hi = torch.searchsorted(corpus_rows, torch.tensor([offset, offset + width])).tolist()
        by_query = torch.argsort(query_rows[lo:hi], stable=True)
        at = torch.arange(lo, hi)[by_query]
        return query_rows[at], corpus_rows[at] - offset, self.exclude_order[at]

    def add(self, chunk, offset: int) -> None:
        """Merge the corpus rows offset..offset+len(chunk) (their embeddings)."""
        import torch

        width = len(chunk)
        ids = torch.arange(offset, offset + width)
        if self.exclude is not None:
            ex_query, ex_column, ex_place = self._excluded_in(offset, width)
        for start in range(0, len(self.queries), QUERY_BLOCK):
            block = slice(start, start + QUERY_BLOCK)
            scores = self.queries[block] @ chunk.T
            if self.exclude is not None:  # before the own texts, which may be among them
                lo, hi = torch.searchsorted(ex_query, torch.tensor([start, start + QUERY_BLOCK]))
                q, c = ex_query[lo:hi] - start, ex_column[lo:hi]
                self.excluded_scores[ex_place[lo:hi]] = scores[q, c]
                scores[q, c] = -torch.inf
            own = self.self_index[block] - offset
            rows = torch.nonzero((own >= 0) & (own < width)).flatten()
            scores[rows, own[rows]] = -torch.inf
            merged = torch.cat([self.scores[block], scores], dim=1)
            merged_ids = torch.cat([self.indices[block], ids.expand(len(scores), width)], dim=1)
            top = torch.topk(merged, self.k, dim=1)
            self.scores[block] = top.values
            self.indices[block] = torch.gather(merged_ids, 1, top.indices)

    def candidates(self, start: int = 0, stop: int | None = None) -> list[list[int]]:
        """The candidates of queries start..stop, best first; fewer than k where a query's
        own text was left out of a corpus no bigger than k. As lists for a slice at a time:
        Python ints cost far more memory than the tensor."""
        indices, scores = self.indices[start:stop], self.scores[start:stop]
        valid = scores > -float("inf")
        return [row[mask].tolist() for row, mask in zip(indices, valid, strict=True)]

    def count(self) -> int:
        """How many candidates were found, over all queries."""
        return int((self.scores > -float("inf")).sum())


def mine(
    miner, queries: list[str], corpus: list[str], k: int, self_index: list[int],
    batch_size: int = 64, chunk: int = CORPUS_CHUNK, timings: dict | None = None,
    device: str = "cpu", *, exclude=None, document_miner=None,
    label: str = "synthesize: mine",
) -> RunningTopK:  # fmt: skip
    """The relation miner's top-k corpus rows for each query (exact cosine). `exclude`
    and `self_index` are RunningTopK's; `document_miner` embeds the corpus where it is not
    the miner (a two-tower model's document side)."""
    import torch

    from finetuner.io.progress import Progress

    timings = timings if timings is not None else {}
    document_miner = document_miner or miner
    started = time.perf_counter()
    query_emb = torch.from_numpy(miner.encode(queries, batch_size=batch_size, device=device))
    timings["seconds_embed_queries"] = time.perf_counter() - started
    top = RunningTopK(query_emb, k, torch.tensor(self_index, dtype=torch.long), exclude)
    chunks = range(0, len(corpus), chunk)
    progress = Progress(len(chunks), every=1, label=label)
    embed = rank = 0.0
    for step, start in enumerate(chunks, 1):
        t0 = time.perf_counter()
        texts = corpus[start : start + chunk]
        emb = torch.from_numpy(document_miner.encode(texts, batch_size=batch_size, device=device))
        t1 = time.perf_counter()
        top.add(emb, start)
        rank += time.perf_counter() - t1
        embed += t1 - t0
        progress.step(step, len(emb))
    timings["seconds_embed_corpus"] = embed
    timings["seconds_top_k"] = rank
    top.queries = None  # the query embeddings are not needed past mining
    return top


def score_pairs(cross_encoder, pairs: list[tuple[str, str]], batch_size: int = 64):
    """The cross-encoder's probability for each (query, document) pair, float32."""
    import torch

    if not pairs:
        import numpy as np

        return np.zeros(0, dtype=np.float32)
    return cross_encoder.predict(
        pairs, batch_size=batch_size, activation_fn=torch.nn.Sigmoid(), show_progress_bar=False
    )


def margin_rows(query: str, candidates: list[str], scores) -> list[tuple]:
    """(query, positive, negative, margin) rows of one query: the best-scored candidate is
    the positive (the first of equals, in the miner's order), the others negatives."""
    best = int(scores.argmax())
    positive, top = candidates[best], float(scores[best])
    return [
        (query, positive, doc, top - float(score))
        for i, (doc, score) in enumerate(zip(candidates, scores, strict=True))
        if i != best
    ]


def score_and_write(
    cross_encoder, queries: list[str], corpus: list[str], top: RunningTopK, writer,
    batch_size: int = 64,
) -> tuple[int, int, float]:  # fmt: skip
    """Score each query's candidates and write its rows, SCORE_BLOCK queries at a time;
    the pairs scored, the queries skipped (fewer than two candidates) and the seconds spent
    scoring."""
    from finetuner.io.progress import Progress

    scored = skipped = 0
    seconds = 0.0
    blocks = range(0, len(queries), SCORE_BLOCK)
    progress = Progress(len(blocks), every=1, label="synthesize: score")
    for step, start in enumerate(blocks, 1):
        block = []
        stop = start + SCORE_BLOCK
        for query, found in zip(queries[start:stop], top.candidates(start, stop), strict=True):
            if len(found) < 2:  # its own text left out of a corpus of two
                skipped += 1
                continue
            block.append((query, [corpus[i] for i in found]))
        pairs = [(query, doc) for query, docs in block for doc in docs]
        started = time.perf_counter()
        scores = score_pairs(cross_encoder, pairs, batch_size)
        seconds += time.perf_counter() - started
        scored += len(pairs)
        rows, at = [], 0
        for query, docs in block:
            rows += margin_rows(query, docs, scores[at : at + len(docs)])
            at += len(docs)
        writer.write(rows)
        progress.step(step, len(pairs))
    return scored, skipped, seconds


# ---------------------------------------------------------------- writing


class RowWriter:
    """Margin rows to a local file in CSV, JSONL or Parquet, a block at a time."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt, self.rows = path, fmt, 0
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            from finetuner.data.dataset import _schema

            self.schema = _schema("margins")
            self.writer = pq.ParquetWriter(path, self.schema)
            self.pa = pa
        else:
            self.file = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            if fmt == "csv":
                self.csv = csv.writer(self.file)
                self.csv.writerow(COLUMNS)

    def write(self, rows: list[tuple]) -> None:
        self.rows += len(rows)
        if self.fmt == "parquet":
            if rows:
                columns = [list(c) for c in zip(*rows, strict=True)]
                self.writer.write_batch(self.pa.record_batch(columns, schema=self.schema))
        elif self.fmt == "csv":
            # repr: the shortest text that reads back as the same float.
            self.csv.writerows((q, p, n, repr(m)) for q, p, n, m in rows)
        else:
            for row in rows:
                self.file.write(json.dumps(dict(zip(COLUMNS, row, strict=True))) + "\n")

    def close(self) -> None:
        (self.writer if self.fmt == "parquet" else self.file).close()


def publish(local: Path, output: str) -> None:
    """Move a finished file to `output` in one step: an S3 object appears only once its
    upload completes; a local file is renamed into place from beside it."""
    if storage.is_s3(output):
        storage.upload_file(local, output)
        return
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        storage.upload_file(local, staged)
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- synthesize


def default_output() -> str:
    return str(Path("runs") / f"synthesis-{time.strftime('%Y%m%d-%H%M%S')}.parquet")


def synthesize(
    query_data: str,
    corpus_data: str,
    models: SynthesisModels = DATA_SYNTHESIS_EN,
    num_relations: int = DEFAULT_NUM_RELATIONS,
    output: str | None = None,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 64,
    data_options: dict | None = None,
    seed: int = 42,
    overwrite: bool = False,
    device: str | None = None,
) -> Synthesis:
    """Training rows (query, positive, negative, margin) from unlabelled queries and a
    corpus, written to `output` (.csv, .jsonl or .parquet; s3:// or a path; default
    runs/synthesis-<time>.parquet), which `finetuner run --loss MarginMSELoss` trains on.

    Each query gives `num_relations - 1` rows: the relation miner's top `num_relations`
    documents, the one the cross-encoder scores highest as the positive, the rest as
    negatives. `data_options` are those of `finetuner run` (format, dialect, encoding,
    size, max_bad_rows, max_field_chars), for both files."""
    from finetuner.data import formats

    started = time.perf_counter()
    output = output or default_output()
    fmt = check_output(output, overwrite)
    for name, uri in (("relation_miner_weights", models.relation_miner_weights),
                      ("cross_encoder_weights", models.cross_encoder_weights)):  # fmt: skip
        if uri:
            storage.check_uri(uri, name, need_key=False)
    num_relations = check_num_relations(num_relations)
    if max_length < 1 or batch_size < 1:
        raise FinetunerError("parameters max_length and batch_size: must be >= 1.")
    opts = formats.options(data_options)
    # Names and weights are resolved before any data is read or model loaded.
    spec = miner_spec(models, max_length)
    ce_source = cross_encoder_source(models.cross_encoder, models.cross_encoder_weights)

    queries = read_texts(query_data, "query_data", opts)
    corpus = read_texts(corpus_data, "corpus_data", opts)
    if num_relations > len(corpus.texts):
        raise FinetunerError(
            f"parameter num_relations: {num_relations} is more than the "
            f"{len(corpus.texts)} distinct documents of {corpus_data}; it must be at most "
            "the corpus size (one positive and num_relations - 1 negatives per query)."
        )
    doc_index = {text: i for i, text in enumerate(corpus.texts)}
    self_index = [doc_index.get(q, -1) for q in queries.texts]
    in_corpus = sum(i >= 0 for i in self_index)
    _log(
        f"queries: {len(queries.texts)} ({queries.duplicates} duplicates dropped); "
        f"documents: {len(corpus.texts)} ({corpus.duplicates} duplicates dropped)"
    )
    if in_corpus:
        _log(
            f"queries that are also corpus documents: {in_corpus} (each is left out of its "
            "own candidates)"
        )

    import torch

    from finetuner import models as families

    torch.manual_seed(seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    timings: dict = {}
    miner = families.pretrained(spec)
    top = mine(
        miner, queries.texts, corpus.texts, num_relations, self_index, batch_size,
        timings=timings, device=device,
    )  # fmt: skip
    del miner
    cross_encoder = load_cross_encoder(ce_source, max_length, device)
    with stage_dir("synthesis") as tmp:
        local = tmp / f"margins{PurePosixPath(output).suffix.lower()}"
        writer = RowWriter(local, fmt)
        try:
            scored, skipped, score_seconds = score_and_write(
                cross_encoder, queries.texts, corpus.texts, top, writer, batch_size
            )
        finally:
            writer.close()
        if writer.rows == 0:
            raise FinetunerError(
                "no rows: every query has fewer than two candidates (its own text left "
                "out of a corpus of two); give a bigger corpus."
            )
        publish(local, output)
    mined = top.count()
    mine_seconds = timings["seconds_embed_corpus"] + timings["seconds_top_k"]
    counts = {
        "query_rows": queries.rows,
        "queries": len(queries.texts),
        "duplicate_queries_dropped": queries.duplicates,
        "corpus_rows": corpus.rows,
        "documents": len(corpus.texts),
        "duplicate_documents_dropped": corpus.duplicates,
        "queries_in_corpus_self_excluded": in_corpus,
        "queries_skipped_too_few_candidates": skipped,
        "num_relations": num_relations,
        "rows": writer.rows,
        "candidates_mined": mined,
        "pairs_scored": scored,
        **{k: round(v, 3) for k, v in timings.items()},
        "seconds_score": round(score_seconds, 3),
        "candidates_per_second": mined / (mine_seconds + timings["seconds_embed_queries"]),
        "pairs_per_second": scored / score_seconds if score_seconds else 0.0,
        "seconds_total": round(time.perf_counter() - started, 3),
        "relation_miner": spec.name,
        "cross_encoder": models.cross_encoder,
    }
    _log(f"wrote {writer.rows} rows to {output}")
    return Synthesis(output, counts)
