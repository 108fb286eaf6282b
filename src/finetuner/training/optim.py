"""Optimizers and learning-rate schedules, chosen by name with an options dict.

- `build_optimizer`: any torch.optim optimizer, by its torch name ("AdamW") or that name
  in lower case ("adamw"); no weight decay on biases and LayerNorm weights; optionally
  layer-wise learning-rate decay for transformers.
- `build_scheduler`: the schedules of transformers' `get_scheduler` listed in SCHEDULERS.
- `steps_for`: how many scheduler steps to plan when the scheduler steps per batch or per
  epoch.

torch is imported inside the functions, so checking names stays instant.
"""

from __future__ import annotations

import inspect
import re

from finetuner.errors import FinetunerError

# LBFGS needs a closure at every step, SparseAdam sparse gradients: the loop gives neither.
_UNSUPPORTED = {"LBFGS", "SparseAdam", "Optimizer"}
# Adam and AdamW's fused kernel updates all tensors at once: several times faster than
# the default per-tensor loop, which is most of a step's overhead on a CPU.
_FUSED = {"Adam", "AdamW"}
_FUSED_DEVICES = {"cpu", "cuda"}
# Options that choose another implementation, so fused is not added to them.
_IMPLEMENTATION_OPTIONS = {"fused", "foreach", "differentiable"}

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)
SCHEDULER_STEPS = ("batch", "epoch")

# A parameter's transformer layer: HF encoders (encoder.layer.N, encoder.layers.N),
# open_clip (resblocks.N), timm ViTs (blocks.N).
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|resblocks|blocks)\.(\d+)\.")
# Below the first layer: token, position and patch embeddings.
_EMBEDDINGS = re.compile(r"embed")


# ---------------------------------------------------------------- optimizers


def optimizer_names() -> tuple[str, ...]:
    import torch

    names = (
        name
        for name, cls in vars(torch.optim).items()
        if inspect.isclass(cls)
        and issubclass(cls, torch.optim.Optimizer)
        and name not in _UNSUPPORTED
    )
    return tuple(sorted(names, key=str.lower))


def check_optimizer(name: str, parameter: str = "optimizer") -> str:
    """The torch name of an optimizer given as torch spells it or in lower case."""
    names = optimizer_names()
    for valid in names:
        if name in (valid, valid.lower()):
            return valid
    raise FinetunerError(
        f"parameter {parameter}: unknown optimizer '{name}'. Valid optimizers (any "
        f"torch.optim one, also in lower case): {', '.join(names)}."
    )


def optimizer_options(name: str) -> list[str]:
    """The options an optimizer takes besides its parameters and learning rate."""
    import torch

    params = inspect.signature(getattr(torch.optim, check_optimizer(name))).parameters
    return [p for p in params if p not in ("params", "lr")]


def build_optimizer(
    name: str,
    params,
    lr: float,
    options: dict | None = None,
    layerwise_decay: float | None = None,
    parameter: str = "optimizer",
):
    """The torch.optim optimizer `name` with its options; errors name the `parameter` that
    chose it (and its `<parameter>_options`).

    `params` is a module, whose trainable parameters are grouped by `parameter_groups`
    (weight decay from options, else the optimizer's default), or parameters or param
    groups, passed on as they are (a loss's parameters, for its loss_optimizer).
    `layerwise_decay` needs a module."""
    import torch

    name = check_optimizer(name, parameter)
    cls = getattr(torch.optim, name)
    options = dict(options or {})
    valid = optimizer_options(name)
    if "lr" in options:
        rate = "loss_learning_rate" if parameter == "loss_optimizer" else "learning_rate"
        raise FinetunerError(
            f"parameter {parameter}_options: the learning rate is the {rate} parameter, "
            "not an option."
        )
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise FinetunerError(
            f"parameter {parameter}_options: {name} has no option {', '.join(unknown)}. "
            f"Its options: {', '.join(valid)}."
        )
    if isinstance(params, torch.nn.Module):
        has_decay = "weight_decay" in valid
        weight_decay = options.pop("weight_decay", _default(cls, "weight_decay"))
        groups = parameter_groups(params, weight_decay if has_decay else None, layerwise_decay, lr)
    elif layerwise_decay is not None:
        raise FinetunerError(
            "parameter layerwise_decay: needs the model's module, not a list of parameters."
        )
    else:
        groups = list(params)
    if not groups:
        raise FinetunerError(f"optimizer {name}: no trainable parameters.")
    if name in _FUSED and not _IMPLEMENTATION_OPTIONS & set(options) and _fusable(groups):
        options["fused"] = True
    try:
        return cls(groups, lr=lr, **options)
    except (TypeError, ValueError, RuntimeError) as e:
        raise FinetunerError(
            f"parameter {parameter}_options: {name} refused its options {options}: {e}. "
            f"Its options: {', '.join(valid)}."
        ) from e


def _default(cls, option: str):
    return inspect.signature(cls).parameters[option].default


def _fusable(groups: list) -> bool:
    import torch

    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    return all(p.device.type in _FUSED_DEVICES and torch.is_floating_point(p) for p in params)


# ---------------------------------------------------------------- parameter groups


def parameter_groups(
    module,
    weight_decay: float | None,
    layerwise_decay: float | None = None,
    base_lr: float | None = None,
) -> list[dict]:
    """The trainable parameters (not those of a frozen backbone) in param groups: no weight
    decay on biases and LayerNorm weights, as usual for transformers (weight_decay None:
    the optimizer has none, so no groups for it).

    With `layerwise_decay` (in (0, 1]), a transformer's layers train slower the lower they
    are: lr = base_lr * decay ** (num_layers - depth), where the embeddings are depth 0,
    layer N (0-based) depth N + 1, and everything above the layers (the top layer, pooler,
    projection head) trains at base_lr. Several towers (CLIP) share one count of layers by
    their layer index. A module without numbered layers is refused: in a CNN or an MLP
    there is no agreed order of layers to decay along."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if layerwise_decay is None:
        lrs = {n: None for n, _ in named}
    else:
        lrs = _layer_lrs(module, [n for n, _ in named], layerwise_decay, base_lr)
    groups: dict[tuple, dict] = {}
    for name, p in named:
        decay = weight_decay if p.ndim >= 2 else 0.0
        if weight_decay is None:
            decay = None
        group = groups.setdefault((lrs[name], decay), {"params": []})
        group["params"].append(p)
        if decay is not None:
            group["weight_decay"] = decay
        if lrs[name] is not None:
            group["lr"] = lrs[name]
    return list(groups.values())


def layer_depth(name: str, num_layers: int) -> int:
    """A parameter's depth: 0 for embeddings, N + 1 for layer N, num_layers above."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    if _EMBEDDINGS.search(name):
        return 0
    return num_layers


def _layer_lrs(module, names: list[str], decay: float, base_lr: float | None) -> dict:
    if not 0 < decay <= 1:
        raise FinetunerError(f"parameter layerwise_decay: must be in (0, 1], got {decay}.")
    if base_lr is None:
        raise FinetunerError("layer-wise decay needs the base learning rate (base_lr).")
    layers = [int(m.group(1)) for m in map(_LAYER.search, names) if m]
    if not layers:
        raise FinetunerError(
            f"parameter layerwise_decay: decays the learning rate along a transformer's "
            f"layers (parameters in numbered layers such as encoder.layer.N); "
            f"{type(module).__name__} has none. Leave layerwise_decay unset for this model."
        )
    num_layers = max(layers) + 1
    return {n: base_lr * decay ** (num_layers - layer_depth(n, num_layers)) for n in names}


# ---------------------------------------------------------------- schedulers


def check_scheduler(name: str) -> str:
    if name not in SCHEDULERS:
        raise FinetunerError(
            f"parameter scheduler: unknown scheduler '{name}'. Valid schedulers: "
            f"{', '.join(SCHEDULERS)}."
        )
    return name


def scheduler_options(name: str) -> list[str]:
    """A schedule's own options: num_cycles (cosine ones), power and lr_end (polynomial)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(check_scheduler(name))]
    common = ("optimizer", "num_warmup_steps", "num_training_steps", "last_epoch")
    return [p for p in inspect.signature(function).parameters if p not in common]


def build_scheduler(
    name: str,
    optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    options: dict | None = None,
):
    """The learning-rate schedule `name`: a linear warm-up from 0 over num_warmup_steps,
    then linear or cosine decay to 0, cosine with hard restarts, polynomial decay to lr_end,
    or constant. "constant" has no warm-up (num_warmup_steps is ignored);
    "constant_with_warmup" has. Steps are batches or epochs (see `steps_for`)."""
    from transformers import get_scheduler

    options = dict(options or {})
    valid = scheduler_options(name)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise FinetunerError(
            f"parameter scheduler_options: {name} has no option {', '.join(unknown)}. "
            f"Its options: {', '.join(valid) or 'none'}."
        )
    if num_training_steps < 1:
        raise FinetunerError(f"the schedule needs training steps, got {num_training_steps}.")
    if not 0 <= num_warmup_steps <= num_training_steps:
        raise FinetunerError(
            f"parameter num_warmup_steps: must be from 0 to the {num_training_steps} "
            f"scheduler steps of the training, got {num_warmup_steps}."
        )
    try:
        return get_scheduler(
            name,
            optimizer,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=options,
        )
    except (TypeError, ValueError) as e:
        raise FinetunerError(
            f"parameter scheduler_options: {name} refused its options {options}: {e}."
        ) from e


def steps_for(scheduler_step: str, steps_per_epoch: int, epochs: int) -> int:
    """How many scheduler steps a training makes, to plan the schedule with:

    - "batch": scheduler.step() after every optimizer step; steps_per_epoch * epochs;
    - "epoch": scheduler.step() at the end of every epoch; epochs. num_warmup_steps then
      counts epochs, and the learning rate stays fixed within an epoch."""
    if scheduler_step not in SCHEDULER_STEPS:
        raise FinetunerError(
            f"parameter scheduler_step: unknown value '{scheduler_step}'. Valid: "
            f"{', '.join(SCHEDULER_STEPS)}."
        )
    return steps_per_epoch * epochs if scheduler_step == "batch" else epochs
