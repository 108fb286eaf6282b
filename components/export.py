from kfp import dsl
from kfp.dsl import Input, Model

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(model: Input[Model], metrics: dict, output_uri: str) -> dict:
    """Publish safetensors, a sentence-transformers folder, checked ONNX, metrics and a model
    card to output_uri, with the manifest written last."""
    from finetuner import steps

    return steps.export(model.path, metrics, output_uri)
