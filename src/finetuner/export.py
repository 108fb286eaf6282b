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


def check_output_free(output_uri: str) -> None:
    """Refuse to overwrite a finished export: nothing the user already had is lost."""
    if storage.exists(storage.join(output_uri, MANIFEST)):
        raise FinetunerError(
            f"{output_uri} already holds an exported model ({MANIFEST} exists); "
            "choose a new output location."
        )


def write_sentence_transformers(model, folder: Path) -> None:
    """A folder that `SentenceTransformer(folder)` loads: transformer, pooler, the projection
    head if any (a Dense module), Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    from finetuner.st_modules import GeMPooling

    model.save(folder)
    spec = model.spec
    transformer = Transformer(str(folder), max_seq_length=spec.max_length)
    dim = transformer.get_embedding_dimension()
    if spec.pooler == "GeM":
        pooling = GeMPooling(dim, p=spec.pooler_p, eps=spec.pooler_eps)
    else:
        pooling = Pooling(dim, pooling_mode=spec.pooler)
    modules = [transformer, pooling]
    head = model.embedder.head
    if head is not None:
        weight = head.weight.detach().clone()
        modules.append(
            Dense(dim, spec.output_dim, bias=False, activation_function=None, init_weight=weight)
        )
    modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))


def export_onnx(spec: dict, path: Path) -> dict:
    """Export to ONNX with a model's dynamic axes (its `onnx_spec()`) and check it against
    PyTorch on its check inputs, failing above ONNX_TOLERANCE. Returns the graph's input and
    output names and the max abs difference."""
    import onnxruntime as ort
    import torch
    from torch.export import Dim

    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter's graph optimiser logs every rewrite at INFO; keep step logs readable.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
    module, names = spec["module"].eval().cpu(), list(spec["example"])
    dims = {}  # one Dim object per axis name, shared by the inputs that have it
    dynamic = {
        n: {axis: dims.setdefault(label, Dim(label)) for axis, label in spec["dynamic"][n].items()}
        for n in names
    }
    torch.onnx.export(
        module,
        tuple(spec["example"][n] for n in names),
        str(path),
        input_names=names,
        output_names=[spec["output"]],
        dynamic_shapes=tuple(dynamic[n] for n in names),  # positional, as the inputs
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for inputs in spec["checks"]:
        with torch.inference_mode():
            expected = module(*(inputs[n] for n in names)).numpy()
        got = session.run(None, {n: inputs[n].numpy() for n in names})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > ONNX_TOLERANCE:
        raise FinetunerError(
            f"the ONNX export differs from PyTorch by {worst:.2e} (limit {ONNX_TOLERANCE:g})."
        )
    return {"inputs": names, "output": spec["output"], "max_abs_diff": worst}


def model_card(spec, metrics: dict, onnx: dict) -> str:
    before, after = metrics.get("before", {}), metrics.get("after", {})
    rows = "\n".join(
        f"| {name} | {before.get(name, float('nan')):.4f} | {value:.4f} |"
        for name, value in after.items()
    )
    if spec.family == "text":
        details = f", pooler `{spec.pooler}`, max length {spec.max_length}"
        folder = (
            'a sentence-transformers folder (`SentenceTransformer("model")`) with the weights '
            "as safetensors"
        )
        if spec.pooler == "GeM":
            folder += "; GeM is a finetuner module: load with `trust_remote_code=True`"
    else:
        details = f", pooler `{spec.pooler}`" if spec.family == "cnn" else ""
        folder = "the weights as safetensors"
    if spec.options.get("output_dim"):
        details += ", a linear projection head" + (
            " trained on a frozen backbone" if spec.options.get("freeze") else ""
        )
    if onnx:
        inputs = ", ".join(f"`{name}`" for name in onnx["inputs"])
        onnx_line = (
            f"- `{ONNX_FILE}`: inputs {inputs}, output `{onnx['output']}`; it matches PyTorch "
            f"to {onnx['max_abs_diff']:.1e}."
        )
    else:
        onnx_line = f"- No ONNX export: {spec.architecture} models are served with PyTorch."
    return f"""# {spec.name}, fine-tuned

An embedding model fine-tuned with finetuner from `{spec.upstream}` ({spec.architecture},
{spec.output_dim}-d{details}). Embeddings are L2-normalised: rank by dot product.

## Retrieval on the evaluation data
| metric | pretrained | fine-tuned |
|---|---|---|
{rows}

## Files
- `model/`: {folder}; `finetuner.get_model(uri)` loads it.
{onnx_line}
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
        if model.spec.family == "text":
            write_sentence_transformers(model, stage / "model")
        else:
            model.save(stage / "model")
        # None where a family cannot be exported to ONNX (PointNet++ at full size).
        onnx_spec = model.onnx_spec()
        onnx = export_onnx(onnx_spec, stage / ONNX_FILE) if onnx_spec else None
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (stage / "README.md").write_text(model_card(model.spec, metrics, onnx))
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        manifest = {
            "format": 1,
            "model": model.spec.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "onnx": ONNX_FILE if onnx else None,
            "onnx_max_abs_diff": onnx["max_abs_diff"] if onnx else None,
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
        "onnx": storage.join(output_uri, ONNX_FILE) if onnx else None,
        "manifest": storage.join(output_uri, MANIFEST),
    }
