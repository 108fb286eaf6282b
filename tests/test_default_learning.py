"""The defaults of the families trained from scratch make a small real labeled set learn.

The data sets are bench/default_learning.py's (real Fashion-MNIST images as vectors, real
meshes of assimp-testmodels); the bench runs both families and prints the figures."""

import importlib.util
from pathlib import Path

import pytest

import finetuner

BENCH = Path(__file__).resolve().parents[1] / "bench" / "default_learning.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("default_learning", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlp_default_run_learns_fashion_vectors(bench, tmp_path):
    train, evaluation = bench.build_vectors(tmp_path)
    assert len(train.read_text().splitlines()) == 1000
    assert len(evaluation.read_text().splitlines()) == 200
    run = finetuner.fit(
        "mlp",
        str(train),
        output=str(tmp_path / "model"),
        eval_data=str(evaluation),
        data_options={"is_labeled": True},
        model_options={"input_size": 196},
    )  # learning_rate and epochs auto: the mlp family's own (1e-3, 10 epochs)
    before, after = run.metrics()["before"], run.metrics()["after"]
    assert after["ndcg@10"] > before["ndcg@10"] + 0.05, run.metrics()
    assert after["mrr@10"] > before["mrr@10"], run.metrics()
