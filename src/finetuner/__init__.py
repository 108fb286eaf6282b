"""Fine-tune embedding models for search on your own infrastructure.

The Python API follows Jina AI's Finetuner: `describe_models`, `list_model_options`, `fit`,
`get_model`, `encode` and `synthesize`. Attributes load lazily, so `import finetuner` stays fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "describe_models": "finetuner.catalogue",
    "list_model_options": "finetuner.catalogue.options",
    "fit": "finetuner.launch.local",
    "Run": "finetuner.launch.local",
    "get_model": "finetuner.export.inference",
    "encode": "finetuner.export.inference",
    "synthesize": "finetuner.synthesis.synthesize",
    "SynthesisModels": "finetuner.synthesis.synthesize",
    "DATA_SYNTHESIS_EN": "finetuner.synthesis.synthesize",
    "FinetunerError": "finetuner.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'finetuner' has no attribute {name!r}")
