"""Load an exported model and encode with it: Finetuner's `get_model` and `encode`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetuner import storage
from finetuner.errors import FinetunerError
from finetuner.export import MANIFEST, ONNX_FILE


class OnnxModel:
    """An exported ONNX model on onnxruntime, with the preprocessing of its export."""

    def __init__(self, onnx_path: Path, model_folder: Path):
        import onnxruntime as ort

        from finetuner.models.folder import read_spec

        self.spec = read_spec(model_folder)
        if self.spec.family == "text":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_folder)
        elif self.spec.family == "cnn":
            from finetuner.models.image import image_transform

            self.transform = image_transform(self.spec)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _feeds(self, items: list) -> dict:
        if self.spec.family == "text":
            batch = self.tokenizer(
                list(items),
                padding=True,
                truncation=True,
                max_length=self.spec.max_length,
                return_tensors="np",
            )
            return {n: batch[n].astype(np.int64) for n in self.input_names}
        if self.spec.family == "mlp":
            from finetuner.models.vector import parse_vectors

            return {"vectors": parse_vectors(items).numpy()}
        from finetuner.models.image import load_image

        pixels = np.stack([self.transform(load_image(uri)).numpy() for uri in items])
        return {"images": pixels}

    def encode(self, items: list, batch_size: int = 64) -> np.ndarray:
        out = [
            self.session.run(None, self._feeds(items[start : start + batch_size]))[0]
            for start in range(0, len(items), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.spec.output_dim), np.float32)


def get_model(artifact: str, is_onnx: bool = False):
    """Load an export from a local folder or s3:// prefix, as PyTorch or ONNX.

    Only a whole export loads: one without its manifest (an interrupted publish) is refused.
    """
    if not storage.exists(storage.join(artifact, MANIFEST)):
        raise FinetunerError(
            f"{artifact} is not a finished export: {MANIFEST} is missing. "
            "Point at the output of a completed run."
        )
    root = storage.local_copy(artifact.rstrip("/") + "/")
    if is_onnx:
        if not (root / ONNX_FILE).exists():
            raise FinetunerError(f"{artifact} has no ONNX model; load it with is_onnx=False.")
        return OnnxModel(root / ONNX_FILE, root / "model")
    from finetuner import models

    return models.load(root / "model")


def encode(model, data: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings of `data` (texts, or image paths and URIs), one row per item."""
    if isinstance(data, str):
        raise FinetunerError("encode expects a list of items, not a single string.")
    return model.encode(list(data), batch_size=batch_size)
