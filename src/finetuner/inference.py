"""Load an exported model and encode with it: Finetuner's `get_model` and `encode`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from finetuner import storage
from finetuner.errors import FinetunerError
from finetuner.export import MANIFEST, ONNX_FILE


class OnnxTextModel:
    """An exported ONNX model with the tokenizer of its export, on onnxruntime."""

    def __init__(self, onnx_path: Path, model_folder: Path):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from finetuner.catalogue import ModelSpec
        from finetuner.models.text import CONFIG_FILE

        config = json.loads((model_folder / CONFIG_FILE).read_text())
        self.spec = ModelSpec(**config["spec"])
        self.tokenizer = AutoTokenizer.from_pretrained(model_folder)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.spec.max_length,
                return_tensors="np",
            )
            feeds = {n: batch[n].astype(np.int64) for n in self.input_names}
            out.append(self.session.run(None, feeds)[0])
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
        return OnnxTextModel(root / ONNX_FILE, root / "model")
    from finetuner.models import TextModel

    return TextModel.load(root / "model")


def encode(model, data: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings of `data`, one row per item."""
    if isinstance(data, str):
        raise FinetunerError("encode expects a list of texts, not a single string.")
    return model.encode(list(data), batch_size=batch_size)
