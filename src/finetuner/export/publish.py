"""Export a trained model: a sentence-transformers folder with safetensors, ONNX checked
against PyTorch, metrics and a model card, published with the manifest last."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.io.claim import MANIFEST, check_output_free
from finetuner.io.staging import stage_dir
from finetuner.models.folder import ADAPTER_DIR
from finetuner.models.registry import get_family, resolve

ONNX_TOLERANCE = 1e-4


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


def _onnx_line(info: dict | None, architecture: str) -> str:
    if not info:
        return f"- No ONNX export: {architecture} models are served with PyTorch."
    inputs = ", ".join(f"`{n}`" for n in info["inputs"])
    return (
        f"- `{info['file']}`: inputs {inputs}, output `{info['output']}`; it matches PyTorch "
        f"to {info['max_abs_diff']:.1e}."
    )


def _adapter_config(adapter: Path | None) -> dict | None:
    if adapter is None:
        return None
    return json.loads((adapter / "adapter_config.json").read_text())


def _adapter_line(lora: dict, spec) -> str:
    base = "`SentenceTransformer(base)`" if spec.family == "text" else "the base model"
    how = (
        "`peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), path)` or "
        "sentence-transformers' `model.load_adapter(path)`"
        if spec.family == "text"
        else "`peft.PeftModel.from_pretrained(base, path)`"
    )
    head = ""
    if spec.options.get("output_dim"):  # new weights, trained in full: not in the adapter
        head = " The projection head is no part of the adapter: it trained in full."
    return (
        f"- `model/{ADAPTER_DIR}/`: the LoRA adapter alone (rank {lora['r']}, alpha "
        f"{lora['lora_alpha']:g}), to load onto the pretrained `{spec.upstream}` with {how} "
        f"({base}); the model in `model/` has it merged.{head}"
    )


def model_card(
    spec, metrics: dict, onnx: dict[str, dict], int8: dict | None = None, lora: dict | None = None
) -> str:
    """The README of an export. `onnx` maps each exported part to its ONNX check; `int8` is
    the int8 gate's record (finetuner.export.quantize); `lora`, a LoRA run's adapter_config."""
    from finetuner.export.quantize import card_line

    before, after = metrics.get("before", {}), metrics.get("after", {})
    rows = "\n".join(
        f"| {name} | {before.get(name, float('nan')):.4f} | {value:.4f} |"
        for name, value in after.items()
    )
    family = get_family(spec.family)
    details, folder = family.card(spec) if family.card else ("", "the weights as safetensors")
    if spec.options.get("output_dim"):
        details += ", a linear projection head" + (
            " trained on a frozen backbone" if spec.options.get("freeze") else ""
        )
    if family.towers:  # exported and loaded apart, not as one model
        files = [f"- `model/`: {folder}."]
        for tower in family.towers:
            files.append(
                f"- `{tower}/`: the {tower.removeprefix('clip-')} tower alone; "
                f'`finetuner.get_model(uri, select_model="{tower}")` loads it.'
            )
            files.append(_onnx_line(onnx.get(tower), spec.architecture))
    else:
        files = [f"- `model/`: {folder}; `finetuner.get_model(uri)` loads it."]
        files.append(_onnx_line(onnx.get("model"), spec.architecture))
    if int8 is not None and onnx:
        files.append(card_line(int8))
    if lora:
        files.insert(1, _adapter_line(lora, spec))
        details += ", trained as a LoRA adapter"
    listing = "\n".join(files)
    return f"""# {spec.name}, fine-tuned

An embedding model fine-tuned with finetuner from `{spec.upstream}` ({spec.architecture},
{spec.output_dim}-d{details}). Embeddings are L2-normalised: rank by dot product.

## Evaluation on the held-out data
| metric | pretrained | fine-tuned |
|---|---|---|
{rows}

## Files
{listing}
- `metrics.json`, and `{MANIFEST}`, written last: an export without it is incomplete.
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(
    model,
    metrics: dict,
    output_uri: str,
    run_id: str | None = None,
    eval_data=None,
    int8: bool = True,
    int8_max_drop: float = 0.005,
    adapter: Path | None = None,
) -> dict:
    """Write everything to a local staging folder, check it, then publish to output_uri.

    With `run_id`, that run must hold the claim on output_uri (finetuner.io.claim) until the
    manifest is written; the finished export then needs the claim no more. With `int8`, each
    ONNX file gets an int8 twin, kept when its metric on `eval_data` (a finetuner.data
    Dataset) drops by at most int8_max_drop (finetuner.export.quantize). `adapter`: a LoRA
    run's adapter folder, published as model/adapter/ beside the merged model."""
    import shutil

    from finetuner.export import quantize
    from finetuner.io import claim

    check_output_free(output_uri)
    with stage_dir("export") as stage:
        # A family may write its export in a format of its own (text: sentence-transformers).
        writer = get_family(model.spec.family).export
        if writer is not None:
            resolve(writer)(model, stage / "model")
        else:
            model.save(stage / "model")
        if adapter is not None:
            shutil.copytree(adapter, stage / "model" / ADAPTER_DIR)
        # A two-tower model (CLIP) also exports each tower on its own, for inference.
        towers = model.towers() if hasattr(model, "towers") else {}
        for name, tower in towers.items():
            tower.save(stage / name)
        onnx = {}
        for name, part in ({"model": model} | towers).items():
            # None where a part cannot be exported to ONNX (PointNet++ at full size).
            if (spec := part.onnx_spec()) is not None:
                file = f"onnx/{name}.onnx"
                onnx[name] = {"file": file, **export_onnx(spec, stage / file)}
        if int8:
            gate = quantize.export_int8(model, stage, onnx, eval_data, metrics, int8_max_drop)
        else:
            gate = quantize.skipped("not asked for (parameter int8 is false)")
        (stage / "metrics.json").write_text(json.dumps({**metrics, "int8": gate}, indent=2))
        lora = _adapter_config(adapter)
        (stage / "README.md").write_text(model_card(model.spec, metrics, onnx, gate, lora))
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        manifest = {
            "format": 1,
            "model": model.spec.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            # The ONNX file, or for a two-tower model each tower's; None when there is none.
            "onnx": onnx_files(onnx, towers),
            "onnx_max_abs_diff": max((i["max_abs_diff"] for i in onnx.values()), default=None),
            # The int8 file(s) beside them, or None, and why (finetuner.export.quantize).
            "int8": gate,
            "metrics": metrics,
            "files": [
                {"path": str(p.relative_to(stage)), "bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in files
            ],
        }
        if run_id is not None:
            claim.check_held(output_uri, run_id)
        storage.upload_dir(stage, output_uri)
        if run_id is not None:
            claim.check_held(output_uri, run_id)
        # Last: its presence is what marks the export as whole.
        storage.write_text(storage.join(output_uri, MANIFEST), json.dumps(manifest, indent=2))
    if run_id is not None:
        claim.release(output_uri, run_id)
    return artifact_uris(output_uri, manifest)


def onnx_files(onnx: dict[str, dict], towers: dict) -> str | dict[str, str] | None:
    if towers:
        return {name: info["file"] for name, info in onnx.items()}
    return onnx["model"]["file"] if onnx else None


def artifact_uris(output_uri: str, manifest: dict) -> dict:
    """The URIs of an export's model folder, ONNX file(s), int8 ONNX file(s) and manifest."""

    def uris(files):
        if isinstance(files, dict):
            return {name: storage.join(output_uri, file) for name, file in files.items()}
        return storage.join(output_uri, files) if files else None

    return {
        "model": storage.join(output_uri, "model") + "/",
        "onnx": uris(manifest["onnx"]),
        # An export made before the int8 files has no "int8".
        "onnx_int8": uris((manifest.get("int8") or {}).get("files")),
        "manifest": storage.join(output_uri, MANIFEST),
    }
