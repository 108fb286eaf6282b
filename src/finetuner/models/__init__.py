"""Model families of the catalogue. Only text models exist so far."""

from finetuner.models.text import TextModel

__all__ = ["TextModel"]
