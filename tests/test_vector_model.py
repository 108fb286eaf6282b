"""The MLP on vectors: data checks, and a run through `finetuner run`."""

import json
import subprocess
import sys

import numpy as np
import pytest

from finetuner.data import pairs as data
from finetuner.errors import FinetunerError
from finetuner.export import inference


def clustered_pairs(path, n_pairs=96, dim=16, seed=0):
    """Pairs of noisy samples of the same one of 12 random centres: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    rows = []
    for i in range(n_pairs):
        a, b = centres[i % 12] + rng.normal(scale=0.8, size=(2, dim))
        rows.append(" ".join(f"{x:.4f}" for x in a) + "," + " ".join(f"{x:.4f}" for x in b))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "value, ok",
    [("1 2 3", True), ("1 2", False), ("1 2 x", False), ("1 2 nan", False), ("", False)],
)
def test_vector_fields_are_checked(value, ok):
    check = data.vector_checker(3)
    if ok:
        assert check("v.csv", 4, 2, value) == value
    else:
        with pytest.raises(FinetunerError, match="v.csv, line 4, column 2: expected a vector of 3"):
            check("v.csv", 4, 2, value)


def test_mlp_through_finetuner_run(tmp_path):
    csv = clustered_pairs(tmp_path / "vectors.csv")
    output, summary_path = tmp_path / "model", tmp_path / "summary.json"
    options = json.dumps({"input_size": 16, "hidden_sizes": [64, 16]})
    result = subprocess.run(
        [
            sys.executable, "-m", "finetuner", "run", "--model", "mlp", "--model-options",
            options, "--train-data", str(csv), "--val-split", "0.25", "--epochs", "20",
            "--batch-size", "12", "--learning-rate", "3e-3", "--output", str(output),
            "--summary-json", str(summary_path),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads(summary_path.read_text())["metrics"]
    assert metrics["after"]["ndcg@10"] > metrics["before"]["ndcg@10"] + 0.05, metrics
    model = inference.get_model(str(output))
    assert model.spec.output_dim == 16
    vectors = [" ".join(["0.5"] * 16), " ".join(["-1"] * 16)]
    onnx_model = inference.get_model(str(output), is_onnx=True)
    np.testing.assert_allclose(onnx_model.encode(vectors), model.encode(vectors), atol=1e-5)


def test_mlp_needs_its_input_size(tmp_path):
    csv = clustered_pairs(tmp_path / "vectors.csv", n_pairs=8)
    result = subprocess.run(
        [sys.executable, "-m", "finetuner", "run", "--model", "mlp", "--train-data", str(csv),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "parameter input_size: Field required (model mlp)" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "finetuner", "run", "--model", "mlp", "--train-data", str(csv),
         "--model-options", '{"input_size": 15}', "--output", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and f"{csv}, line 1, column 1: expected a vector of 15" in bad.stderr
    assert not (tmp_path / "out").exists()
