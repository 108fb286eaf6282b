"""The registry of model families: each family declares itself once, in its own module.

A family module (finetuner/models/text.py, cnn.py, ...) is light: it declares a `Family`
and registers it with `@register_family` (as timm's `@register_model` does), naming its
heavy parts (the nn.Modules, in the paired `*_net.py` module) as "module:attribute"
strings that load only when used. So the catalogue, `finetuner describe-models` and
catalogue-lookup never import torch.

Families outside this package register the same way; the steps of a pipeline run import
the modules named in FINETUNER_PLUGINS (see `load_plugins`) so they find them too.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from finetuner.errors import FinetunerError
from finetuner.models.options import NoOptions, Options

# Comma-separated modules that register more families (and catalogue rows), imported by
# every process of a run: the CLI, the Python API and each pipeline step.
PLUGINS_ENV = "FINETUNER_PLUGINS"

ITEM_KINDS = ("text", "image", "mesh", "vector")


def resolve(ref: str | None):
    """The object a "module:attribute" reference names, imported now; None stays None."""
    if ref is None:
        return None
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Weights:
    """Where a family's pretrained weights come from (finetuner.catalogue.weights).

    marker: the file that marks a model folder (a mirror's or `--weights`) as this family's.
    scratch: no upstream weights exist; the family trains from a seeded random start.
    upstream: "module:function" (entry -> (source, usable offline)) for the upstream
      source; None: the entry's `upstream` is a Hugging Face hub id.
    mirror: "module:function" (entry, local folder) writing the mirror layout from the
      resolved source; None: the source's folder is copied as is (a Hugging Face folder).
    """

    marker: str = "config.json"
    scratch: bool = False
    upstream: str | None = None
    mirror: str | None = None


@dataclass(frozen=True)
class Family:
    """One model family, declared in one place.

    model: "module:Class" of the model object; the class has `pretrained(spec)` and
      `load(folder)`; None for a family the finetune pipeline does not train.
    options: the pydantic schema of the family's options (`list-model-options`).
    query_kind, document_kind: what it embeds on each side (ITEM_KINDS); preprocessing of
      the items is the model object's (`embed`, `prepare_one`).
    onnx_inputs: "module:function" (spec, model folder) -> (items -> ONNX feeds), for
      loading the ONNX export; None: the family's model exports no single ONNX file.
    losses: the only losses it trains with (CLIP's own); empty: any loss.
    towers: the parts exported and loaded apart (CLIP's two towers).
    export: "module:function" (model, folder) writing the export's model/ folder; None:
      the model's own `save`.
    card: spec -> (details, what model/ holds), for the export's README; None: a plain one.
    own_pooling: why the family takes no pooler, for the error that refuses one.
    learning_rate, epochs: the family's training defaults.
    lora_targets: the module names that get LoRA adapters when lora_target_modules is auto
      (finetuner.training.lora); empty: the family refuses LoRA.
    lora_module: the attribute path, in the embedder, of the module adapted ("": the
      embedder itself), so the adapter's names are that module's own.
    """

    name: str
    options: type[Options] = NoOptions
    model: str | None = None
    query_kind: str = "text"
    document_kind: str = "text"
    weights: Weights = field(default_factory=Weights)
    onnx_inputs: str | None = None
    losses: tuple[str, ...] = ()
    towers: tuple[str, ...] = ()
    export: str | None = None
    card: Callable | None = None
    own_pooling: str = ""
    learning_rate: float = 5e-5
    epochs: int = 1
    lora_targets: tuple[str, ...] = ()
    lora_module: str = ""

    def __post_init__(self):
        for kind in (self.query_kind, self.document_kind):
            if kind not in ITEM_KINDS:
                valid = ", ".join(ITEM_KINDS)
                raise FinetunerError(
                    f"family {self.name}: unknown item kind '{kind}'; valid: {valid}."
                )

    def model_class(self):
        """The model object class (importing the heavy module)."""
        if self.model is None:
            raise FinetunerError(f"model family '{self.name}' cannot be trained by the pipeline.")
        return resolve(self.model)


_FAMILIES: dict[str, Family] = {}


def register_family(make: Callable[[], Family] | Family):
    """Register a family: as a decorator of a function that returns its Family, or called
    with the Family. Registering a name again replaces it (a module reloaded in a test)."""
    family = make() if callable(make) and not isinstance(make, Family) else make
    _FAMILIES[family.name] = family
    return make


def _load_builtins() -> None:
    # The built-in family modules register on import (finetuner/models/__init__.py).
    importlib.import_module("finetuner.models")
    load_plugins()


def load_plugins() -> None:
    """Import the modules named in FINETUNER_PLUGINS, so their families and catalogue rows
    register in this process (a pipeline step runs in a process of its own)."""
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise FinetunerError(
                f"{PLUGINS_ENV}: cannot import plugin module '{name}': {exc}. Set it to "
                "importable module names, separated by commas."
            ) from None


def get_family(name: str) -> Family:
    """The family registered under name; an unknown name lists the valid ones."""
    _load_builtins()
    if name not in _FAMILIES:
        raise FinetunerError(
            f"unknown model family '{name}'. Registered families: {', '.join(families())}."
        )
    return _FAMILIES[name]


def families() -> list[str]:
    """The names of the registered families."""
    _load_builtins()
    return list(_FAMILIES)
