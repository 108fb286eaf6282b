"""mesh-to-mesh through `finetuner run`: real meshes from Debian's assimp-testmodels."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from finetuner.errors import FinetunerError
from finetuner.export import inference

MODELS = "/usr/share/assimp/models"
# The same object saved in different formats: real positives for each other.
PAIRS = [
    ("OFF/Wuson.off", "STL/Wuson.stl"),
    ("PLY/Wuson.ply", "OBJ/WusonOBJ.obj"),
    ("OBJ/spider.obj", "STL/Spider_ascii.stl"),
    ("STL/Spider_binary.stl", "OBJ/spider.obj"),
    ("OFF/Cube.off", "PLY/cube.ply"),
    ("PLY/cube_binary.ply", "OFF/Cube.off"),
    ("STL/Wuson.stl", "PLY/Wuson.ply"),
    ("STL/Spider_ascii.stl", "STL/Spider_binary.stl"),
]


def test_pointnet_through_finetuner_run(tmp_path):
    rows = []
    for pair in PAIRS:
        for ref in pair:
            (tmp_path / ref).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f"{MODELS}/{ref}", tmp_path / ref)
        rows.append(",".join(pair))
    (tmp_path / "meshes.csv").write_text("\n".join(rows) + "\n")
    output, summary_path = tmp_path / "model", tmp_path / "summary.json"
    options = json.dumps({"num_points": 1024, "augment": True})
    result = subprocess.run(
        [
            sys.executable, "-m", "finetuner", "run", "--model", "pointnet-base",
            "--model-options", options, "--train-data", str(tmp_path / "meshes.csv"),
            "--val-split", "0.25", "--epochs", "2", "--batch-size", "4",
            "--learning-rate", "1e-3", "--output", str(output),
            "--summary-json", str(summary_path),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["artifacts"]["onnx"] is None  # PointNet++ is served with PyTorch
    assert 0 <= summary["metrics"]["after"]["ndcg@10"] <= 1
    model = inference.get_model(str(output))
    meshes = [str(tmp_path / "OFF/Wuson.off"), str(tmp_path / "PLY/cube.ply")]
    emb = inference.encode(model, meshes)
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(inference.encode(model, meshes), emb)  # repeatable
    with pytest.raises(FinetunerError, match="has no ONNX model"):
        inference.get_model(str(output), is_onnx=True)
