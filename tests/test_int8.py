"""The int8 ONNX export (finetuner.export.quantize): written beside the fp32 file, loaded by
get_model(int8=True), close to fp32, and left out by the gate when the metric drops too far."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from finetuner.catalogue import lookup
from finetuner.data import dataset
from finetuner.errors import FinetunerError
from finetuner.export import inference
from finetuner.export.publish import export
from finetuner.models import TextModel
from finetuner.parameters.pipelines import subset

EXAMPLES = Path(__file__).parent.parent / "examples" / "wordnet_pairs.csv"


@pytest.fixture(scope="module")
def minilm():
    return TextModel.pretrained(lookup("minilm-l6-en", max_length=32))


@pytest.fixture(scope="module")
def wordnet():
    """Real (term, definition) pairs."""
    with open(EXAMPLES, encoding="utf-8") as f:
        return [tuple(row) for row in list(csv.reader(f))[1:81]]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_file_is_written_loads_and_stays_close_to_fp32(minilm, wordnet, tmp_path):
    out = tmp_path / "out"
    metrics = {"k": 10, "kind": "pairs", "before": {}, "after": {"ndcg@10": 0.9}}
    # max_drop 1 always keeps the file: this test is about the file, the next about the gate.
    uris = export(minilm, metrics, str(out), eval_data=dataset.from_rows(wordnet[:40]),
                  int8_max_drop=1.0)  # fmt: skip
    assert uris["onnx_int8"] == str(out / "onnx" / "model.int8.onnx")
    fp32_bytes = (out / "onnx" / "model.onnx").stat().st_size
    assert (out / "onnx" / "model.int8.onnx").stat().st_size < fp32_bytes / 3

    manifest = json.loads((out / "manifest.json").read_text())
    gate = manifest["int8"]
    assert gate["written"] and gate["files"] == "onnx/model.int8.onnx"
    assert gate["metric"] == "ndcg@10" and gate["eval_rows"] == 40
    assert gate["drop"] == pytest.approx(gate["fp32"] - gate["int8"])
    assert "onnx/model.int8.onnx" in {f["path"] for f in manifest["files"]}
    assert json.loads((out / "metrics.json").read_text())["int8"] == gate
    card = (out / "README.md").read_text()
    assert "`onnx/model.int8.onnx`: int8" in card and "int8=True" in card

    texts = [t for pair in wordnet[40:] for t in pair]
    int8 = inference.get_model(str(out), is_onnx=True, int8=True)
    fp32 = inference.get_model(str(out), is_onnx=True)
    similarity = cosines(int8.encode(texts), fp32.encode(texts))
    assert similarity.mean() > 0.99 and similarity.min() > 0.95, similarity.min()
    assert similarity.min() < 0.9999  # it is the int8 model, not the fp32 one

    with pytest.raises(FinetunerError, match="give is_onnx=True too"):
        inference.get_model(str(out), int8=True)


def test_the_gate_leaves_int8_out_when_the_metric_drops_more_than_allowed(
    minilm, wordnet, tmp_path
):
    # Scored rows whose scores are the fp32 model's own cosines: fp32 ranks them perfectly
    # (Spearman 1), and int8's rounding swaps some of the 80 close cosines, so it drops
    # by more than the 0 allowed, every time.
    first, second = [t for t, _ in wordnet], [d for _, d in wordnet]
    scores = cosines(minilm.encode(first), minilm.encode(second[::-1]))
    rows = [(a, b, float(s)) for a, b, s in zip(first, second[::-1], scores, strict=True)]
    metrics = {"k": 10, "kind": "scored", "before": {}, "after": {"spearman": 1.0}}
    out = tmp_path / "out"
    uris = export(minilm, metrics, str(out), eval_data=dataset.from_rows(rows, "scored"),
                  int8_max_drop=0.0)  # fmt: skip

    gate = json.loads((out / "manifest.json").read_text())["int8"]
    assert gate["fp32"] == pytest.approx(1.0, abs=1e-6) and gate["drop"] > 0
    assert not gate["written"] and gate["files"] is None and uris["onnx_int8"] is None
    assert "more than int8_max_drop 0" in gate["reason"]
    assert not (out / "onnx" / "model.int8.onnx").exists()
    assert (out / "onnx" / "model.onnx").exists()  # the fp32 file is published all the same
    assert f"No int8 ONNX file: {gate['reason']}." in (out / "README.md").read_text()
    with pytest.raises(FinetunerError, match="has no int8 ONNX model .*more than int8_max_drop"):
        inference.get_model(str(out), is_onnx=True, int8=True)


def test_no_int8_file_without_eval_data_or_when_turned_off(minilm, tmp_path):
    metrics = {"k": 10, "before": {}, "after": {"ndcg@10": 0.5}}
    for name, kwargs, reason in (
        ("none", {}, "no eval data to check it on"),
        ("off", {"int8": False}, "not asked for (parameter int8 is false)"),
    ):
        export(minilm, metrics, str(tmp_path / name), **kwargs)
        gate = json.loads((tmp_path / name / "manifest.json").read_text())["int8"]
        assert gate == {"written": False, "files": None, "reason": reason}
        assert not (tmp_path / name / "onnx" / "model.int8.onnx").exists()


@pytest.mark.parametrize("value", [-1, -0.001, 1.5, float("nan")])
def test_int8_max_drop_out_of_range_is_refused(value):
    with pytest.raises(FinetunerError, match=r"parameter int8_max_drop: .*\[0, 1\]"):
        subset("Int8", ["int8_max_drop"])(int8_max_drop=value)


def test_graphs_with_a_gemm_quantize(tmp_path):
    """An MLP (and any projection head) exports Gemm with transposed weights, whose shape
    annotations onnx's shape inference contradicts; the quantizer starts without them."""
    import onnxruntime as ort

    from finetuner import models
    from finetuner.export.publish import export_onnx
    from finetuner.export.quantize import quantize

    model = models.pretrained(
        lookup("mlp", model_options={"input_size": 64, "hidden_sizes": [32, 16]})
    )
    spec = model.onnx_spec()
    export_onnx(spec, tmp_path / "model.onnx")
    quantize(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    names = list(spec["example"])
    inputs = {n: spec["example"][n].numpy() for n in names}
    fp32, int8 = (
        ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(
            None, inputs
        )[0]
        for f in ("model.onnx", "model.int8.onnx")
    )
    assert fp32.shape == int8.shape == (len(inputs[names[0]]), 16)
    assert not np.array_equal(int8, fp32)  # quantized, and close
    assert cosines(int8, fp32).min() > 0.99
