"""The pipeline's steps as plain functions: each KFP component calls exactly one.

Inputs are values, URIs and local artifact paths, so the steps are tested here directly,
without KFP.
"""

from __future__ import annotations

from pathlib import Path

from finetuner.catalogue import ModelSpec, lookup
from finetuner.training.losses import loss_for


def catalogue_lookup(
    model: str,
    pooler: str = "auto",
    pooler_p: float | str = "auto",
    pooler_eps: float | str = "auto",
    max_length: int | str = "auto",
    loss: str = "auto",
    model_options: dict | None = None,
    weights: str = "",
    model_artifact: str = "",
) -> dict:
    """Validate every choice before any data is read or GPU used; the ModelSpec as a dict.

    pooler, pooler_p, pooler_eps and max_length may be auto (the model's own), and may come
    as text, as KFP hands them over. With `model_artifact` (a previous run's export),
    training continues from its model."""
    from finetuner.catalogue.weights import continue_from
    from finetuner.errors import FinetunerError
    from finetuner.io import storage
    from finetuner.parameters import AUTO
    from finetuner.parameters.declared import ModelParameters

    chosen = ModelParameters.from_strings(
        dict(pooler=pooler, pooler_p=pooler_p, pooler_eps=pooler_eps, max_length=max_length)
    )
    given = {k: None if v == AUTO else v for k, v in chosen.model_dump().items()}
    for name, uri in (("weights", weights), ("model_artifact", model_artifact)):
        if uri:
            storage.check_uri(uri, name, need_key=False)
    if weights and model_artifact:
        raise FinetunerError(
            "parameters weights and model_artifact: give one; a run starts from pretrained "
            "weights or continues from an export, not both."
        )
    spec = lookup(
        model, given["pooler"], given["pooler_p"], given["pooler_eps"], given["max_length"],
        model_options, resolve_weights=not model_artifact, weights=weights,
    )  # fmt: skip
    if model_artifact:
        spec = continue_from(spec, model_artifact)
    loss_for(spec.family, loss)
    return spec.model_dump()


def claim_output(output_uri: str, run_id: str, claim_id: str, force: bool) -> str:
    """Check output_uri and claim it (finetuner.io.claim) under claim_id, or else the run's id;
    the id it is held under. `{run_id}` in output_uri is the run's id."""
    from finetuner.export.promote import run_output
    from finetuner.io import claim

    return claim.claim_output(run_output(output_uri, run_id), claim_id or run_id, force)


def check_claim(output_uri: str, run_id: str, claim_id: str) -> None:
    """Fail unless the output is still claimed under claim_id: a step writes there only then."""
    from finetuner.export.promote import run_output
    from finetuner.io import claim

    claim.check_held(run_output(output_uri, run_id), claim_id)


def synthesize(
    query_data: str,
    corpus_data: str,
    relation_miner: str,
    cross_encoder: str,
    relation_miner_weights: str,
    cross_encoder_weights: str,
    num_relations: int,
    max_length: int | str,
    data_options: dict,
    seed: int,
    output_uri: str,
    report_out: str,
) -> str:
    """Synthesize (query, positive, negative, margin) rows from queries and a corpus into
    `<output_uri>/synthesized/margins.parquet`, beside the model they train, and a Markdown
    report; the rows' URI, for preprocess. A retried step writes them again."""
    from finetuner.io import storage
    from finetuner.parameters import AUTO
    from finetuner.synthesis.synthesize import DEFAULT_MAX_LENGTH, SynthesisModels
    from finetuner.synthesis.synthesize import synthesize as run_synthesis

    # auto: the synthesis's own, as `finetuner synthesize` uses it
    max_length = DEFAULT_MAX_LENGTH if max_length == AUTO else int(float(max_length))

    models = SynthesisModels(
        relation_miner, cross_encoder, relation_miner_weights, cross_encoder_weights
    )
    result = run_synthesis(
        query_data, corpus_data, models, int(num_relations),
        storage.join(output_uri, SYNTHESIZED), max_length=max_length,
        data_options=data_options, seed=int(seed), overwrite=True,
    )  # fmt: skip
    Path(report_out).write_text(result.report())
    return result.output


# Where the synthesize step puts its rows, under the run's output_uri.
SYNTHESIZED = "synthesized/margins.parquet"


def preprocess(
    model_spec: dict,
    train_data: str,
    eval_data: str,
    val_split: float,
    seed: int,
    data_options: dict,
    train_out: str,
    eval_out: str,
    report_out: str,
) -> dict:
    """Read and check the data (CSV, JSONL or Parquet), drop duplicates and bad rows (up to
    max_bad_rows), split; write Parquet datasets and a Markdown data report.

    Items that are not text (images, meshes, vectors) are checked and resolved here. A
    BEIR folder as train_data (finetuner.data.beir) gives train pairs and graded eval data."""
    from finetuner.data import beir, dataset, formats
    from finetuner.io import storage

    opts = formats.options(data_options)
    if beir.is_beir(train_data, opts.format):
        run = beir.preprocess
    else:
        for name, uri in (("train_data", train_data), ("eval_data", eval_data)):
            if uri:
                formats.check_source(uri, name)
        run = dataset.preprocess
    result = run(
        ModelSpec(**model_spec), train_data, eval_data, val_split, seed, opts, train_out, eval_out
    )
    Path(report_out).write_text(result.report(train_data, eval_data))
    # What the data was, for the model's lineage (the register step records it).
    sources = {
        name: {"uri": uri, "sha256": storage.sha256(uri)}
        for name, uri in (("train_data", train_data), ("eval_data", eval_data))
        if uri
    }
    return {**result.counts, "sources": sources}


def mine_negatives(
    model_spec: dict, train_path: str, options: dict, out_path: str, report_out: str
) -> dict:
    """Mine hard negatives for the train pairs (finetuner.synthesis.hard_negatives) when the
    training options turn it on (hard_negatives > 0), writing the pairs with their
    negatives to out_path; else pass the dataset through unchanged. The counts."""
    from finetuner.data import dataset
    from finetuner.synthesis import hard_negatives
    from finetuner.training.loop import TrainConfig

    config = TrainConfig.from_strings(options).validate()
    spec = ModelSpec(**model_spec)
    opts = hard_negatives.check_options(config, spec, dataset.load(train_path).kind)
    if opts is None:
        _link_tree(train_path, out_path)
        Path(report_out).write_text("# Hard negatives\n\nOff (hard_negatives is 0).\n")
        return {"hard_negatives": 0}
    mined = hard_negatives.mine_dataset(spec, train_path, out_path, opts, seed=config.seed)
    Path(report_out).write_text(mined.report())
    return mined.counts


def _link_tree(source: str, target: str) -> None:
    """The dataset folder at `source`, at `target` too: hard links where the file system
    allows, else copies."""
    import os
    import shutil

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def train(
    model_spec: dict,
    train_path: str,
    model_out: str,
    options: dict,
    output_uri: str = "",
    eval_path: str = "",
    num_gpus: int = 1,
) -> dict:
    """Fine-tune the pretrained backbone on the train dataset; save it to model_out, with
    each epoch's metrics in `history.json` beside it.

    `options` are the training options (finetuner.parameters.TrainOptions: loss, epochs,
    optimizer, callbacks ...), values or their text as KFP hands them over; those left out
    take their defaults, and auto ones are resolved by the training (see the result's
    "config"). With `eval_path`, the eval dataset is evaluated after every epoch. With
    output_uri, checkpoints go to `<output_uri>/checkpoints/`, a restarted step resumes
    from the newest, and they are deleted once the model is saved. With num_gpus > 1 it
    trains data-parallel in one process per GPU (finetuner.training.distributed), each started as
    `python -m` this module."""
    import json

    from finetuner import models
    from finetuner.data import dataset
    from finetuner.io import storage
    from finetuner.training import checkpoints, distributed, lora, matryoshka

    parallel = distributed.context()
    if num_gpus > 1 and parallel is None:  # this process starts the others through torchrun
        kwargs = dict(
            model_spec=model_spec, train_path=train_path, model_out=model_out,
            options=options, output_uri=output_uri, eval_path=eval_path, num_gpus=num_gpus,
        )  # fmt: skip
        # The processes run this module's entry point (below), which calls train() again.
        return distributed.launch(num_gpus, __name__, kwargs)
    from finetuner.training.loop import TrainConfig, check_trainable
    from finetuner.training.loop import train as run_training

    checkpoint_dir = storage.join(output_uri, "checkpoints") if output_uri else ""
    config = TrainConfig.from_strings(options, checkpoint_dir=checkpoint_dir).validate()
    spec = ModelSpec(**model_spec)
    data = dataset.load(train_path)
    # Before the model loads, which takes a while.
    loss_name, _ = check_trainable(data, config, spec.family)
    matryoshka.check(config.matryoshka_dims, config.matryoshka_weights, loss_name, spec.output_dim)
    lora.check(config, spec)
    eval_data = dataset.load(eval_path) if eval_path else None
    model = models.pretrained(spec)
    result = run_training(model, data, config, eval_data=eval_data, parallel=parallel)
    if parallel is None or parallel.main:
        model.save(model_out)
        lora.save_adapter(model, model_out)  # a LoRA run's adapter alone, beside the model
        Path(model_out, HISTORY_FILE).write_text(json.dumps(result["history"], indent=2))
        if config.checkpoint_dir:
            checkpoints.clear(config.checkpoint_dir)
    return result


def resolved(result: dict) -> dict:
    """What a training used for the options that were auto: the loss, the sampler, the
    learning rate, the epochs and the warm-up (the train step reports them)."""
    config = result["config"]
    return {
        "loss": result["loss"], "sampler": result["sampler"],
        "learning_rate": config["learning_rate"], "epochs": config["epochs"],
    }  # fmt: skip


HISTORY_FILE = "history.json"  # each epoch's metrics, in the train step's model folder


def loggable(metrics: dict) -> dict:
    """The metrics that KFP can record: finite numbers (its protobuf Struct refuses NaN
    and inf, which would fail the step after its work is done)."""
    import math

    return {
        name: value
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def evaluate(model_spec: dict, model_dir: str, eval_path: str, k: int, dims=()) -> dict:
    """Metrics of the pretrained and the fine-tuned model: {"before": ..., "after": ...}:
    retrieval metrics@k, or correlations for scored data, and those at each of the
    Matryoshka `dims` (ndcg@10@dim128); and the training's "history" of each epoch's
    metrics."""
    import json

    from finetuner import models
    from finetuner.data import dataset
    from finetuner.evaluation.evaluate import evaluate_dataset

    data = dataset.load(eval_path)
    dims = [int(d) for d in dims or ()]  # KFP may hand a list's numbers over as floats
    before = evaluate_dataset(models.pretrained(ModelSpec(**model_spec)), data, k, dims=dims)
    after = evaluate_dataset(models.load(model_dir), data, k, dims=dims)
    history_path = Path(model_dir, HISTORY_FILE)
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    return {
        "k": k, "kind": data.kind, "rows": len(data), "before": before, "after": after,
        "history": history,
    }  # fmt: skip


def evaluation_html(metrics: dict) -> str:
    """The evaluate step's report: before/after metrics, and each epoch's as line charts."""
    from finetuner.evaluation.plots import history_svg

    history = metrics.get("history", [])
    charts = ""
    if history:
        charts = f"<h2>Training, per epoch</h2><div>{history_svg(history)}</div>"
    rows = "".join(
        f"<tr><td>{name}</td><td>{metrics['before'][name]:.4f}</td>"
        f"<td>{value:.4f}</td><td>{value - metrics['before'][name]:+.4f}</td></tr>"
        for name, value in metrics["after"].items()
    )
    return (
        "<html><body><h2>Evaluation before and after fine-tuning</h2>"
        f"<p>{_evaluation_kind(metrics)}</p>"
        "<table border='1'><tr><th>metric</th><th>pretrained</th><th>fine-tuned</th>"
        f"<th>change</th></tr>{rows}</table>{charts}</body></html>"
    )


def _evaluation_kind(metrics: dict) -> str:
    if metrics["kind"] == "scored":
        return f"{metrics['rows']} scored pairs: correlation of the cosine with the score."
    if metrics["kind"] == "graded":
        return (
            f"{metrics['rows']} graded judgements (BEIR): exact cosine top-{metrics['k']} of "
            "the whole corpus, graded nDCG."
        )
    return f"{metrics['rows']} {metrics['kind']} rows, exact cosine top-{metrics['k']}."


def export(
    model_dir: str,
    metrics: dict,
    output_uri: str,
    claim: str | None = None,
    eval_path: str = "",
    int8: bool | str = True,
    int8_max_drop: float | str = 0.005,
) -> dict:
    """Publish the fine-tuned model and its metrics to output_uri; the URIs written. With
    `claim`, the id the output is claimed under, the claim must still hold. With `int8`, the
    int8 ONNX files are gated on the eval dataset at `eval_path` (finetuner.export.quantize).
    A LoRA run's adapter, saved beside the model, is published beside it too."""
    import json

    from finetuner import models
    from finetuner.data import dataset
    from finetuner.export.publish import export as run_export
    from finetuner.io import storage
    from finetuner.models.folder import ADAPTER_DIR
    from finetuner.parameters.pipelines import subset

    # Checked again here, as a step on a cluster gets them as text.
    gate = subset("Int8", ("int8", "int8_max_drop")).from_strings(
        {"int8": int8, "int8_max_drop": int8_max_drop}
    )
    adapter = Path(model_dir, ADAPTER_DIR)  # a LoRA run's
    uris = run_export(
        models.load(model_dir), metrics, output_uri, run_id=claim,
        eval_data=dataset.load(eval_path) if eval_path else None,
        int8=gate.int8, int8_max_drop=gate.int8_max_drop,
        adapter=adapter if adapter.is_dir() else None,
    )  # fmt: skip
    written = "written" if uris["onnx_int8"] else "left out"
    reason = json.loads(storage.read_text(uris["manifest"]))["int8"]["reason"]
    print(f"int8 ONNX {written}: {reason}", flush=True)
    return uris


def promote(
    manifest_uri: str,
    metrics: dict,
    enabled: bool,
    metric: str,
    min_delta: float,
    claim: str = "",
    force_claim: bool = False,
) -> dict:
    """The promotion gate after export (finetuner.export.promote), which claims latest/ under
    `claim` while it copies; prints its decision."""
    from finetuner.export import promote as gate
    from finetuner.io import storage

    result = gate.promote(
        storage.parent(manifest_uri), metrics, enabled, metric, min_delta, claim, force_claim
    )
    verb = "promoted to " + result["latest"] if result["promoted"] else "not promoted"
    subject = f"{result['metric']} " if result["metric"] else ""
    print(f"{verb}: {subject}{result['reason']}", flush=True)
    return result


def register(
    export: dict,
    metrics: dict,
    promotion: dict | None,
    data: dict,
    url: str,
    name: str,
    run_id: str,
) -> dict:
    """Record the export as a version of `name` in the Model Registry at `url`
    (finetuner.export.model_registry), named after the run; prints what it recorded."""
    import json

    from finetuner.export import model_registry
    from finetuner.io import storage

    manifest = json.loads(storage.read_text(export["manifest"]))
    result = model_registry.register(
        url,
        name,
        run_id,
        storage.parent(export["manifest"]) + "/",
        manifest,
        metrics,
        promotion or None,  # none without a promotion gate
        data.get("sources", {}),
        run_id,
    )
    print(
        f"registered {result['registered_model']} version {result['version']} "
        f"(id {result['version_id']}); serve it from {result['storage_uri']}",
        flush=True,
    )
    return result


if __name__ == "__main__":  # one process of a data-parallel train step (see train)
    import sys

    from finetuner.training import distributed

    sys.exit(distributed.run_process(train, sys.argv[1:]))
