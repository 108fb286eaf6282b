"""Load an exported model and encode with it: Finetuner's `get_model` and `encode`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetuner.errors import FinetunerError
from finetuner.evaluation.matryoshka import check_dim, truncate
from finetuner.export.files import ONNX_FILE, int8_file
from finetuner.io import storage
from finetuner.io.claim import MANIFEST
from finetuner.models.registry import get_family, resolve


class OnnxModel:
    """An exported ONNX model on onnxruntime, with the preprocessing of its family."""

    def __init__(self, onnx_path: Path, model_folder: Path):
        import onnxruntime as ort

        from finetuner.models.folder import read_spec

        self.spec = read_spec(model_folder)
        self.output_dim = self.spec.output_dim
        self.inputs = resolve(get_family(self.spec.family).onnx_inputs)(self.spec, model_folder)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _feeds(self, items: list) -> dict:
        # Only what the graph takes (a tokenizer may give token_type_ids it does not).
        return {k: v for k, v in self.inputs(list(items)).items() if k in self.input_names}

    def encode(self, items: list, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        # `device` keeps the models' encode signature; onnxruntime runs on its CPU provider.
        out = [
            self.session.run(None, self._feeds(items[start : start + batch_size]))[0]
            for start in range(0, len(items), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.output_dim), np.float32)


class OnnxTower(OnnxModel):
    """One exported CLIP tower on onnxruntime, with its tokenizer or image transform."""

    def __init__(self, onnx_path: Path, tower_folder: Path):
        import onnxruntime as ort

        from finetuner.models import clip_net as clip

        config = clip.tower_config(tower_folder)
        self.output_dim = config["embed_dim"]
        if config["tower"] == "text":
            self.input_name, self.inputs = "token_ids", clip.tower_tokenizer(tower_folder)
        else:
            import torch

            from finetuner.models.cnn_net import load_image

            transform = clip.tower_transform(tower_folder)
            self.input_name = "pixel_values"
            self.inputs = lambda uris: torch.stack([transform(load_image(u)) for u in uris])
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def _feeds(self, items: list) -> dict:
        return {self.input_name: self.inputs(items).numpy()}


def _onnx_path(root: Path, artifact: str, file: str, int8: bool) -> Path:
    """The ONNX file of an export, or its int8 twin; an error saying why it is missing."""
    if int8:
        path = root / int8_file(file)
        if not path.exists():
            import json

            gate = json.loads((root / MANIFEST).read_text()).get("int8") or {}
            why = gate.get("reason", "it was exported before int8 files were")
            raise FinetunerError(
                f"{artifact} has no int8 ONNX model ({why}); load it with int8=False."
            )
        return path
    if not (root / file).exists():
        raise FinetunerError(f"{artifact} has no ONNX model; load it with is_onnx=False.")
    return root / file


def _get_tower(
    root: Path, artifact: str, select_model: str | None, is_onnx: bool, int8: bool, towers
):
    if select_model not in towers:
        raise FinetunerError(
            f"{artifact} is a model with {len(towers)} towers: choose one with "
            f"select_model={' or '.join(repr(t) for t in towers)}."
        )
    if is_onnx:
        path = _onnx_path(root, artifact, f"onnx/{select_model}.onnx", int8)
        return OnnxTower(path, root / select_model)
    from finetuner.models.clip_net import load_tower_model

    return load_tower_model(root / select_model)


class Truncated:
    """A loaded model whose embeddings are cut to their first `dim` dimensions and
    renormalised: Matryoshka embeddings at a width they were trained for. The rest of the
    model is the wrapped one's."""

    def __init__(self, model, dim: int):
        self.model = model
        self.output_dim = check_dim(dim, width(model))

    def encode(self, items: list, batch_size: int = 64, **kwargs) -> np.ndarray:
        return truncate(self.model.encode(items, batch_size=batch_size, **kwargs), self.output_dim)

    def __getattr__(self, name):
        if name == "model":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def width(model) -> int:
    """The width of a loaded model's embeddings."""
    dim = getattr(model, "output_dim", None)  # ONNX models and towers, Truncated
    if isinstance(dim, int):
        return dim
    if hasattr(model, "spec"):
        return model.spec.output_dim
    return model.tower.config["embed_dim"]  # a CLIP tower on PyTorch


def get_model(
    artifact: str,
    is_onnx: bool = False,
    select_model: str | None = None,
    truncate_dim: int | None = None,
    int8: bool = False,
):
    """Load an export from a local folder or s3:// prefix, as PyTorch or ONNX; with
    `int8` (and is_onnx), its int8 ONNX model (onnx/model.int8.onnx, or the tower's).

    A CLIP export holds two towers: `select_model` picks "clip-text" or "clip-vision".
    Only a whole export loads: one without its manifest (an interrupted publish) is refused.
    With `truncate_dim`, the model encodes to the first truncate_dim dimensions,
    renormalised (for a model trained with matryoshka_dims), on PyTorch and ONNX alike.
    """
    if int8 and not is_onnx:
        raise FinetunerError("int8=True loads the int8 ONNX model: give is_onnx=True too.")
    model = _load(artifact, is_onnx, select_model, int8)
    return model if truncate_dim is None else Truncated(model, truncate_dim)


def _load(artifact: str, is_onnx: bool, select_model: str | None, int8: bool):
    if not storage.exists(storage.join(artifact, MANIFEST)):
        raise FinetunerError(
            f"{artifact} is not a finished export: {MANIFEST} is missing. "
            "Point at the output of a completed run."
        )
    root = storage.local_copy(artifact.rstrip("/") + "/")
    from finetuner.models.folder import read_spec

    towers = get_family(read_spec(root / "model").family).towers
    if towers:
        return _get_tower(root, artifact, select_model, is_onnx, int8, towers)
    if select_model is not None:
        raise FinetunerError(
            f"select_model is for CLIP exports, whose towers load apart; {artifact} holds one "
            "model: leave select_model out."
        )
    if is_onnx:
        return OnnxModel(_onnx_path(root, artifact, ONNX_FILE, int8), root / "model")
    from finetuner import models

    return models.load(root / "model")


def encode(
    model, data: list[str], batch_size: int = 64, truncate_dim: int | None = None
) -> np.ndarray:
    """Unit-length embeddings of `data` (texts, or image paths and URIs), one row per item;
    with `truncate_dim`, their first truncate_dim dimensions, renormalised."""
    if isinstance(data, str):
        raise FinetunerError("encode expects a list of items, not a single string.")
    if truncate_dim is not None:
        model = Truncated(model, truncate_dim)
    return model.encode(list(data), batch_size=batch_size)
