"""The text family: a Hugging Face transformer, a pooler and an optional projection head.

Light: it declares and registers the family; the nn.Modules are in text_net.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetuner.models.options import (
    Backbone,
    Options,
    PoolerOptions,
    Positive,
    freeze_field,
    gem_eps,
    gem_p,
    output_dim_field,
    pooler_options_field,
)
from finetuner.models.registry import Family, register_family

LORA_TARGETS = (
    "query", "key", "value", "dense", "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2",
)  # fmt: skip


def _max_length():
    return Field(128, ge=8, le=512, description="tokens kept of each text")


class CollateOptions(Options):
    max_length: int = _max_length()


class TextOptions(Backbone):
    pooler: Literal["mean", "cls", "max", "GeM"] = Field(
        "mean", description="how token embeddings become one vector"
    )
    pooler_p: Positive = gem_p()
    pooler_eps: Positive = gem_eps()
    pooler_options: PoolerOptions | None = pooler_options_field()
    max_length: int = _max_length()
    collate_options: CollateOptions | None = Field(None, description="max_length as a group")
    output_dim: int | None = output_dim_field()
    freeze: bool = freeze_field()


def card(spec) -> tuple[str, str]:
    details = f", pooler `{spec.pooler}`, max length {spec.max_length}"
    folder = (
        'a sentence-transformers folder (`SentenceTransformer("model")`) with the weights '
        "as safetensors"
    )
    if spec.pooler == "GeM":
        folder += "; GeM is a finetuner module: load with `trust_remote_code=True`"
    return details, folder


@register_family
def text() -> Family:
    return Family(
        "text",
        TextOptions,
        model="finetuner.models.text_net:TextModel",
        onnx_inputs="finetuner.models.text_net:onnx_inputs",
        export="finetuner.models.text_net:write_sentence_transformers",
        card=card,
        # The attention and feed-forward projections: BERT, RoBERTa and XLM-R's names, then
        # DistilBERT's. The Hugging Face transformer is adapted, under its own names, which
        # sentence-transformers' load_adapter and PeftModel on AutoModel expect.
        lora_targets=LORA_TARGETS,
        lora_module="backbone",
    )
