"""Build time, parameter count and peak memory of every catalogue backbone at full size.

Each model is built with random weights (no downloads) in a fresh child process, so its
peak RSS is its own; the figure includes Python, torch and the library that builds it.

    python bench/build_models.py            # every buildable entry, a table, results JSON
    python bench/build_models.py --model resnet-base --json-out r.json   # one (the child)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "build_models.json"
MODELS = [
    "bert-base-en", "sbert-base-en", "minilm-l6-en",
    "resnet-base", "resnet-large", "efficientnet_b0", "efficientnet-base",
    "efficientnet-large", "efficientnet-lite0",
    "clip-base-en", "clip-large-en", "clip-base-multi",
    "pointnet-base", "mlp",
]  # fmt: skip
# Architecture configs of the hub models, so that they build offline with random weights.
TEXT_CONFIGS = {
    "bert-base-en": ("BertConfig", {}),
    "sbert-base-en": ("DistilBertConfig", {}),
    "minilm-l6-en": ("BertConfig", dict(hidden_size=384, num_hidden_layers=6,
                                        num_attention_heads=12, intermediate_size=1536)),
}  # fmt: skip


def build(name: str):
    """The embedding network of a catalogue entry with random weights, and a sample input."""
    import torch

    if name in TEXT_CONFIGS:
        import transformers

        config_class, kwargs = TEXT_CONFIGS[name]
        model = transformers.AutoModel.from_config(getattr(transformers, config_class)(**kwargs))
        return model, {"input_ids": torch.randint(1000, 2000, (2, 32))}
    if name == "pointnet-base":
        from finetuner.models.pointnet_net import build_pointnet

        return build_pointnet(), (torch.rand(2, 2048, 3) * 2 - 1,)
    if name == "mlp":
        from finetuner.models.mlp_net import MLP

        return MLP(input_size=512, hidden_sizes=(512, 256)), (torch.randn(2, 512),)
    if name.startswith("clip"):
        from finetuner.models.clip_net import build_clip

        clip = build_clip(name)
        return clip.vision_tower, (torch.randn(2, 3, clip.image_size, clip.image_size),)
    from finetuner.catalogue import get_entry
    from finetuner.models.cnn_net import build_cnn

    return build_cnn(get_entry(name).builder), (torch.randn(2, 3, 224, 224),)


def child(name: str, json_out: str) -> None:
    import torch

    start = time.perf_counter()
    model, sample = build(name)
    build_seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(**sample) if isinstance(sample, dict) else model(*sample)
        forward_seconds = time.perf_counter() - start
    out = getattr(out, "last_hidden_state", out)
    result = {
        "model": name,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_s": build_seconds,
        "forward_batch2_s": forward_seconds,
        "output_dim": int(out.shape[-1]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(json_out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="measure one model in this process (child)")
    parser.add_argument("--json-out", help="with --model: where the result goes")
    args = parser.parse_args()
    if args.model:
        child(args.model, args.json_out)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            out = f"{tmp}/{name}.json"
            subprocess.run(
                [sys.executable, __file__, "--model", name, "--json-out", out], check=True
            )
            rows.append(json.loads(Path(out).read_text()))
            r = rows[-1]
            print(
                f"{name:20} {r['parameters_m']:8.1f}M {r['build_s']:7.2f}s "
                f"{r['forward_batch2_s']:7.2f}s {r['output_dim']:6d} {r['peak_rss_mib']:8.0f} MiB",
                flush=True,
            )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
