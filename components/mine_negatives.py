from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def mine_negatives(
    model_spec: dict,
    train_dataset: Input[Dataset],
    options: dict,
    mined_dataset: Output[Dataset],
    negatives_report: Output[Markdown],
) -> dict:
    """Mine hard negatives for the train pairs from their own documents, with the model
    being trained (before training) or a chosen miner, when the training options'
    hard_negatives > 0; else pass the train dataset through unchanged."""
    from finetuner.orchestration.failures import reported

    with reported("mine-negatives"):
        from finetuner.orchestration import steps

        return steps.mine_negatives(
            model_spec,
            train_dataset.path,
            options,
            mined_dataset.path,
            negatives_report.path,
        )
