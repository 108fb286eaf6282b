"""The CLIP family: open_clip's text and image towers, trained together on text-image
pairs with CLIP's loss and its learnable temperature.

Light: it declares and registers the family; the nn.Modules are in clip_net.py.
"""

from __future__ import annotations

from finetuner.models.options import NoOptions
from finetuner.models.registry import Family, Weights, register_family

CLIP_LOSS = "CLIPLoss"
TOWERS = ("clip-text", "clip-vision")


@register_family
def clip() -> Family:
    return Family(
        "clip",
        NoOptions,
        model="finetuner.models.clip_net:TextImageModel",
        query_kind="text",
        document_kind="image",
        # A mirror holds clip.json (name and size), model.safetensors (open_clip's
        # state_dict of both towers) and, for clip-base-multi, the XLM-R tokenizer files.
        weights=Weights(
            marker="clip.json",
            upstream="finetuner.models.clip_net:upstream_source",
            mirror="finetuner.models.clip_net:write_mirror",
        ),
        losses=(CLIP_LOSS,),
        towers=TOWERS,
        card=lambda spec: ("", "both towers and the temperature, to train on from"),
        own_pooling="CLIP towers pool as they were pretrained: GeM and other poolers do not apply",
        # The MLP projections of open_clip's towers; clip-base-multi's XLM-R text tower names
        # its attention and feed-forward projections as BERT does. Not open_clip's attention
        # (nn.MultiheadAttention, target "attn"): peft adds its update to the frozen weights
        # and takes it off again at every forward, which moves them by rounding.
        lora_targets=("c_fc", "c_proj", "query", "key", "value", "dense"),
    )
