"""The name by which sentence-transformers folders exported before the layer packages load
their GeM pooling (`finetuner.st_modules.GeMPooling` in modules.json). It lives in
finetuner.models.st_modules."""

from finetuner.models.st_modules import GeMPooling

__all__ = ["GeMPooling"]
