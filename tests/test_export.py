import json

import numpy as np
import pytest

from finetuner.catalogue import lookup
from finetuner.errors import FinetunerError
from finetuner.export import inference
from finetuner.export.publish import export
from finetuner.io import storage
from finetuner.io.claim import MANIFEST
from finetuner.models import TextModel

TEXTS = ["aardvark", "nocturnal burrowing mammal of Africa", "x", "a longer text " * 5]
METRICS = {"k": 10, "before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.6}}


@pytest.fixture(scope="module")
def minilm():
    return TextModel.pretrained(lookup("minilm-l6-en", max_length=32))


def test_export_to_s3_loads_everywhere(minilm, s3, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("FINETUNER_CACHE", str(tmp_path / "cache"))
    output = f"s3://{s3}/runs/one/"
    uris = export(minilm, METRICS, output)
    assert uris["onnx"] == f"s3://{s3}/runs/one/onnx/model.onnx"

    manifest = json.loads(storage.read_text(uris["manifest"]))
    listed = {f["path"] for f in manifest["files"]}
    assert {"model/model.safetensors", "model/modules.json", "onnx/model.onnx"} <= listed
    assert {"metrics.json", "README.md", "model/finetuner.json"} <= listed
    published = {u.removeprefix(output) for u in storage.list_files(output)}
    assert published == listed | {MANIFEST}
    assert manifest["metrics"] == METRICS and manifest["onnx_max_abs_diff"] <= 1e-4
    assert "0.6000" in storage.read_text(storage.join(output, "README.md"))

    expected = minilm.encode(TEXTS)
    torch_model = inference.get_model(output)
    onnx_model = inference.get_model(output, is_onnx=True)
    np.testing.assert_allclose(inference.encode(torch_model, TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(inference.encode(onnx_model, TEXTS), expected, atol=1e-4)
    st_folder = storage.local_copy(uris["model"])
    st = SentenceTransformer(str(st_folder), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), expected, atol=1e-5)


def test_onnx_has_dynamic_batch_and_sequence_axes(minilm, tmp_path):
    import onnxruntime as ort

    export(minilm, METRICS, str(tmp_path / "out"))
    session = ort.InferenceSession(str(tmp_path / "out" / "onnx" / "model.onnx"))
    for spec in session.get_inputs():
        assert spec.shape == ["batch", "sequence"], spec
    assert session.get_outputs()[0].shape == ["batch", 384]


def test_gem_export_round_trips_through_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = TextModel.pretrained(lookup("minilm-l6-en", pooler="GeM", pooler_p=2.5, max_length=32))
    export(model, METRICS, str(tmp_path / "gem"))
    st = SentenceTransformer(str(tmp_path / "gem" / "model"), trust_remote_code=True)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), atol=1e-5)
    onnx_model = inference.get_model(str(tmp_path / "gem"), is_onnx=True)
    np.testing.assert_allclose(onnx_model.encode(TEXTS), model.encode(TEXTS), atol=1e-4)


def test_an_existing_export_is_never_overwritten(minilm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"the": "user\'s model"}')
    with pytest.raises(FinetunerError, match="already holds an exported model"):
        export(minilm, METRICS, str(out))
    assert (out / MANIFEST).read_text() == '{"the": "user\'s model"}'
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_a_bad_onnx_export_publishes_nothing(minilm, tmp_path, monkeypatch):
    import finetuner.export.publish as export_module

    monkeypatch.setattr(export_module, "ONNX_TOLERANCE", 0.0)  # no export can pass
    with pytest.raises(FinetunerError, match="ONNX export differs from PyTorch"):
        export(minilm, METRICS, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_get_model_refuses_an_export_without_manifest(minilm, tmp_path):
    export(minilm, METRICS, str(tmp_path / "out"))
    (tmp_path / "out" / MANIFEST).unlink()  # as if the publish had been interrupted
    with pytest.raises(FinetunerError, match="not a finished export"):
        inference.get_model(str(tmp_path / "out"))
