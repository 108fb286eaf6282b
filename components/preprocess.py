from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(
    model_spec: dict,
    train_data: str,
    eval_data: str,
    val_split: float,
    seed: int,
    data_options: dict,
    train_dataset: Output[Dataset],
    eval_dataset: Output[Dataset],
    data_report: Output[Markdown],
) -> dict:
    """Check the data (CSV, JSONL or Parquet; s3:// or local), split it, write Parquet."""
    from finetuner.orchestration.failures import reported

    with reported("preprocess"):
        from finetuner.orchestration import steps

        return steps.preprocess(
            model_spec,
            train_data,
            eval_data,
            val_split,
            seed,
            data_options,
            train_dataset.path,
            eval_dataset.path,
            data_report.path,
        )
