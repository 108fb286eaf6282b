"""Export a trained model: a sentence-transformers folder with safetensors, ONNX checked
against PyTorch, metrics and a model card, published with the manifest last."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from finetuner import storage
from finetuner.errors import FinetunerError

MANIFEST = "manifest.json"
ONNX_FILE = "onnx/model.onnx"
ONNX_TOLERANCE = 1e-4
# Texts of varied length and batch sizes that the ONNX check runs through both runtimes.
CHECK_BATCHES = (
    ["a"],
    ["a short query", "a considerably longer document that needs many more tokens to encode"],
    ["x y z"] * 3 + ["one more sentence of middling length"],
)


def check_output_free(output_uri: str) -> None:
    """Refuse to overwrite a finished export: nothing the user already had is lost."""
    if storage.exists(storage.join(output_uri, MANIFEST)):
        raise FinetunerError(
            f"{output_uri} already holds an exported model ({MANIFEST} exists); "
            "choose a new output location."
        )


def write_sentence_transformers(model, folder: Path) -> None:
    """A folder that `SentenceTransformer(folder)` loads: transformer, pooler, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from finetuner.st_modules import GeMPooling

    model.save(folder)
    spec = model.spec
    transformer = Transformer(str(folder), max_seq_length=spec.max_length)
    dim = transformer.get_embedding_dimension()
    if spec.pooler == "GeM":
        pooling = GeMPooling(dim, p=spec.pooler_p, eps=spec.pooler_eps)
    else:
        pooling = Pooling(dim, pooling_mode=spec.pooler)
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(folder))


def export_onnx(model, path: Path) -> float:
    """Export to ONNX with dynamic batch and sequence axes; returns the max abs difference
    from PyTorch on CHECK_BATCHES, failing above ONNX_TOLERANCE."""
    import onnxruntime as ort
    import torch
    from torch.export import Dim

    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter's graph optimiser logs every rewrite at INFO; keep step logs readable.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
    names = model.input_names
    example = model.tokenize(CHECK_BATCHES[1])
    batch, sequence = Dim("batch"), Dim("sequence")
    embedder = model.embedder.eval().cpu()
    torch.onnx.export(
        embedder,
        tuple(example[n] for n in names),
        str(path),
        input_names=names,
        output_names=["sentence_embedding"],
        dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for texts in CHECK_BATCHES:
        inputs = model.tokenize(texts)
        with torch.inference_mode():
            expected = embedder(**inputs).numpy()
        got = session.run(None, {n: inputs[n].numpy() for n in names})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > ONNX_TOLERANCE:
        raise FinetunerError(
            f"the ONNX export differs from PyTorch by {worst:.2e} (limit {ONNX_TOLERANCE:g})."
        )
    return worst


def model_card(spec, metrics: dict, onnx_diff: float) -> str:
    before, after = metrics.get("before", {}), metrics.get("after", {})
    gem_note = (
        "\n  GeM pooling is a finetuner module: load with `trust_remote_code=True` where"
        " finetuner is installed."
        if spec.pooler == "GeM"
        else ""
    )
    rows = "\n".join(
        f"| {name} | {before.get(name, float('nan')):.4f} | {value:.4f} |"
        for name, value in after.items()
    )
    return f"""# {spec.name}, fine-tuned

An embedding model fine-tuned with finetuner from `{spec.upstream}` ({spec.architecture},
{spec.output_dim}-d, pooler `{spec.pooler}`, max length {spec.max_length}). Embeddings are
L2-normalised: rank by dot product.

## Retrieval on the evaluation data
| metric | pretrained | fine-tuned |
|---|---|---|
{rows}

## Files
- `model/`: a sentence-transformers folder (`SentenceTransformer("model")`) with the
  weights as safetensors; `finetuner.get_model(uri)` loads it too.{gem_note}
- `{ONNX_FILE}`: inputs {", ".join("`" + n + "`" for n in ("input_ids", "attention_mask"))} (and
  `token_type_ids` where the tokenizer makes them), output `sentence_embedding`; it matches
  PyTorch to {onnx_diff:.1e}.
- `metrics.json`, and `{MANIFEST}`, written last: an export without it is incomplete.
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(model, metrics: dict, output_uri: str) -> dict:
    """Write everything to a local staging folder, check it, then publish to output_uri."""
    check_output_free(output_uri)
    with tempfile.TemporaryDirectory(prefix="finetuner-export-") as tmp:
        stage = Path(tmp)
        write_sentence_transformers(model, stage / "model")
        onnx_diff = export_onnx(model, stage / ONNX_FILE)
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (stage / "README.md").write_text(model_card(model.spec, metrics, onnx_diff))
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        manifest = {
            "format": 1,
            "model": model.spec.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "onnx_max_abs_diff": onnx_diff,
            "metrics": metrics,
            "files": [
                {"path": str(p.relative_to(stage)), "bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in files
            ],
        }
        storage.upload_dir(stage, output_uri)
        # Last: its presence is what marks the export as whole.
        storage.write_text(storage.join(output_uri, MANIFEST), json.dumps(manifest, indent=2))
    return {
        "model": storage.join(output_uri, "model") + "/",
        "onnx": storage.join(output_uri, ONNX_FILE),
        "manifest": storage.join(output_uri, MANIFEST),
    }
