"""ModelSpec: a validated choice of backbone and options, as catalogue-lookup outputs it.

It lives in the models layer because every family builds from it; the catalogue makes it
(finetuner.catalogue.lookup) and re-exports it.
"""

from __future__ import annotations

from pydantic import BaseModel

# Options that ModelSpec holds as fields of its own, not in `options`.
COMMON_OPTIONS = ("pooler", "pooler_p", "pooler_eps", "max_length")


class ModelSpec(BaseModel):
    """A validated choice of backbone and options: the output of catalogue-lookup.

    It crosses step boundaries as a plain dict (a KFP parameter), so it holds only
    JSON values.
    """

    name: str
    upstream: str
    task: str
    family: str = "text"
    architecture: str
    output_dim: int
    # How the family builds this entry (the catalogue row's `builder`), e.g.
    # "torchvision:resnet50:IMAGENET1K_V2"; "" where the family needs no more than the name.
    builder: str = ""
    # What the model embeds on each side (the family's item kinds): text, image, mesh or
    # vector. The data layer checks rows by these, so it needs no model registry.
    query_kind: str = "text"
    document_kind: str = "text"
    pooler: str = "mean"
    pooler_p: float = 3.0
    pooler_eps: float = 1e-6
    max_length: int = 0  # text models only
    # The family's own options where not at their defaults, e.g. the MLP's layer sizes, or a
    # projection head's output_dim (then also the output_dim above) and freeze.
    options: dict = {}
    # Where the weights come from: "package:<module>", "hf:<hub id>", "torchvision:...",
    # or a mirror folder (s3:// or local).
    weights: str
    # The model/ folder of a previous run's export that training continues from, if any.
    artifact: str = ""
