"""Reading a resolved weights source (finetuner.catalogue.weights picks one) into a local
folder that a family's builder loads from."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from finetuner.errors import FinetunerError
from finetuner.io import storage


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_cached(repo_id: str) -> bool:
    """Whether a Hugging Face model's files are in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def local_path(source: str) -> Path:
    """A local folder holding the model files of a resolved weights source."""
    if source.startswith("package:"):
        module = importlib.import_module(source.removeprefix("package:"))
        return Path(module.get_model_path())
    if source.startswith("hf:"):
        from huggingface_hub import snapshot_download

        repo_id = source.removeprefix("hf:")
        try:
            return Path(snapshot_download(repo_id, local_files_only=offline()))
        except Exception as exc:  # the hub client raises many types
            raise FinetunerError(f"cannot fetch weights '{repo_id}' from the hub: {exc}") from exc
    if storage.is_s3(source) or Path(source).is_dir():
        return storage.local_copy(source.rstrip("/") + "/")
    raise FinetunerError(f"unknown weights source '{source}'")
