from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(
    model: Input[Model],
    metrics: dict,
    output_uri: str,
    run_id: str,
    claim: str,
    eval_dataset: Input[Dataset],
    int8: bool,
    int8_max_drop: float,
) -> dict:
    """Publish safetensors, a sentence-transformers folder, checked ONNX, its int8 twin when
    it passes the gate on the eval dataset, metrics and a model card to output_uri ({run_id}
    in it: this run's id), with the manifest written last, while the run still holds its
    claim on output_uri."""
    from finetuner.orchestration.failures import reported

    with reported("export"):
        from finetuner.export.promote import run_output
        from finetuner.orchestration import steps

        uris = steps.export(
            model.path, metrics, run_output(output_uri, run_id), claim,
            eval_dataset.path, int8, int8_max_drop,
        )  # fmt: skip
        # KFP cannot pass a None inside a dict to the next step (no ONNX file for PointNet++).
        return {name: uri for name, uri in uris.items() if uri is not None}
