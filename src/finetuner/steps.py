"""The pipeline's steps as plain functions: each KFP component calls exactly one.

Inputs are values, URIs and local artifact paths, so the steps are tested here directly,
without KFP.
"""

from __future__ import annotations

from pathlib import Path

from finetuner import data
from finetuner.catalogue import ModelSpec, lookup
from finetuner.losses import loss_for


def catalogue_lookup(
    model: str,
    pooler: str,
    pooler_p: float,
    pooler_eps: float,
    max_length: int,
    loss: str,
    model_options: dict | None = None,
    weights: str = "",
) -> dict:
    """Validate every choice before any data is read or GPU used; the ModelSpec as a dict."""
    spec = lookup(model, pooler, pooler_p, pooler_eps, max_length, model_options, weights=weights)
    loss_for(spec.family, loss)
    return spec.model_dump()


def preprocess(
    model_spec: dict,
    train_data: str,
    eval_data: str,
    val_split: float,
    seed: int,
    train_out: str,
    eval_out: str,
    report_out: str,
) -> dict:
    """Read and validate the CSVs, deduplicate, split; write Parquet and a Markdown report.

    Fields that are not text (image files, vectors) are checked and resolved here."""
    data.check_val_split(val_split, has_eval_data=bool(eval_data))
    spec = ModelSpec(**model_spec)
    raw = data.read_model_pairs(train_data, spec)
    pairs = data.deduplicate(raw)
    if eval_data:
        train_pairs = pairs
        eval_pairs = data.deduplicate(data.read_model_pairs(eval_data, spec))
    else:
        train_pairs, eval_pairs = data.split_by_query(pairs, val_split, seed)
    data.write_pairs(train_pairs, train_out)
    data.write_pairs(eval_pairs, eval_out)
    counts = {
        "rows_read": len(raw),
        "duplicates_dropped": len(raw) - len(pairs),
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "eval_queries": len({q for q, _ in eval_pairs}),
    }
    Path(report_out).write_text(data_report(train_data, eval_data, counts, train_pairs))
    return counts


def data_report(train_data: str, eval_data: str, counts: dict, pairs: list) -> str:
    lines = [
        "# Data report",
        "",
        f"- train data: `{train_data}`",
        f"- eval data: `{eval_data or '(held out from the train data)'}`",
        "",
        "| count | value |",
        "|---|---|",
        *(f"| {k.replace('_', ' ')} | {v} |" for k, v in counts.items()),
        "",
        "## Length of training texts, in words",
        "",
        "| words | queries | documents |",
        "|---|---|---|",
    ]
    edges = [1, 2, 4, 8, 16, 32, 64, 128]
    for low, high in zip(edges, [*edges[1:], None], strict=True):
        label = f"{low}-{high - 1}" if high else f"{low}+"

        def count(texts, low=low, high=high):
            return sum(low <= len(t.split()) < (high or 1 << 30) for t in texts)

        lines.append(f"| {label} | {count(q for q, _ in pairs)} | {count(d for _, d in pairs)} |")
    return "\n".join(lines) + "\n"


def train(
    model_spec: dict,
    train_path: str,
    model_out: str,
    loss: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> dict:
    """Fine-tune the pretrained backbone on the train pairs; save it to model_out."""
    from finetuner import models
    from finetuner.train import TrainConfig
    from finetuner.train import train as run_training

    spec = ModelSpec(**model_spec)
    model = models.pretrained(spec)
    config = TrainConfig(
        loss=loss_for(spec.family, loss),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )
    result = run_training(model, data.load_pairs(train_path), config)
    model.save(model_out)
    return result


def evaluate(model_spec: dict, model_dir: str, eval_path: str, k: int) -> dict:
    """Metrics@k of the pretrained and the fine-tuned model: {"before": ..., "after": ...}."""
    from finetuner import models
    from finetuner.evaluate import evaluate as run_eval

    eval_set = data.EvalSet.from_pairs(data.load_pairs(eval_path))
    before = run_eval(models.pretrained(ModelSpec(**model_spec)), eval_set, k)
    after = run_eval(models.load(model_dir), eval_set, k)
    return {"k": k, "queries": len(eval_set.queries), "before": before, "after": after}


def evaluation_html(metrics: dict) -> str:
    rows = "".join(
        f"<tr><td>{name}</td><td>{metrics['before'][name]:.4f}</td>"
        f"<td>{value:.4f}</td><td>{value - metrics['before'][name]:+.4f}</td></tr>"
        for name, value in metrics["after"].items()
    )
    return (
        "<html><body><h2>Retrieval before and after fine-tuning</h2>"
        f"<p>{metrics['queries']} queries, exact cosine top-{metrics['k']}.</p>"
        "<table border='1'><tr><th>metric</th><th>pretrained</th><th>fine-tuned</th>"
        f"<th>change</th></tr>{rows}</table></body></html>"
    )


def export(model_dir: str, metrics: dict, output_uri: str) -> dict:
    """Publish the fine-tuned model and its metrics to output_uri; the URIs written."""
    from finetuner import models
    from finetuner.export import export as run_export

    return run_export(models.load(model_dir), metrics, output_uri)
