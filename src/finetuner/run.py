"""Run the `finetune` pipeline on this machine with kfp.local: `finetuner run` and `fit`.

Every documented bad input is caught here first, in-process, so it fails in seconds with
one clear message and before anything is written; the steps validate again on a cluster.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from finetuner import storage
from finetuner.defaults import CLUSTER_DEFAULTS
from finetuner.defaults import PIPELINE_DEFAULTS as DEFAULTS
from finetuner.errors import FinetunerError


@dataclass
class Run:
    """The outcome of a pipeline run, like Finetuner's Run object."""

    status: str
    artifact_uri: str
    summary: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """{"before": {...}, "after": {...}}, keyed like `ndcg@10`."""
        return self.summary.get("metrics", {})


def default_output(model: str) -> str:
    return str(Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def preflight(params: dict) -> dict:
    """Validate all parameters and the data and output locations; the completed params."""
    from finetuner import formats
    from finetuner.catalogue import ModelSpec
    from finetuner.data import check_val_split
    from finetuner.promote import check_metric_name, run_output
    from finetuner.steps import CHOICES, catalogue_lookup, train_choices
    from finetuner.train import TrainConfig

    unknown = set(params) - set(DEFAULTS) - set(CLUSTER_DEFAULTS) - {"train_data", "output_uri"}
    if unknown:
        raise FinetunerError(f"unknown parameter(s): {', '.join(sorted(unknown))}.")
    params = {**DEFAULTS, **CLUSTER_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    check_locations(params)
    spec = catalogue_lookup(
        params["model"],
        params["pooler"],
        params["pooler_p"],
        params["pooler_eps"],
        params["max_length"],
        params["loss"],
        params["model_options"],
        params["weights"],
        params["model_artifact"],
    )
    config = TrainConfig(
        loss=params["loss"],
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        sampler=params["sampler"],
        num_items_per_class=params["num_items_per_class"],
        **train_choices({k: params[k] for k in CHOICES}),
    ).validate()
    check_choices(config)
    check_metric_name(params["promotion_metric"])
    opts = formats.options(params["data_options"])
    check_val_split(params["val_split"], has_eval_data=bool(params["eval_data"]))
    from finetuner.distributed import check_processes

    check_processes(params["gpu_count"])
    if params["eval_k"] < 1:
        raise FinetunerError(f"parameter eval_k: must be >= 1, got {params['eval_k']}.")
    params["output_uri"] = params.get("output_uri") or default_output(params["model"])
    # Resolved here, so that this process knows where the export lands.
    params["output_uri"] = run_output(params["output_uri"], time.strftime("%Y%m%d-%H%M%S"))
    # The output is claimed before any data is read: a second run with it fails here.
    owned = claim_output(params)
    try:
        for name in ("train_data", "eval_data"):
            uri = params.get(name)
            if uri:
                held_out = name == "train_data" and not params["eval_data"]
                split = params["val_split"] if held_out else None
                kind = check_data(uri, ModelSpec(**spec), opts, config, split)
                # What the callbacks watch must be reported each epoch.
                config.monitors(kind if config.evaluate_every_epoch else None)
    except BaseException:
        release(params, owned)
        raise
    return params


def check_locations(params: dict) -> None:
    """Every URI parameter parses (finetuner.storage), and the data are files."""
    if not params.get("train_data"):
        raise FinetunerError("parameter train_data: required (a CSV path or s3:// URI).")
    for name in ("train_data", "eval_data"):
        if params.get(name):
            storage.check_file(params[name], name)
    for name in ("weights", "model_artifact"):
        if params.get(name):
            storage.check_uri(params[name], name, need_key=False)
    if params.get("output_uri"):
        storage.check_uri(params["output_uri"], "output_uri")


def local_run_id() -> str:
    """The id under which a run on this machine claims its output."""
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def claim_output(params: dict) -> bool:
    """Check and claim params["output_uri"] for this run (finetuner.claim), setting
    params["claim_id"]; whether this made the output's local folder."""
    from finetuner import claim

    output = params["output_uri"]
    made = not storage.is_s3(output) and not storage.local_path(output).exists()
    params["claim_id"] = params.get("claim_id") or local_run_id()
    try:
        claim.claim_output(output, params["claim_id"], params["force_claim"])
    except BaseException:
        _remove_empty(output, made)
        raise
    return made


def release(params: dict, made: bool) -> None:
    """After a failed run: drop its claim, and the output folder if it made it and left it
    empty."""
    from finetuner import claim

    claim.release(params["output_uri"], params["claim_id"])
    _remove_empty(params["output_uri"], made)


def _remove_empty(output: str, made: bool) -> None:
    if made:
        try:
            storage.local_path(output).rmdir()
        except OSError:  # not empty (checkpoints to resume from), or gone
            pass


def check_choices(config) -> None:
    """The named choices and their options, checked before the run: building them is
    what checks every option's name."""
    from finetuner import losses, optim

    chosen = [("optimizer", config.optimizer, config.optimizer_options)]
    if config.loss_optimizer or config.loss_optimizer_options:
        name = config.loss_optimizer or config.optimizer
        chosen.append(("loss_optimizer", name, config.loss_optimizer_options))
    for parameter, name, options in chosen:
        name = optim.check_optimizer(name, parameter)
        unknown = set(options) - set(optim.optimizer_options(name))
        if unknown:
            raise FinetunerError(
                f"parameter {parameter}_options: {name} has no option "
                f"{', '.join(sorted(unknown))}. Its options: "
                f"{', '.join(optim.optimizer_options(name))}."
            )
    optim.check_scheduler(config.scheduler)
    optim.steps_for(config.scheduler_step, 1, 1)
    losses.build_miner(config.miner or None, config.miner_options)


def check_data(uri: str, spec, opts, config, val_split: float | None = None) -> str:
    """Read every row as preprocess will, so a bad row fails now, with its line, not minutes
    into the run; check the loss and sampler against the kind of data, and that the
    held-out split (`val_split`, when the eval data comes from this file) leaves rows on
    both sides. The data's kind."""
    from finetuner import dataset, samplers
    from finetuner.losses import loss_for

    kind, rows = dataset.checked_rows(uri, spec, opts, dataset.BadRows(opts.max_bad_rows))
    groups = {dataset.digest(dataset.group_of(kind, values)) for values in rows}
    if val_split:
        dataset.held_out(groups, val_split, 0)
    loss_for(spec.family, config.loss, kind)
    samplers.check_sampler(config.sampler, kind)
    return kind


def run_locally(pipeline, params: dict, pipeline_root: str | None = None) -> dict:
    """Run a pipeline with kfp.local's SubprocessRunner in this environment; the manifest
    of the export it published at params["output_uri"]."""
    from kfp import local

    root = pipeline_root or tempfile.mkdtemp(prefix="finetuner-kfp-")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root)
    try:
        with warnings.catch_warnings():
            # Our step images are not named "python*"; they run here as plain subprocesses.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # The cluster's resource requests and Kubernetes settings (finetuner.cluster).
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            without_retries(pipeline)(**params)
    except RuntimeError as exc:
        raise FinetunerError(
            f"the pipeline failed ({exc}); the failing step's log is above. "
            f"Step outputs are kept in {root}."
        ) from None
    manifest = storage.read_text(storage.join(params["output_uri"], "manifest.json"))
    if pipeline_root is None:
        shutil.rmtree(root, ignore_errors=True)
    return json.loads(manifest)


def run_pipeline(params: dict, pipeline_root: str | None = None) -> Run:
    """Run the finetune pipeline through kfp.local in this environment."""
    params = preflight(params)
    from finetuner.export import artifact_uris
    from finetuner.pipelines.finetune import finetune

    output = params["output_uri"]
    try:
        manifest = run_locally(finetune, params, pipeline_root)
    except BaseException:
        release(params, made=False)  # checkpoints stay for a rerun to resume from
        raise
    summary = {
        "metrics": {k: manifest["metrics"][k] for k in ("before", "after")},
        "artifacts": artifact_uris(output, manifest),
        "params": params,
    }
    return Run(status="FINISHED", artifact_uri=output, summary=summary)


def without_retries(pipeline):
    """A copy of the pipeline whose steps do not retry. On a cluster a retry outlives an
    evicted or preempted pod; here a failure repeats itself, after minutes of backoff."""
    import copy

    local = copy.deepcopy(pipeline)
    for task in local.component_spec.implementation.graph.root.dag.tasks.values():
        task.ClearField("retry_policy")
    return local


def fit(
    model: str,
    train_data: str,
    output: str | None = None,
    callbacks: list | None = None,
    **options,
) -> Run:
    """Fine-tune `model` on `train_data`, as Finetuner's `fit`: options are the pipeline's
    parameters (eval_data, val_split, loss, epochs, batch_size, learning_rate, pooler, ...;
    see `finetuner run --help`). `callbacks` are those of finetuner.callback
    (EvaluationCallback, BestModelCheckpoint, EarlyStopping, TrainingCheckpoint,
    WiSEFTCallback); an option given too must agree with them. `force_claim=True` takes
    `output` over from a run that claimed it and is no longer running."""
    from finetuner.callback import callback_params

    from_callbacks = callback_params(callbacks or [])
    for name, value in from_callbacks.items():
        if name in options and options[name] != value:
            raise FinetunerError(
                f"parameter {name}: {options[name]!r} disagrees with the callbacks' {value!r}."
            )
    params = {"model": model, "train_data": train_data, "output_uri": output}
    return run_pipeline(params | from_callbacks | options)
