"""LoRA (Hu et al. 2021) through peft: low-rank adapters of a backbone's projections train
in place of its weights, which stay frozen.

The training loop wraps the model with `wrap` before the optimizer is built, and `merge`s
the adapters into the weights after training, so that saving, evaluation, export and ONNX
see a plain model. The adapter alone is kept on the model object (`model.lora_adapter`) and
saved beside the model, in `adapter/` (`save_adapter`): a folder that
`peft.PeftModel.from_pretrained(base, folder)` and sentence-transformers' `load_adapter`
load onto the pretrained model.

Which modules are adapted is the family's declaration (`Family.lora_targets`,
`Family.lora_module`, finetuner.models.registry); families without one refuse LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.models.folder import ADAPTER_DIR
from finetuner.models.registry import Family, families, get_family
from finetuner.parameters import AUTO

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def alpha(config) -> float:
    """lora_alpha, with auto resolved: 2 x lora_r, the usual choice."""
    return 2.0 * config.lora_r if config.lora_alpha == AUTO else float(config.lora_alpha)


def target_modules(config, family: Family) -> list[str]:
    """The names of the modules that get adapters: the family's, or lora_target_modules."""
    if config.lora_target_modules == AUTO:
        return list(family.lora_targets)
    names = [n.strip() for n in config.lora_target_modules.split(",")]
    if not all(names):
        raise FinetunerError(
            f"parameter lora_target_modules: '{config.lora_target_modules}' has an empty name; "
            "valid: auto, or module names separated by commas, e.g. query,value."
        )
    return names


def check(config, spec) -> None:
    """Refuse, before anything loads, LoRA where it cannot apply (`spec`: the ModelSpec)."""
    if not config.lora_r:
        return
    family = get_family(spec.family)
    if not family.lora_targets:
        able = ", ".join(f for f in families() if get_family(f).lora_targets)
        raise FinetunerError(
            f"parameter lora_r: {config.lora_r}, but {spec.name} is of the {spec.family} "
            f"family, which has no LoRA adapters; valid: 0 for it, or a model of a family "
            f"with adapters ({able})."
        )
    if spec.options.get("freeze"):
        raise FinetunerError(
            f"parameter lora_r: {config.lora_r} trains adapters of the backbone, but model "
            "option freeze keeps the backbone as it is; valid: lora_r 0 with freeze, or "
            "freeze false."
        )
    if config.wiseft_alpha < 1:
        raise FinetunerError(
            f"parameter wiseft_alpha: {config.wiseft_alpha:g} with lora_r {config.lora_r}: "
            "WiSE-FT blends all the weights, LoRA trains adapters alone; valid: 1 with LoRA "
            "(lower lora_alpha for a smaller update instead)."
        )
    target_modules(config, family)


def _module(model, family: Family):
    module = model.embedder
    for name in filter(None, family.lora_module.split(".")):
        module = getattr(module, name)
    return module


def wrap(model, config):
    """Add adapters to the model's adapted module in place and freeze every other weight
    of it; the peft model, for `merge`. The embedder keeps its modules, so the loop, the
    towers and the checkpoints go on using them."""
    from peft import LoraConfig, get_peft_model

    check(config, model.spec)
    family = get_family(model.spec.family)
    module = _module(model, family)
    targets = target_modules(config, family)
    # A transformer's pooler head is not part of the embedding (the pooler pools the tokens).
    unused = [n for n, _ in module.named_modules() if n.endswith("pooler.dense")]
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=alpha(config),
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        exclude_modules=unused or None,
        bias="none",
    )
    try:
        return get_peft_model(module, lora_config)
    except ValueError as exc:
        kinds = sorted({type(m).__name__ for m in module.modules()} & {"Linear", "Conv2d"})
        raise FinetunerError(
            f"parameter lora_target_modules: no module of {model.spec.name} fits "
            f"{','.join(targets)} ({str(exc).splitlines()[0][:200]}); valid: auto, or names "
            f"that end the dotted names of its {' or '.join(kinds) or 'linear'} modules."
        ) from None


@dataclass
class Adapter:
    """The trained adapter alone: peft's config and weights, on the CPU."""

    config: object  # peft.LoraConfig
    state: dict

    def save(self, folder: str | Path) -> Path:
        """Write the folder that PeftModel.save_pretrained writes."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(folder))
        save_file(self.state, str(folder / ADAPTER_WEIGHTS))
        return folder


def merge(model, peft_model) -> None:
    """Keep the adapter on the model (`model.lora_adapter`) and merge it into the weights,
    which leaves the model as it was built, with fine-tuned weights."""
    import copy

    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.inference_mode = True
    # Where the base comes from, instead of the local folder it was loaded from.
    config.base_model_name_or_path = model.spec.upstream
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    base = peft_model.merge_and_unload()
    if hasattr(base, "peft_config"):  # peft's mark; the merged module has no adapters left
        del base.peft_config
    model.lora_adapter = Adapter(config, state)


def save_adapter(model, folder: str | Path) -> Path | None:
    """Save the adapter of a LoRA-trained model into `<folder>/adapter/`; None without one."""
    adapter = getattr(model, "lora_adapter", None)
    return adapter.save(Path(folder) / ADAPTER_DIR) if adapter is not None else None
