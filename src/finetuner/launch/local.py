"""Run the `finetune` pipeline on this machine with kfp.local: `finetuner run` and `fit`.

Every documented bad input is caught here first, in-process, so it fails in seconds with
one clear message and before anything is written; the steps validate again on a cluster.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.parameters import Finetune, struct_options, training_options
from finetuner.parameters.generate import args_section, keywords, kfp_arguments


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
    from finetuner.catalogue import ModelSpec
    from finetuner.data import beir, formats
    from finetuner.data.pairs import check_val_split
    from finetuner.export.model_registry import check_registry
    from finetuner.export.promote import check_metric_name, run_output
    from finetuner.orchestration.steps import catalogue_lookup
    from finetuner.synthesis import hard_negatives
    from finetuner.training import lora, matryoshka
    from finetuner.training.loop import TrainConfig

    unknown = set(params) - set(Finetune.model_fields)
    if unknown:
        raise FinetunerError(f"unknown parameter(s): {', '.join(sorted(unknown))}.")
    params = {**Finetune.defaults(), **{k: v for k, v in params.items() if v is not None}}
    check_locations(params)
    params["output_uri"] = params.get("output_uri") or default_output(params["model"])
    params = Finetune(**params).model_dump()  # every type and range
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
    # Every training option, the JSON-object ones too: each is checked before the run.
    config = TrainConfig(**training_options(params), **struct_options(params)).validate()
    check_choices(config)
    matryoshka.check(
        config.matryoshka_dims, config.matryoshka_weights, config.loss, spec["output_dim"]
    )
    lora.check(config, ModelSpec(**spec))
    check_metric_name(params["promotion_metric"])
    check_registry(params["model_registry_url"], params["registered_model_name"])
    opts = formats.options(params["data_options"])
    # BEIR data: train_data is a folder, and its qrels/test.tsv is eval data too.
    beir_files = None
    if beir.is_beir(params["train_data"], opts.format):
        beir.check_model(ModelSpec(**spec))
        beir_files = beir.locate(params["train_data"], params["eval_data"])
    has_eval = bool(beir_files.test if beir_files else params["eval_data"])
    check_val_split(params["val_split"], has_eval_data=has_eval)
    from finetuner.training.distributed import check_processes

    check_processes(params["gpu_count"])
    # Resolved here, so that this process knows where the export lands.
    params["output_uri"] = run_output(params["output_uri"], time.strftime("%Y%m%d-%H%M%S"))
    from finetuner.orchestration.trainjob import check as check_nodes

    check_nodes(int(params.get("num_nodes", 1)), params["output_uri"])
    # The output is claimed before any data is read: a second run with it fails here.
    owned = claim_output(params)
    try:
        if beir_files:
            check_beir(beir_files, ModelSpec(**spec), opts, config, params)
        for name in ("train_data", "eval_data"):
            uri = params.get(name)
            if uri and not beir_files:
                held_out = name == "train_data" and not params["eval_data"]
                split = params["val_split"] if held_out else None
                role = "train" if name == "train_data" else "eval"
                kind = check_data(uri, ModelSpec(**spec), opts, config, split, role)
                if role == "train":
                    hard_negatives.check_options(config, ModelSpec(**spec), kind)
                # What the callbacks watch must be reported each epoch.
                config.monitors(kind if config.evaluate_every_epoch else None)
    except BaseException:
        release(params, owned)
        raise
    return params


def check_locations(params: dict) -> None:
    """Every URI parameter parses (finetuner.io.storage), and the data are files."""
    if not params.get("train_data"):
        raise FinetunerError("parameter train_data: required (a CSV path or s3:// URI).")
    from finetuner.data import beir
    from finetuner.data.formats import check_source

    # A BEIR folder's files are checked once data_options are (preflight).
    fmt = beir.declared_format(params.get("data_options"))
    folder = beir.is_beir(params["train_data"], fmt)
    for name in ("train_data", "eval_data"):
        if params.get(name) and not (folder and name == "train_data"):
            check_source(params[name], name)  # a data file that can be read
    for name in ("weights", "model_artifact"):
        if params.get(name):
            storage.check_uri(params[name], name, need_key=False)
    if params.get("output_uri"):
        storage.check_uri(params["output_uri"], "output_uri")


def local_run_id() -> str:
    """The id under which a run on this machine claims its output."""
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def claim_output(params: dict) -> bool:
    """Check and claim params["output_uri"] for this run (finetuner.io.claim), setting
    params["claim_id"]; whether this made the output's local folder."""
    from finetuner.io import claim

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
    from finetuner.io import claim

    claim.release(params["output_uri"], params["claim_id"])
    _remove_empty(params["output_uri"], made)


def makes_output(output: str | None) -> bool:
    """Whether a run with this output makes its local folder (None: the default, a new one)."""
    if not output:
        return True
    try:
        return not storage.is_s3(output) and not storage.local_path(output).exists()
    except FinetunerError:  # not a URI: preflight says so, naming the parameter
        return False


def _remove_empty(output: str, made: bool) -> None:
    if made:
        try:
            storage.local_path(output).rmdir()
        except OSError:  # not empty (checkpoints to resume from), or gone
            pass


def check_choices(config) -> None:
    """The named choices and their options, checked before the run: building them is
    what checks every option's name."""
    from finetuner.training import losses, optim

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


def check_data(
    uri: str, spec, opts, config, val_split: float | None = None, role: str = "train"
) -> str:
    """Read every row as preprocess will, so a bad row fails now, with its line, not minutes
    into the run; check the loss and sampler against the kind of data, that the held-out
    split (`val_split`, when the eval data comes from this file) leaves rows on both sides,
    and that the data has what training (`role` "train") or evaluation ("eval") needs of
    it. The data's kind."""
    from collections import Counter

    from finetuner.data import dataset
    from finetuner.training.loop import check_shape, resolve_sampler

    kind, rows = dataset.checked_rows(uri, spec, opts, dataset.BadRows(opts.max_bad_rows))
    groups, seen, labels, queries, documents = set(), set(), Counter(), set(), set()
    for values in rows:
        if hash(values) in seen:  # a duplicate, which preprocess drops
            continue
        seen.add(hash(values))
        groups.add(dataset.digest(dataset.group_of(kind, values)))
        if kind == "labeled":
            labels[values[1]] += 1
        else:
            queries.add(hash(values[0]))
            documents.add(hash(values[1]))
    if val_split:
        dataset.held_out(groups, val_split, 0)
    if role == "eval":
        dataset.check_eval_shape(uri, kind, len(seen), labels)
        return kind
    _, sampler = resolve_sampler(config, spec.family, kind)
    # Counts of the whole file: a held-out split only lowers them (preprocess checks the
    # train part after it).
    if kind == "labeled":
        check_shape(config, sampler, len(seen), labels)
    else:
        check_shape(config, sampler, len(seen), None, len(queries), len(documents))
    return kind


def check_beir(files, spec, opts, config, params: dict) -> None:
    """Read BEIR data as preprocess will (finetuner.data.beir), so a bad row fails now; check
    the train pairs against the loss and sampler, and the per-epoch metrics."""
    from finetuner.data import beir
    from finetuner.data.dataset import BadRows
    from finetuner.training.loop import check_shape, resolve_sampler

    bad = BadRows(opts.max_bad_rows)
    read = beir.read(files, opts, bad, params["val_split"], params["seed"])
    _, sampler = resolve_sampler(config, spec.family, "pairs")
    queries = len({q for q, _ in read.pairs})
    documents = len({d for _, d in read.pairs})
    check_shape(config, sampler, len(read.pairs), None, queries, documents)
    config.monitors("graded" if config.evaluate_every_epoch else None)


def run_locally(
    pipeline, params: dict, pipeline_root: str | None = None, images: tuple | None = None
) -> dict:
    """Run a pipeline with kfp.local; the manifest of the export it published at
    params["output_uri"]. Without `images`, every step runs in this environment
    (SubprocessRunner). With `images` (CPU image, GPU image), the pipeline is compiled against
    them and each step runs in its image, hardened, as on a cluster (finetuner.launch.containers).
    A failed step's own error is the run's (finetuner.orchestration.failures)."""
    import sys
    from contextlib import nullcontext

    from kfp import local

    from finetuner.launch import containers
    from finetuner.orchestration.failures import FAILURE_FILE, step_failure

    root = os.path.abspath(pipeline_root or tempfile.mkdtemp(prefix="finetuner-kfp-"))
    # Absolute: the steps run in folders of their own. Under the root, which the steps'
    # containers see at the same path.
    record = Path(root, "step-failure.json")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    saved = os.environ.get(FAILURE_FILE)
    os.environ[FAILURE_FILE] = str(record)  # the steps inherit this process's environment
    try:
        # A train step across nodes starts its TrainJob's containers through the Docker API.
        across_nodes = int(params.get("num_nodes", 1)) > 1
        with containers.docker_api() if images or across_nodes else nullcontext():
            if across_nodes:
                from finetuner.components import GPU_IMAGE
                from finetuner.orchestration.cluster import TRAINJOB_IMAGE_ENV

                os.environ.setdefault(TRAINJOB_IMAGE_ENV, GPU_IMAGE)
            if images:
                containers.check_images(*images)
                os.chmod(root, 0o777)  # the steps' user writes their outputs here
                pipeline = compiled(pipeline, Path(root), images)
                runner = containers.runner()
            else:
                runner = local.SubprocessRunner(use_venv=False)
            local.init(runner=runner, pipeline_root=root)
            with warnings.catch_warnings(), plain_kfp_logs():
                # Our step images are not named "python*", which kfp.local warns of.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*")
                # The cluster's resource requests and Kubernetes settings
                # (finetuner.orchestration.cluster).
                warnings.filterwarnings(
                    "ignore", message=".*no effect in the current local runner.*"
                )
                without_retries(pipeline)(**params)
    except RuntimeError as exc:
        print(f"The step outputs are kept in {root}.", file=sys.stderr, flush=True)
        raise step_failure(exc, record) from None
    finally:
        if saved is None:
            os.environ.pop(FAILURE_FILE, None)
        else:
            os.environ[FAILURE_FILE] = saved
    manifest = storage.read_text(storage.join(params["output_uri"], "manifest.json"))
    if pipeline_root is None:
        shutil.rmtree(root, ignore_errors=True)
    return json.loads(manifest)


def compiled(pipeline, folder: Path, images: tuple):
    """The pipeline as a cluster gets it: compiled to YAML against the step images, as
    `finetuner compile --image --gpu-image` writes it, and loaded back."""
    from kfp import components

    from finetuner.launch.compile import compile_pipeline

    path = compile_pipeline(pipeline, folder / f"{pipeline.name}.yaml", *images)
    return components.load_component_from_file(str(path))


@contextmanager
def plain_kfp_logs():
    """kfp.local colours its log lines whatever they go to: not when stderr is no terminal."""
    import sys

    from kfp.local import logging_utils

    colours = dict(vars(logging_utils.Color))
    if not sys.stderr.isatty():
        for name, value in colours.items():
            if isinstance(value, str) and value.startswith("\033"):
                setattr(logging_utils.Color, name, "")
    try:
        yield
    finally:
        for name, value in colours.items():
            if isinstance(value, str) and value.startswith("\033"):
                setattr(logging_utils.Color, name, value)


def run_pipeline(
    params: dict, pipeline_root: str | None = None, images: tuple | None = None
) -> Run:
    """Run the finetune pipeline through kfp.local: in this environment, or with `images`
    (CPU image, GPU image) each step in its image (see run_locally)."""
    if images:  # before the output is claimed
        from finetuner.launch.containers import check_uris

        check_uris(
            params,
            ("train_data", "eval_data", "weights", "model_artifact", "output_uri"),
            required=("output_uri",),
        )
    made = makes_output(params.get("output_uri"))
    params = preflight(params)
    from finetuner.export.publish import artifact_uris
    from finetuner.pipelines.finetune import finetune

    output = params["output_uri"]
    try:
        manifest = run_locally(finetune, kfp_arguments(Finetune, params), pipeline_root, images)
    except BaseException:
        release(params, made)  # checkpoints stay for a rerun to resume from
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
    from finetuner.training.callbacks import callback_params

    from_callbacks = callback_params(callbacks or [])
    for name, value in from_callbacks.items():
        if name in options and options[name] != value:
            raise FinetunerError(
                f"parameter {name}: {options[name]!r} disagrees with the callbacks' {value!r}."
            )
    params = {"model": model, "train_data": train_data, "output_uri": output}
    return run_pipeline(params | from_callbacks | options)


# fit's keywords are the finetune pipeline's parameters: its signature and docstring show
# each with its default and description (finetuner.parameters).
_FIT_OWN = ("model", "train_data", "output_uri")
fit.__signature__ = inspect.Signature(
    [
        *list(inspect.signature(fit).parameters.values())[:4],
        *keywords(Finetune, skip=_FIT_OWN),
    ],
    return_annotation=Run,
)
fit.__doc__ = f"""Fine-tune `model` (a catalogue name) on `train_data`, as Finetuner's `fit`,
through the finetune pipeline; `output` is where the model is exported (default:
runs/<model>-<time>). `callbacks` are those of finetuner.training.callbacks (EvaluationCallback,
BestModelCheckpoint, EarlyStopping, TrainingCheckpoint, WiSEFTCallback); a keyword given
too must agree with them. Any other keyword is refused.

{args_section(Finetune, skip=_FIT_OWN)}
"""
