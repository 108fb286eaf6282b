"""Where an export keeps its ONNX files (a leaf module: publishing, quantizing and loading
all name them)."""

from __future__ import annotations

ONNX_FILE = "onnx/model.onnx"


def int8_file(file: str) -> str:
    """The int8 ONNX file beside an fp32 one: onnx/model.onnx -> onnx/model.int8.onnx."""
    return file.removesuffix(".onnx") + ".int8.onnx"
