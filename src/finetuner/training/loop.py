"""The training loop: batches from a sampler, the loss of the data's kind, AdamW with
linear warm-up.

torch is imported inside the functions, so validating a TrainConfig stays instant.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from dataclasses import asdict, dataclass, field

from finetuner.data import samplers
from finetuner.errors import FinetunerError
from finetuner.io.progress import Progress
from finetuner.parameters import AUTO, NONE, TrainOptions, param
from finetuner.training import callbacks as callback
from finetuner.training import gradcache, lora, matryoshka
from finetuner.training.losses import build_loss, check_loss, loss_for
from finetuner.training.optim import build_optimizer, build_scheduler, optimizer_options, steps_for

WORKERS_FROM_ROWS = 256
HARD_NEGATIVES_LOSS = "MultipleNegativesRankingLoss"  # the loss that takes mined negatives


def family_defaults(family: str) -> dict:
    """The learning rate and epochs that train a model family when they are auto: the
    family's own (finetuner.models.registry)."""
    from finetuner.models.registry import get_family

    declared = get_family(family)
    return {"learning_rate": declared.learning_rate, "epochs": declared.epochs}


class TrainConfig(TrainOptions):
    """The training loop's settings: the train step's options (the pipeline parameters of
    finetuner.parameters.TrainOptions), and the loop's own below, which are no pipeline
    parameters. Building one checks every value."""

    max_grad_norm: float = param(
        1.0, "Gradients are clipped to this norm.", why="gradients are clipped to this norm",
        gt=0,
    )  # fmt: skip
    max_steps: int | None = param(
        None, "Stop early, e.g. for benchmarks; None: no limit.", why="None: no limit", ge=1
    )
    length_buckets: int | None = param(
        None,
        "Forward passes per side of a batch, grouped by length to skip padding (exact); None: "
        "1 when the batches are grouped by length already (see length_grouping), else 2.",
        why="None: chosen by the sampler",
        ge=1,
    )
    length_grouping: int = param(
        4,
        "Text rows of this many batches at a time are sorted by length before they are cut "
        "into batches (random and no_duplicates samplers), which removes most padding.",
        why="1 turns grouping off",
        ge=1,
    )
    log_every: int = param(10, "Steps between progress lines.", why="it counts steps", ge=1)
    num_workers: int | None = param(
        None,
        "DataLoader workers that decode media ahead of the training step; None: up to 2, for "
        "WORKERS_FROM_ROWS rows or more.",
        why="0 decodes media in the main process",
        ge=0,
    )
    checkpoint_dir: str = param("", "A folder or s3:// prefix; empty: no checkpoints.")

    def validate(self) -> TrainConfig:
        if self.loss != AUTO:
            self.loss = check_loss(self.loss)
        samplers.check_sampler(self.sampler)
        callback.resolve_mode(self.best_model_metric, self.best_model_mode)
        callback.early_stopping_options(self.early_stopping_options)
        self.matryoshka_dims, self.matryoshka_weights = matryoshka.check_options(
            self.matryoshka_dims, self.matryoshka_weights
        )
        return self

    def resolved(self, family: str) -> TrainConfig:
        """The config with the learning rate and epochs that are auto set to the family's
        (family_defaults): the one place where they are resolved."""
        defaults = family_defaults(family)
        chosen = {name: getattr(self, name) for name in defaults}
        return self.model_copy(
            update={k: defaults[k] if v == AUTO else v for k, v in chosen.items()}
        )

    def monitors(self, eval_kind: str | None) -> dict[str, callback.Monitor]:
        """The best-model and early-stopping monitors, checked against the metrics that
        each epoch reports (`eval_kind`: the kind of the per-epoch eval data, or None)."""
        out = {}
        if self.best_model_metric:
            metric = self.best_model_metric
            callback.check_monitor("best_model_metric", metric, eval_kind, self.eval_k)
            mode = callback.resolve_mode(metric, self.best_model_mode)
            out["best_model"] = callback.Monitor(metric, mode)
        if self.early_stopping_patience:
            opts = callback.early_stopping_options(self.early_stopping_options)
            metric = opts["monitor"] or self.best_model_metric
            metric = metric or callback.default_monitor(eval_kind, self.eval_k)
            parameter = "early_stopping_options.monitor"
            callback.check_monitor(parameter, metric, eval_kind, self.eval_k)
            mode = callback.resolve_mode(metric, opts["mode"])
            out["early_stopping"] = callback.Monitor(
                metric, mode, opts["min_delta"], best=opts["baseline"]
            )
        return out


def resolve_sampler(config: TrainConfig, family: str, kind: str) -> tuple[str, str]:
    """The loss and the sampler that train a model family on data of a kind."""
    loss_name = loss_for(family, config.loss, kind)
    sampler = config.sampler
    if sampler == "auto":
        sampler = samplers.default_sampler(kind, loss_name)
    return loss_name, samplers.check_sampler(sampler, kind)


def check_shape(
    config: TrainConfig, sampler: str, rows: int, labels=None, queries=None, documents=None
) -> None:
    """What the batches need of the train data, from its counts: distinct `rows`, the
    items of each label (`labels`, a Counter) and the distinct queries and documents, where
    known. Known before training, so the run fails at once and not after loading a model."""
    if rows < 2:
        raise FinetunerError(
            f"the train data has {rows} distinct row(s); training needs at least 2, since a "
            "batch holds two or more rows."
        )
    if sampler == "class":
        per_class, batch_size = config.num_items_per_class, config.batch_size
        if per_class > batch_size:
            raise FinetunerError(
                f"parameter num_items_per_class: {per_class} is more than batch_size "
                f"{batch_size}; valid: 2 to batch_size, since the class sampler puts "
                "num_items_per_class items of each label in a batch."
            )
        if labels is not None and max(labels.values(), default=0) < 2:
            raise FinetunerError(
                f"no label of the train data has two items ({len(labels)} labels, one item "
                "each): the class sampler needs items of one label together, as each "
                "other's positives. Give two or more items of some labels."
            )
    if sampler == "no_duplicates" and queries is not None and min(queries, documents) < 2:
        raise FinetunerError(
            f"the train data has {queries} distinct queries and {documents} distinct "
            "documents: the no_duplicates sampler needs two rows with no text in common for "
            "a batch. Give more varied pairs, or set sampler to random."
        )


def check_trainable(data, config: TrainConfig, family: str) -> tuple[str, str]:
    """The loss and sampler for a dataset (finetuner.data.dataset), once its shape is checked
    for them (see check_shape)."""
    import pyarrow.compute as pc

    loss_name, sampler = resolve_sampler(config, family, data.kind)
    labels = queries = documents = None
    if data.kind == "labeled":
        counts = pc.value_counts(data.table.column("label")).to_pylist()
        labels = {c["values"]: c["counts"] for c in counts}
    elif sampler == "no_duplicates":
        first, second = data.table.column_names[:2]
        queries = pc.count_distinct(data.table.column(first)).as_py()
        documents = pc.count_distinct(data.table.column(second)).as_py()
    check_shape(config, sampler, len(data), labels, queries, documents)
    return loss_name, sampler


def seed_everything(seed: int):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def epoch_batches(
    data, sampler: str, config: TrainConfig, generator, lengths=None
) -> list[list[int]]:
    """One epoch's batches of row indices; `lengths` (text rows) groups them by length."""
    if sampler == "class":
        labels = data.column("label")
        return samplers.class_batches(
            labels, config.batch_size, config.num_items_per_class, generator
        )
    window = config.length_grouping
    if sampler == "no_duplicates":
        rows = list(zip(*(data.column(c) for c in data.table.column_names[:2]), strict=True))
        return samplers.no_duplicate_batches(rows, config.batch_size, generator, lengths, window)
    return samplers.random_batches(len(data), config.batch_size, generator, lengths, window)


def text_lengths(data, model) -> list[int] | None:
    """Each row's characters of text (a proxy of its tokens), for text models; None for
    other models, whose inputs have a fixed size."""
    import pyarrow.compute as pc

    spec = model.spec
    if not spec.query_kind == spec.document_kind == "text" or data.kind == "labeled":
        return None
    columns = data.table.column_names[:2]
    total = pc.add(*(pc.utf8_length(data.table.column(c)) for c in columns))
    return total.to_pylist()


# The columns of a kind's rows that a batch embeds: the query side the first, the document
# side the others.
EMBEDDED_COLUMNS = {"labeled": 1, "pairs": 2, "scored": 2, "margins": 3}


def embed_column(model, column: int, rows: list[tuple], prepared: dict, device: str, buckets: int):
    """The embeddings of one column of a batch's rows, with gradients."""
    from finetuner.models import sides

    side = sides(model)[0 if column == 0 else 1]
    if column in prepared:  # media, decoded by a DataLoader worker
        return side.embed_prepared(prepared[column], device).float()
    return side.embed([r[column] for r in rows], device, buckets).float()


def loss_of(
    kind: str, loss_fn, embeddings: list, rows: list[tuple], device: str,
    label_ids: dict | None = None, parallel=None, mined: tuple | None = None,
):  # fmt: skip
    """The loss of a batch from its columns' embeddings (see finetuner.training.losses).

    In a parallel run (`parallel`, a finetuner.training.distributed.Context) it is the loss of
    the global batch, the rows of every process, in every process: a query has every
    process's documents (and mined hard negatives, `mined`) as negatives, as if one process
    had the whole batch. No rescaling
    is needed: the gather's backward pass sums the processes' identical gradients of a row
    (world x its gradient), and averaging the weights' gradients across the processes
    divides by world again."""
    import torch

    inputs = list(embeddings)
    if kind == "labeled":
        ids = label_ids or {label: i for i, label in enumerate(dict.fromkeys(r[1] for r in rows))}
        inputs.append(torch.tensor([ids[r[1]] for r in rows], device=device))
    elif kind == "scored":
        inputs.append(torch.tensor([r[2] for r in rows], device=device, dtype=torch.float32))
    elif kind == "margins":  # (query, positive, negative, margin): text only
        inputs.append(torch.tensor([r[3] for r in rows], device=device, dtype=torch.float32))
    if parallel is not None:
        inputs = [parallel.gather(tensor) for tensor in inputs]
    if mined is not None:  # (embeddings, texts) of the batch's mined hard negatives
        negatives, texts = mined
        if parallel is not None:  # every process's, and the rows they are masked against
            negatives = parallel.gather(negatives)
            rows = [r for part in parallel.gather_objects([r[:2] for r in rows]) for r in part]
            texts = [t for part in parallel.gather_objects(texts) for t in part]
        inputs += [negatives, _positive_negatives(rows, texts, device)]
    return loss_fn(*inputs)


def batch_loss(
    kind: str, model, loss_fn, rows: list[tuple], device: str, buckets: int, prepared: dict,
    label_ids: dict | None = None, parallel=None,
):  # fmt: skip
    """The loss of one batch of rows of a kind (see finetuner.training.losses); `prepared` holds the
    media columns' tensors (see finetuner.data.batches); `label_ids` numbers the labels of the
    whole data set (losses with class weights need the same id for a label in every batch);
    `parallel`: see loss_of. Pairs with mined hard negatives (text) carry them as a last value."""
    embeddings = [
        embed_column(model, column, rows, prepared, device, buckets)
        for column in range(EMBEDDED_COLUMNS[kind])
    ]
    mined = None
    if kind == "pairs" and len(rows[0]) > 2:
        from finetuner.models import sides

        texts = [text for r in rows for text in r[2]]
        # None mined here: no rows, but in the graph, so that a parallel run's gather of
        # them takes part in the backward pass in this process too.
        negatives = (
            sides(model)[1].embed(texts, device, buckets).float() if texts else (embeddings[1][:0])
        )
        mined = (negatives, texts)
    return loss_of(kind, loss_fn, embeddings, rows, device, label_ids, parallel, mined)


def _positive_negatives(rows: list[tuple], mined: list[str], device: str):
    """[i, j]: whether mined negative j of the batch is a positive of row i's query in this
    batch (another query's negative, here a positive): it must not count against row i."""
    import torch

    positives: dict[str, set] = {}
    for query, document, *_ in rows:
        positives.setdefault(query, set()).add(document)
    mask = torch.zeros(len(rows), len(mined), dtype=torch.bool)
    for i, row in enumerate(rows):
        own = positives[row[0]]
        for j, text in enumerate(mined):
            if text in own:
                mask[i, j] = True
    return mask.to(device)


@dataclass
class Position:
    """Where training stands: what a checkpoint saves besides weights and states."""

    step: int = 0
    epoch: int = 1  # the epoch being trained, from 1
    batch: int = 0  # batches of it done
    epoch_loss: float = 0.0
    epoch_steps: int = 0
    skipped: int = 0
    history: list = field(default_factory=list)  # each epoch's metrics
    monitors: dict = field(default_factory=dict)  # the callbacks' Monitor fields, by name


def _stateful(embedder, loss_fn, optimizers: list, scheduler) -> dict:
    """What a checkpoint saves and restores the state of, by name."""
    parts = {"model": embedder, "scheduler": scheduler}
    parts.update({f"optimizer{i}": opt for i, opt in enumerate(optimizers)})
    if loss_fn.module is not None and loss_fn.parameters():  # e.g. ArcFace's class weights
        parts["loss"] = loss_fn.module
    return parts


def _save(
    config, position: Position, epoch_generator, parts: dict, best: dict | None, parallel
) -> None:
    """Every process calls it (each gives its random states); process 0 writes."""
    from finetuner.training import checkpoints

    rng = checkpoints.gather_rng_states(parallel)
    if parallel is not None and not parallel.main:
        return
    state = {
        "position": asdict(position),
        "epoch_generator": epoch_generator,  # the sampler's state before the epoch's draws
        "rng": rng,  # each process's, by rank
        "best_model": best,  # the weights of the best epoch so far, when they are kept
        **{name: part.state_dict() for name, part in parts.items()},
    }
    checkpoints.save(config.checkpoint_dir, position.step, state)


def _resume(config, parts: dict):
    """The Position, epoch-start sampler state, random states and best epoch's weights of
    the newest complete checkpoint, with the weights and the optimizers' and scheduler's
    states loaded; None without one."""
    from finetuner.training import checkpoints

    state = checkpoints.latest(config.checkpoint_dir) if config.checkpoint_dir else None
    if state is None:
        return None
    for name, part in parts.items():
        part.load_state_dict(state[name])
    position = Position(**state["position"])
    print(
        f"resuming from the checkpoint at step {position.step} (epoch {position.epoch}, "
        f"batch {position.batch})",
        file=sys.stderr,
        flush=True,
    )
    return position, state["epoch_generator"], state["rng"], state.get("best_model")


def _copy_state(module) -> dict:
    """The module's weights, on the CPU (a copy kept aside takes no accelerator memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _epoch_metrics(model, embedder, pos: Position, eval_data, config, device) -> dict:
    """The epoch's mean training loss, and the retrieval metrics on the eval data."""
    from finetuner.evaluation.evaluate import evaluate_dataset

    metrics = {"epoch": pos.epoch, "train_loss": pos.epoch_loss / max(pos.epoch_steps, 1)}
    if eval_data is not None:
        metrics |= evaluate_dataset(model, eval_data, config.eval_k, device)
        embedder.train()  # encoding switched it to eval mode
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
    print(f"epoch {pos.epoch}: {shown}", file=sys.stderr, flush=True)
    return metrics


def _after_epoch(monitors: dict, metrics: dict, patience: int) -> tuple[bool, str]:
    """Update the monitors with an epoch's metrics: whether it is the best model so far,
    and why training stops early (empty: it goes on)."""
    best = "best_model" in monitors and monitors["best_model"].update(
        metrics[monitors["best_model"].metric], metrics["epoch"]
    )
    stopping = monitors.get("early_stopping")
    if stopping is None:
        return best, ""
    stopping.update(metrics[stopping.metric], metrics["epoch"])
    if stopping.wait < patience:
        return best, ""
    if stopping.best_epoch == 0:  # never beat the baseline
        return best, (
            f"{stopping.metric} has not beaten its baseline {stopping.best:g} in {patience} epochs"
        )
    return best, (
        f"{stopping.metric} has not improved by more than {stopping.min_delta:g} in {patience} "
        f"epochs (best {stopping.best:.4g} at epoch {stopping.best_epoch})"
    )


def _not_finite(pos: Position, loss: float, norm: float, config: TrainConfig) -> FinetunerError:
    """The error that stops training at a non-finite loss or gradient, before the weights
    take it in."""
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
    saved = "; the last checkpoint is kept" if config.checkpoint_dir else ""
    return FinetunerError(
        f"training stopped at step {pos.step + 1} (epoch {pos.epoch}, batch {pos.batch}): "
        f"{what}, not a finite number. Nothing is exported{saved}. Lower learning_rate "
        f"(now {config.learning_rate:g}), or look for extreme values in the data."
    )


def _share(batches: list, parallel) -> list:
    """This process's batches of an epoch: all of them, or its share in a parallel run."""
    return batches if parallel is None else parallel.shard(batches)


def wise_ft(module, pretrained: dict, alpha: float) -> None:
    """Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): blend the fine-tuned
    weights with the pretrained ones, which keeps more of what pretraining knew. Integer
    buffers (e.g. BatchNorm's counters) are kept as trained."""
    import torch

    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(alpha * tensor + (1 - alpha) * pretrained[name].to(tensor.device))


def _optimizer(config: TrainConfig, embedder):
    options = dict(config.optimizer_options)
    if "weight_decay" in optimizer_options(config.optimizer):
        options.setdefault("weight_decay", config.weight_decay)  # none on biases, LayerNorm
    decay = None if config.layerwise_decay == NONE else config.layerwise_decay
    return build_optimizer(config.optimizer, embedder, config.learning_rate, options, decay)


def _scheduler(config: TrainConfig, optimizer, total: int, steps_per_epoch: int):
    """The schedule over the training's batch steps, or its epochs (`scheduler_step`)."""
    steps = total
    if config.scheduler_step == "epoch":
        steps = steps_for("epoch", steps_per_epoch, config.epochs)
    warmup = config.num_warmup_steps
    if warmup == AUTO:  # the ratio applies to batch steps; epochs warm up only when told
        warmup = math.ceil(total * config.warmup_ratio) if config.scheduler_step == "batch" else 0
    return build_scheduler(config.scheduler, optimizer, warmup, steps, config.scheduler_options)


def train(
    model,
    data,
    config: TrainConfig,
    device: str | None = None,
    on_step=None,
    eval_data=None,
    parallel=None,
) -> dict:
    """Fine-tune `model` (from finetuner.models) in place on a dataset (finetuner.data.dataset,
    or a list of pairs); returns training metrics, with each epoch's in "history".

    With `eval_data` (and `config.evaluate_every_epoch`), the evaluation's metrics are
    computed after every epoch, and the best-model and early-stopping callbacks can watch
    them (see finetuner.training.callbacks).

    `parallel` (a finetuner.training.distributed.Context) trains this process's share of the batches
    of a data-parallel run; only its first process prints and writes checkpoints.

    With `config.checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps
    and at each epoch's end, and training resumes from the newest complete one: on the
    CPU, with the same seed, the weights come out bit-identical to an uninterrupted run.
    `on_step(step)` is called after each optimizer step."""
    if parallel is None or parallel.main:
        return _train(model, data, config, device, on_step, eval_data, parallel)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        return _train(model, data, config, device, on_step, eval_data, parallel)


def _train(model, data, config, device, on_step, eval_data, parallel) -> dict:
    import torch

    from finetuner.data.batches import batch_loader, media_columns
    from finetuner.data.dataset import as_dataset
    from finetuner.models import sides
    from finetuner.training import checkpoints, fast_path

    data = as_dataset(data)
    config = config.validate().resolved(model.spec.family)
    if eval_data is not None and config.evaluate_every_epoch:
        eval_data = as_dataset(eval_data)
    else:
        eval_data = None
    monitors = config.monitors(eval_data.kind if eval_data is not None else None)
    loss_name, sampler = check_trainable(data, config, model.spec.family)
    if parallel is not None:
        device = parallel.device
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = seed_everything(config.seed)
    adapted = lora.wrap(model, config) if config.lora_r else None  # before the optimizer
    embedder = model.embedder.to(device).train()
    columns = media_columns(data.kind, sides(model))
    # Before the optimizer and a data-parallel wrapper take the weights: CUDA only.
    last = fast_path.channels_last(embedder, columns, device)
    # WiSE-FT needs the weights training starts from (before any checkpoint is loaded).
    pretrained = _copy_state(embedder) if config.wiseft_alpha < 1 else None
    label_ids = None
    if data.kind == "labeled":
        label_ids = {label: i for i, label in enumerate(dict.fromkeys(data.column("label")))}
    if getattr(data, "has_negatives", False) and loss_name != HARD_NEGATIVES_LOSS:
        raise FinetunerError(
            f"parameter loss: the train data carries mined hard negatives, which train with "
            f"{HARD_NEGATIVES_LOSS} only, not {loss_name}; set loss to auto or "
            f"{HARD_NEGATIVES_LOSS}, or hard_negatives to 0."
        )
    loss_fn = build_loss(
        loss_name, model, data.kind, config.loss_options, config.miner, config.miner_options,
        embedding_dim=model.spec.output_dim, num_classes=len(label_ids or ()) or None,
    ).to(device)  # fmt: skip
    if config.matryoshka_dims:  # the loss at each width (finetuner.training.matryoshka)
        loss_fn = matryoshka.wrap(
            loss_fn, data.kind, config.matryoshka_dims, config.matryoshka_weights,
            model.spec.output_dim,
        )  # fmt: skip

    # Samplers other than random make a few more or fewer batches in some epochs; the
    # schedule follows the first.
    lengths = text_lengths(data, model) if config.length_grouping > 1 else None
    buckets = config.length_buckets or (1 if lengths is not None else 2)
    epoch_generator = generator.get_state()
    epoch = _share(epoch_batches(data, sampler, config, generator, lengths), parallel)
    if not epoch:
        raise FinetunerError(
            f"the {sampler} sampler makes no batch of two or more rows of these "
            f"{len(data)} rows{' in this process' if parallel is not None else ''}; give more "
            "data" + (", or set sampler to random." if sampler != "random" else ".")
        )
    total = len(epoch) * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    optimizers = [_optimizer(config, embedder)]
    trainable = [p for g in optimizers[0].param_groups for p in g["params"]]  # not frozen ones

    def forward(rows, prepared):
        return batch_loss(
            data.kind, model, loss_fn, rows, device, buckets, prepared, label_ids, parallel
        )

    step, cached = forward, None
    owned = [loss_fn.module] if loss_fn.parameters() else []
    if config.mini_batch_size:  # GradCache: forward and backward passes in mini-batches
        cached = gradcache.GradCache(
            embedder, model.spec.family, EMBEDDED_COLUMNS[data.kind], config.mini_batch_size,
            device,
            embed=lambda column, rows, prepared: embed_column(
                model, column, rows, prepared, device, buckets
            ),
            loss=lambda embeddings, rows: loss_of(
                data.kind, loss_fn, embeddings, rows, device, label_ids, parallel
            ),
            parallel=parallel, modules=[embedder, *owned],
        )  # fmt: skip
    elif parallel is not None:  # from process 0's weights; gradients averaged in backward
        step = parallel.data_parallel([embedder, *owned], forward)
    if loss_fn.parameters():  # a loss with its own weights gets its own optimizer
        optimizers.append(
            build_optimizer(
                config.loss_optimizer or config.optimizer,
                loss_fn.parameters(),
                config.loss_learning_rate,
                config.loss_optimizer_options,
                parameter="loss_optimizer",
            )
        )
    scheduler = _scheduler(config, optimizers[0], total, len(epoch))
    print(
        f"training on {len(data)} {data.kind} rows: {loss_name}, {sampler} batches of up to "
        f"{config.batch_size}"
        + (f" in mini-batches of {config.mini_batch_size} (GradCache)" if cached else "")
        + f", {total} steps on {device}"
        + (f", matryoshka at {config.matryoshka_dims}" if config.matryoshka_dims else ""),
        file=sys.stderr,
        flush=True,
    )
    # bf16 autocast on GPUs; full precision on the CPU, where bf16 is slower.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    progress = Progress(total, every=config.log_every)
    world = parallel.world if parallel is not None else 1
    saving = bool(config.checkpoint_dir)  # in every process: each gives its random states
    workers = config.num_workers
    if workers is None:  # starting workers costs more than decoding a few hundred items
        workers = min(2, os.cpu_count() or 1) if len(data) >= WORKERS_FROM_ROWS else 0
    pos, rng, best_state, stop = Position(), None, None, ""
    parts = _stateful(embedder, loss_fn, optimizers, scheduler)
    resumed = _resume(config, parts)
    if resumed:
        pos, epoch_generator, rng, best_state = resumed
        generator.set_state(epoch_generator)
        progress.resume_at(pos.step)
        monitors = {name: callback.Monitor(**fields) for name, fields in pos.monitors.items()}
    last_loss = float("nan")  # the last step's loss (a parallel run's global)
    while pos.epoch <= config.epochs and pos.step < total:
        if pos.epoch > 1 or resumed:  # the epoch's batches, from the sampler's state
            epoch_generator = generator.get_state()
            epoch = _share(epoch_batches(data, sampler, config, generator, lengths), parallel)
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        if rng is not None:  # resumed: the random states of the moment of the checkpoint
            checkpoints.set_rng_states(
                checkpoints.own_rng_states(rng, parallel.rank if parallel is not None else 0)
            )
            rng, resumed = None, None
        pin = fast_path.on_cuda(device)
        loader = batch_loader(data, epoch[pos.batch :], columns, workers, seed, pin)
        for rows, prepared, bad in loader:
            prepared = fast_path.to_device(prepared, device, last)
            for message in bad:  # counted and skipped; preprocess has checked every item
                print(f"skipped a bad item: {message}", file=sys.stderr, flush=True)
            pos.skipped += len(bad)
            pos.batch += 1
            usable = len(rows) >= 2
            if parallel is not None:  # every process steps, or none: gradients are averaged
                usable = parallel.all(usable)
            if not usable:
                continue
            if cached is not None:
                loss = cached(rows, prepared, autocast)  # its backward passes done
            else:
                with autocast:
                    loss = step(rows, prepared)
                loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            loss_value = loss.item()  # a parallel run's is the global batch's (loss_of)
            last_loss = loss_value
            # Before the optimizer step, so the weights, and the checkpoints, stay finite.
            # The loss (the global batch's) and the averaged gradients are the same in every
            # process of a parallel run, so all of them stop together.
            if not (math.isfinite(loss_value) and math.isfinite(float(norm))):
                raise _not_finite(pos, loss_value, float(norm), config)
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if config.scheduler_step == "batch":
                scheduler.step()
            pos.step += 1
            pos.epoch_loss += loss_value
            pos.epoch_steps += 1
            progress.step(
                pos.step, len(rows) * world, epoch=pos.epoch, loss=loss_value,
                lr=scheduler.get_last_lr()[0],
            )  # fmt: skip
            if on_step:
                on_step(pos.step)
            if pos.step >= total:
                break
            if saving and pos.step % config.checkpoint_every == 0:
                pos.monitors = {name: asdict(m) for name, m in monitors.items()}
                _save(config, pos, epoch_generator, parts, best_state, parallel)
        metrics = _epoch_metrics(model, embedder, pos, eval_data, config, device)
        pos.history.append(metrics)
        is_best, stop = _after_epoch(monitors, metrics, config.early_stopping_patience)
        if is_best:
            best_state = _copy_state(embedder)
        if stop:
            print(f"early stopping after epoch {pos.epoch}: {stop}", file=sys.stderr, flush=True)
            break
        pos.epoch, pos.batch, pos.epoch_loss, pos.epoch_steps = pos.epoch + 1, 0, 0.0, 0
        if config.scheduler_step == "epoch":
            scheduler.step()
        if saving and pos.step < total and pos.epoch <= config.epochs:
            pos.monitors = {name: asdict(m) for name, m in monitors.items()}
            _save(config, pos, generator.get_state(), parts, best_state, parallel)
    best = monitors.get("best_model")
    if best is not None and best_state is not None and best.best_epoch != pos.history[-1]["epoch"]:
        embedder.load_state_dict(best_state)
        print(
            f"keeping the model of epoch {best.best_epoch}, the best by {best.metric} "
            f"({best.best:.4g})",
            file=sys.stderr,
            flush=True,
        )
    if pretrained is not None:
        wise_ft(embedder, pretrained, config.wiseft_alpha)
    if last:
        fast_path.restore(embedder)
    if adapted is not None:  # the adapter kept on the model; a plain model from here on
        lora.merge(model, adapted)
    embedder.eval()
    return {
        "steps": pos.step,
        "samples_per_second": progress.samples_per_second,
        "final_loss": last_loss,
        "history": pos.history,
        "epochs": len(pos.history),
        "best_epoch": best.best_epoch if best is not None else len(pos.history),
        "stopped_early": stop,
        "loss": loss_name,
        "sampler": sampler,
        "items_skipped": pos.skipped,
        "config": config.model_dump(),
    }
