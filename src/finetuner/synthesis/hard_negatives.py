"""Hard negatives mined from the corpus of a pairs dataset, before training.

The corpus is the distinct documents of the train pairs. A miner (the model being trained,
as it is before training, or a text model of the catalogue) embeds the distinct queries,
then the corpus a chunk at a time; the synthesis step's bounded-memory top-k
(synthesize.RunningTopK) keeps the best `range_max` documents per query, so memory holds
the query embeddings, one chunk and queries x range_max candidates, never a queries x
corpus matrix. A query's positives (every document it is paired with, by their index in
the corpus) and its own text never enter its candidates; their scores are kept aside as
the positives' scores.

Of each query's candidates, ranked from 0 best first, those ranked range_min to
range_max - 1 are considered. A margin drops those too close to the positives (false
negatives, likely): absolute, a candidate is kept if score <= positive - margin; relative,
if score <= positive - |positive| x margin, where positive is the lowest score of the
query's positives (the strictest). With a cross-encoder, the positives and candidates
are rescored by it (probabilities), and the margin (0 if none is given) applies to its
scores. The first `hard_negatives` candidates kept are the query's negatives, given to
every row of that query (fewer where fewer are kept; counted).

The output is the same pairs with a `negatives` column (a list of texts per row), which
trains with MultipleNegativesRankingLoss: the batch's negatives join its documents as
candidates. Nothing draws at random; the same data, models and options give the same
negatives.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from finetuner.errors import FinetunerError

LOSS = "MultipleNegativesRankingLoss"
SCORE_BLOCK = 256  # queries whose candidates the cross-encoder scores at a time
AUTO_MINER = "auto"


@dataclass(frozen=True)
class MiningOptions:
    """The hard negative options of a run (the hard_negatives_* training options), checked."""

    num: int
    miner: str = AUTO_MINER
    range_min: int = 0
    range_max: int = 50
    margin: float | None = None
    margin_kind: str = "absolute"
    cross_encoder: str = ""


@dataclass
class Mined:
    """What a mining did: the counts and timings of its report."""

    counts: dict = field(default_factory=dict)

    def report(self) -> str:
        lines = ["# Hard negatives", "", "| count | value |", "|---|---|"]
        for name, value in self.counts.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"| {name.replace('_', ' ')} | {shown} |")
        return "\n".join(lines) + "\n"


def _log(message: str) -> None:
    print(f"[hard negatives] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checks


def check_options(config, spec, kind: str | None = None) -> MiningOptions | None:
    """The mining options of a training config (TrainConfig), checked against each other,
    the model (`spec`, a ModelSpec), its loss and, when known, the data's kind; None when
    mining is off. Catalogue names are checked here, before any data is read."""
    from finetuner.training.losses import loss_for

    if not config.hard_negatives:
        return None
    opts = MiningOptions(
        num=config.hard_negatives,
        miner=config.hard_negatives_miner.strip() or AUTO_MINER,
        range_min=config.hard_negatives_range_min,
        range_max=config.hard_negatives_range_max,
        margin=None if config.hard_negatives_margin == "none" else config.hard_negatives_margin,
        margin_kind=config.hard_negatives_margin_kind,
        cross_encoder=config.hard_negatives_cross_encoder.strip(),
    )
    if opts.range_min + opts.num > opts.range_max:
        raise FinetunerError(
            f"parameter hard_negatives_range_max: {opts.range_max} leaves "
            f"{max(opts.range_max - opts.range_min, 0)} ranks after hard_negatives_range_min "
            f"{opts.range_min}, fewer than hard_negatives {opts.num}; valid: at least "
            f"range_min + hard_negatives = {opts.range_min + opts.num}."
        )
    if getattr(config, "mini_batch_size", 0):
        raise FinetunerError(
            "parameter mini_batch_size: GradCache embeds the batch's columns in mini-batches "
            "and does not take mined hard negatives; set mini_batch_size to 0 or "
            "hard_negatives to 0."
        )
    if not spec.query_kind == spec.document_kind == "text":
        raise FinetunerError(
            f"parameter hard_negatives: mining hard negatives needs a text model (text "
            f"queries and documents); {spec.name} embeds {spec.query_kind} queries and "
            f"{spec.document_kind} documents. Set hard_negatives to 0."
        )
    if kind is not None and kind != "pairs":
        raise FinetunerError(
            f"parameter hard_negatives: hard negatives are mined for query,document pairs; "
            f"this data is {kind}. Set hard_negatives to 0."
        )
    loss = loss_for(spec.family, config.loss, "pairs")
    if loss != LOSS:
        raise FinetunerError(
            f"parameter loss: mined hard negatives train with {LOSS} (auto for pairs), not "
            f"{loss}; set loss to auto or {LOSS}, or hard_negatives to 0."
        )
    if opts.miner != AUTO_MINER:
        miner_spec(opts.miner, spec.max_length)
    if opts.cross_encoder:
        cross_encoder_source(opts.cross_encoder)
    return opts


def miner_spec(name: str, max_length: int | None = None):
    """The ModelSpec of a named miner: a text model of the catalogue."""
    from finetuner.catalogue import CATALOGUE, get_entry, lookup

    try:
        entry = get_entry(name)
        if entry.task != "text-to-text":
            valid = [e.name for e in CATALOGUE if e.task == "text-to-text"]
            raise FinetunerError(
                f"{entry.name} ({entry.task}) is not a text model; the miner embeds texts. "
                f"Valid: auto (the model being trained), {', '.join(valid)}."
            )
        return lookup(entry.name, max_length=max_length)
    except FinetunerError as exc:
        raise FinetunerError(f"parameter hard_negatives_miner: {exc}") from None


def cross_encoder_source(name: str) -> str:
    """Where a named cross-encoder's weights come from (mirror, package or upstream)."""
    from finetuner.catalogue import CATALOGUE, get_entry
    from finetuner.catalogue.weights import resolve_source

    try:
        entry = get_entry(name)
        if entry.task != "synthesis":  # the catalogue's scorers of pairs
            valid = [e.name for e in CATALOGUE if e.task == "synthesis"]
            raise FinetunerError(
                f"{entry.name} ({entry.task}) is not a cross-encoder. Valid cross-encoders: "
                f"{', '.join(valid)}; empty: none."
            )
        return resolve_source(entry)
    except FinetunerError as exc:
        raise FinetunerError(f"parameter hard_negatives_cross_encoder: {exc}") from None


# ---------------------------------------------------------------- mining


def _index(texts: list[str]) -> tuple[list[int], list[str]]:
    """Each text's index among the distinct texts, and the distinct texts in first-seen
    order."""
    seen: dict[str, int] = {}
    return [seen.setdefault(t, len(seen)) for t in texts], list(seen)


def mine_negatives(
    data, miner, opts: MiningOptions, *, cross_encoder=None, batch_size: int = 64,
    device: str = "cpu",
) -> tuple[list[list[str]], Mined]:  # fmt: skip
    """The hard negatives of each row of a pairs dataset (finetuner.data.dataset), in the
    rows' order, and the counts. `miner` is a model of finetuner.models (its query side
    embeds the queries, its document side the corpus); `cross_encoder` a loaded
    sentence-transformers CrossEncoder, or None."""
    import torch

    from finetuner.models import sides
    from finetuner.synthesis.synthesize import mine

    started = time.perf_counter()
    row_query, queries = _index(data.column("query"))
    row_doc, corpus = _index(data.column("document"))
    positives = sorted(set(zip(row_query, row_doc, strict=True)))  # by query, then document
    pos_query = torch.tensor([q for q, _ in positives], dtype=torch.long)
    pos_doc = torch.tensor([d for _, d in positives], dtype=torch.long)
    doc_index = {text: i for i, text in enumerate(corpus)}
    self_index = [doc_index.get(q, -1) for q in queries]  # a query that is also a document
    _log(f"{len(queries)} queries, {len(corpus)} documents, {len(data)} rows")

    query_side, document_side = sides(miner)
    timings: dict = {}
    top = mine(
        query_side, queries, corpus, opts.range_max, self_index, batch_size,
        timings=timings, device=device, exclude=(pos_query, pos_doc),
        document_miner=document_side, label="hard negatives: mine",
    )  # fmt: skip
    window = slice(opts.range_min, opts.range_max)
    scores, indices = top.scores[:, window].clone(), top.indices[:, window]
    valid = scores > -torch.inf
    pos_scores = top.excluded_scores
    margin = opts.margin
    if cross_encoder is not None:
        t0 = time.perf_counter()
        scores, pos_scores = _rescore(cross_encoder, queries, corpus, indices, valid,
                                      positives, batch_size)  # fmt: skip
        timings["seconds_cross_encoder"] = time.perf_counter() - t0
        margin = margin if margin is not None else 0.0
    keep = valid
    if margin is not None:
        # The lowest score among each query's positives: a negative must be below all.
        lowest = torch.full((len(queries),), torch.inf).scatter_reduce(
            0, pos_query, pos_scores, "amin"
        )
        if opts.margin_kind == "relative":
            threshold = lowest - lowest.abs() * margin
        else:
            threshold = lowest - margin
        keep = valid & (scores <= threshold[:, None])
    taken = keep & (keep.cumsum(dim=1) <= opts.num)
    per_query = [row[mask].tolist() for row, mask in zip(indices, taken, strict=True)]
    negatives = [[corpus[j] for j in per_query[q]] for q in row_query]
    found = taken.sum(dim=1)
    counts = {
        "rows": len(data),
        "queries": len(queries),
        "documents": len(corpus),
        "queries_in_corpus_self_excluded": sum(i >= 0 for i in self_index),
        "hard_negatives": opts.num,
        "miner": opts.miner,
        "cross_encoder": opts.cross_encoder or "none",
        "range": f"{opts.range_min}-{opts.range_max - 1}",
        "margin": "none" if margin is None else f"{margin:g} ({opts.margin_kind})",
        "candidates_in_range": int(valid.sum()),
        "candidates_dropped_by_margin": int((valid & ~keep).sum()),
        "queries_with_fewer_negatives": int((found < opts.num).sum()),
        "negatives_per_query": float(found.float().mean()) if len(found) else 0.0,
        **{k: round(v, 3) for k, v in timings.items()},
        "seconds_total": round(time.perf_counter() - started, 3),
    }
    _log(
        f"{int(found.sum())} negatives for {len(queries)} queries "
        f"({counts['candidates_dropped_by_margin']} candidates dropped by the margin)"
    )
    return negatives, Mined(counts)


def _rescore(cross_encoder, queries, corpus, indices, valid, positives, batch_size):
    """The cross-encoder's probabilities of the window's candidates (queries x window, -inf
    where none) and of the (query, positive) pairs, SCORE_BLOCK queries at a time."""
    import torch

    from finetuner.synthesis.synthesize import score_pairs

    scores = torch.full(indices.shape, -torch.inf)
    pos_scores = torch.from_numpy(
        score_pairs(cross_encoder, [(queries[q], corpus[d]) for q, d in positives], batch_size)
    ).float()
    for start in range(0, len(queries), SCORE_BLOCK):
        block = slice(start, start + SCORE_BLOCK)
        rows, cols = torch.nonzero(valid[block], as_tuple=True)
        docs = indices[block][rows, cols].tolist()
        pairs = [(queries[start + r], corpus[d]) for r, d in zip(rows.tolist(), docs, strict=True)]
        block_scores = torch.from_numpy(score_pairs(cross_encoder, pairs, batch_size)).float()
        scores[rows + start, cols] = block_scores
    return scores, pos_scores


# ---------------------------------------------------------------- the step


def mine_dataset(
    spec, train_path: str, out_path: str, opts: MiningOptions, *, seed: int = 42,
    batch_size: int = 64, device: str | None = None,
) -> Mined:  # fmt: skip
    """Mine the hard negatives of the train dataset at `train_path` and write it, with
    its `negatives` column, to `out_path` (Parquet shards, as preprocess writes)."""
    import pyarrow as pa
    import torch

    from finetuner import models
    from finetuner.data import dataset
    from finetuner.synthesis.synthesize import load_cross_encoder

    data = dataset.load(train_path)
    if data.kind != "pairs":
        raise FinetunerError(
            f"parameter hard_negatives: hard negatives are mined for query,document pairs; "
            f"this data is {data.kind}. Set hard_negatives to 0."
        )
    torch.manual_seed(seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    miner = models.pretrained(spec if opts.miner == AUTO_MINER else miner_spec(opts.miner))
    cross_encoder = None
    if opts.cross_encoder:
        cross_encoder = load_cross_encoder(cross_encoder_source(opts.cross_encoder), device=device)
    negatives, mined = mine_negatives(
        data, miner, opts, cross_encoder=cross_encoder, batch_size=batch_size, device=device
    )
    table = data.table.append_column(
        dataset.NEGATIVES, pa.array(negatives, type=pa.list_(pa.string()))
    )
    writer = dataset.ShardWriter(out_path, "pairs", {dataset.NEGATIVES: pa.list_(pa.string())})
    for batch in table.to_batches(max_chunksize=dataset.BATCH_ROWS):
        writer.write_batch(batch)
    writer.close()
    return mined
