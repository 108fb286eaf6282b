from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model_spec: dict,
    model: Input[Model],
    eval_dataset: Input[Dataset],
    k: int,
    matryoshka_dims: list,
    metrics: Output[Metrics],
    report: Output[HTML],
) -> dict:
    """Retrieval metrics@k of the pretrained and the fine-tuned model, for the UI and export;
    also at each of matryoshka_dims, the embeddings truncated (ndcg@10@dim128)."""
    from finetuner.orchestration.failures import reported

    with reported("evaluate"):
        from pathlib import Path

        from finetuner.orchestration import steps

        result = steps.evaluate(model_spec, model.path, eval_dataset.path, k, matryoshka_dims)
        for stage in ("before", "after"):
            for name, value in steps.loggable(result[stage]).items():
                metrics.log_metric(f"{stage}/{name}", value)
        Path(report.path).write_text(steps.evaluation_html(result))
        return result
