"""The folder a model is saved to: `finetuner.json` (its ModelSpec) and, for the families
that are not Hugging Face models, the embedder's weights as safetensors; a text model's
projection head (option output_dim) is saved next to its Hugging Face files."""

from __future__ import annotations

import json
from pathlib import Path

from finetuner.models.spec import ModelSpec

CONFIG_FILE = "finetuner.json"
WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"
# A LoRA run's adapter alone (adapter_config.json, adapter_model.safetensors), in the train
# step's model folder and the export's model/ (finetuner.training.lora).
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1


def read_spec(folder: str | Path) -> ModelSpec:
    spec = json.loads((Path(folder) / CONFIG_FILE).read_text())["spec"]
    if "query_kind" not in spec:  # written before the families declared their item kinds
        from finetuner.models.registry import get_family

        family = get_family(spec["family"])
        spec |= {"query_kind": family.query_kind, "document_kind": family.document_kind}
    return ModelSpec(**spec)


def write_spec(folder: str | Path, spec: ModelSpec) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT_VERSION, "spec": spec.model_dump()}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder


def save_weights(module, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def load_weights(module, path: str | Path, prefix: str = "") -> None:
    """Load safetensors weights strictly: those whose names start with prefix, without it."""
    from safetensors.torch import load_file

    state = {
        k.removeprefix(prefix): v for k, v in load_file(str(path)).items() if k.startswith(prefix)
    }
    module.load_state_dict(state, strict=True)


def load_scratch_model(cls, folder: str | Path):
    """A model of a family trained from scratch, from its folder: built as it started (no
    start weights), then given the saved ones."""
    model = cls.pretrained(read_spec(folder).model_copy(update={"weights": "scratch"}))
    load_weights(model.embedder, Path(folder) / WEIGHTS_FILE)
    return model


def seeded_start(build, spec: ModelSpec, seed: int):
    """The embedder `build()` makes under a fixed seed, for the families trained from
    scratch (so train and evaluate start from the same model), with the start weights that
    spec.weights names loaded, if it names a folder (a mirror or --weights)."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        embedder = build().eval()
    if spec.weights not in ("", "scratch"):
        from finetuner.models.weights import local_path

        load_weights(embedder, local_path(spec.weights) / WEIGHTS_FILE)
    return embedder


def save(model, folder: str | Path) -> Path:
    """Save a model object whose embedder is a plain nn.Module."""
    folder = write_spec(folder, model.spec)
    save_weights(model.embedder, folder / WEIGHTS_FILE)
    return folder
