"""The cross-encoder family: a Hugging Face sequence classifier with one label that scores
(query, document) pairs for data synthesis (finetuner.synthesis.synthesize). The finetune pipeline
does not train it, so it declares only its weights: a Hugging Face folder, as
sentence-transformers' `CrossEncoder.save` writes it."""

from __future__ import annotations

from finetuner.models.registry import Family, register_family

register_family(Family("cross-encoder"))
