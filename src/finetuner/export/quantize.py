"""The int8 ONNX export and its quality gate.

Each fp32 ONNX file of an export gets an int8 twin beside it (onnx/model.int8.onnx, or one
per CLIP tower): onnxruntime's dynamic quantization, weights int8 per output channel,
activations quantized as they come. The gate then evaluates the int8 and the fp32 ONNX
model on the eval set, with the same code and preprocessing, and keeps the int8 files only
when the headline metric (ndcg@k, or spearman for scored data) drops by at most
`max_drop`. Its record goes to metrics.json, the manifest and the model card.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from finetuner.export.files import int8_file


def quantize(fp32: Path, int8: Path) -> None:
    """Write the dynamic int8 quantization of an ONNX file.

    Only MatMul and Gather (embedding tables) are quantized: onnxruntime's dynamic ConvInteger
    made efficientnet-lite0 7x slower than fp32 and lost 0.026 nDCG@10, so a CNN keeps its
    convolutions in fp32. Per-channel weights keep MiniLM's embeddings at a mean cosine of
    about 0.99 to fp32 (per-tensor: about 0.95). onnxruntime's transformer optimizer finds no
    attention to fuse in the graphs that torch.onnx's dynamo exporter writes, and an offline
    graph-optimised model was no faster: the fp32 graph is quantized as it is.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer infers every shape again; the exporter's own shape annotations of a
    # Gemm's transposed weights (a projection head, an MLP) contradict onnx's inference and
    # fail it, so it starts from the graph without them.
    graph = onnx.load(str(fp32))
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        bare = Path(tmp) / "model.onnx"
        onnx.save(graph, str(bare))
        quantize_dynamic(
            bare, int8, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Gather"],
        )  # fmt: skip


@contextmanager
def _quiet():
    """Without the quantizer's advice, on the root logger, to pre-process the model (for
    static quantization, which this is not)."""

    class Advice(logging.Filter):
        def filter(self, record):
            return "pre-processing before quantization" not in record.getMessage()

    advice = Advice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


class _TwoSides:
    """A two-tower model on onnxruntime, as the evaluation takes it (`sides()`)."""

    def __init__(self, query, document):
        self._sides = (query, document)

    def sides(self):
        return self._sides


def _onnx_model(model, stage: Path, onnx: dict[str, dict], int8: bool):
    """The staged export's ONNX model (fp32 or int8), shaped as `model` for evaluation."""
    from finetuner.export.inference import OnnxModel, OnnxTower

    def path(name: str) -> Path:
        file = onnx[name]["file"]
        return stage / (int8_file(file) if int8 else file)

    if not hasattr(model, "sides"):
        return OnnxModel(path("model"), stage / "model")
    towers = model.towers()
    # Each side is one of the towers; which, by identity (a tower may embed both sides).
    names = [next(n for n, t in towers.items() if t is side) for side in model.sides()]
    return _TwoSides(*(OnnxTower(path(n), stage / n) for n in names))


def skipped(reason: str) -> dict:
    return {"written": False, "files": None, "reason": reason}


def export_int8(
    model, stage: Path, onnx: dict[str, dict], eval_data, metrics: dict, max_drop: float
) -> dict:
    """Quantize the staged ONNX files and gate them on `eval_data` (a finetuner.data Dataset,
    or None); the gate's record. Refused int8 files are deleted from the stage.

    `metrics` are the evaluate step's, whose k the retrieval metrics take."""
    from finetuner.evaluation.evaluate import evaluate_dataset

    if not onnx:
        return skipped(f"no ONNX export: {model.spec.architecture} models run on PyTorch")
    if eval_data is None or len(eval_data) == 0:
        return skipped("no eval data to check it on")
    written = {name: int8_file(info["file"]) for name, info in onnx.items()}
    for name, info in onnx.items():
        quantize(stage / info["file"], stage / written[name])
    k = int(metrics.get("k", 10))  # KFP hands k back as a float
    metric = "spearman" if eval_data.kind == "scored" else f"ndcg@{k}"
    fp32 = evaluate_dataset(_onnx_model(model, stage, onnx, int8=False), eval_data, k)[metric]
    int8 = evaluate_dataset(_onnx_model(model, stage, onnx, int8=True), eval_data, k)[metric]
    drop = fp32 - int8
    record = {
        "metric": metric, "fp32": fp32, "int8": int8, "drop": drop, "max_drop": max_drop,
        "eval_rows": len(eval_data),
    }  # fmt: skip
    # The tolerance keeps a drop of exactly max_drop, computed in floats, from failing.
    if drop <= max_drop + 1e-12:
        return {
            "written": True,
            "files": written if hasattr(model, "towers") else written["model"],
            "reason": f"{metric} {int8:.4f} int8 vs {fp32:.4f} fp32: drop {drop:+.4f}, "
            f"within int8_max_drop {max_drop:g}",
            **record,
        }
    for file in written.values():
        (stage / file).unlink()
    return {
        "written": False,
        "files": None,
        "reason": f"{metric} {int8:.4f} int8 vs {fp32:.4f} fp32: drop {drop:+.4f}, more than "
        f"int8_max_drop {max_drop:g}",
        **record,
    }


def card_line(record: dict) -> str:
    """The model card's line on the int8 files."""
    if not record["written"]:
        return f"- No int8 ONNX file: {record['reason']}."
    files = record["files"]
    listed = ", ".join(f"`{f}`" for f in (files.values() if isinstance(files, dict) else [files]))
    return (
        f"- {listed}: int8 (dynamic quantization), smaller and faster on CPU; "
        f"{record['reason']}. `finetuner.get_model(uri, is_onnx=True, int8=True)` loads it."
    )
