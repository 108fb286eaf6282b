"""The family seam end to end: a family declared outside the finetuner package (the test's
toy_family module, as docs/adding-a-backbone.md describes) registers itself from the test,
and the finetune pipeline trains, evaluates and exports it through kfp.local, each step in
a process of its own that finds the family through FINETUNER_PLUGINS."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetuner import catalogue
from finetuner.errors import FinetunerError
from finetuner.models.registry import PLUGINS_ENV, families, get_family

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def toy(monkeypatch):
    """The toy family and its catalogue row, registered in this process; the steps import
    the same module through FINETUNER_PLUGINS, from the tests folder on PYTHONPATH."""
    monkeypatch.syspath_prepend(str(TESTS))
    import toy_family

    toy_family.register()
    monkeypatch.setenv(PLUGINS_ENV, "toy_family")
    path = [str(TESTS), *filter(None, [__import__("os").environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", ":".join(path))
    yield toy_family
    catalogue.CATALOGUE.remove(toy_family.ENTRY)  # other tests count the built-in rows


def toy_pairs(path: Path, n: int = 48) -> Path:
    colours = ["red", "blue", "green", "black", "white", "pink", "grey", "brown"]
    things = ["shoes", "dress", "shirt", "bag", "coat", "hat"]
    rows = ["query,document"]
    for i in range(n):
        colour, thing = colours[i % len(colours)], things[(i // len(colours)) % len(things)]
        rows.append(f"{colour} {thing},a {thing} in {colour} for every day")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_toy_family_registers_and_looks_up(toy):
    assert "toy" in families() and get_family("toy").query_kind == "text"
    spec = catalogue.lookup("toy-bow", model_options={"dim": 8})
    assert (spec.family, spec.output_dim, spec.weights) == ("toy", 8, "scratch")
    assert [r["option"] for r in catalogue.options.list_model_options("toy-bow")] == [
        "buckets",
        "dim",
    ]
    with pytest.raises(FinetunerError, match="toy-bow has no option 'pooler'.*nothing else"):
        catalogue.lookup("toy-bow", pooler="GeM")
    with pytest.raises(FinetunerError, match="already names a model"):
        catalogue.register_entry(toy.ENTRY)


def test_an_unknown_family_lists_the_registered_ones():
    with pytest.raises(
        FinetunerError, match="unknown model family 'nope'. Registered families: clip, cnn, .*text"
    ):
        get_family("nope")


def test_a_plugin_that_cannot_import_is_named(monkeypatch):
    monkeypatch.setenv(PLUGINS_ENV, "no_such_plugin_module")
    with pytest.raises(FinetunerError, match="FINETUNER_PLUGINS: cannot import .*no_such"):
        catalogue.get_entry("mlp")


def test_the_toy_family_trains_evaluates_and_exports_through_the_pipeline(toy, tmp_path):
    from finetuner import fit
    from finetuner.export import inference

    output = tmp_path / "out"
    run = fit(
        "toy-bow",
        str(toy_pairs(tmp_path / "pairs.csv")),
        str(output),
        val_split=0.25,
        epochs=3,
        batch_size=8,
        learning_rate=0.05,
        model_options={"dim": 8},
    )
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["after"]) == set(metrics["before"]) and "ndcg@10" in metrics["after"]
    assert run is not None
    model = inference.get_model(str(output))
    assert type(model).__name__ == "ToyModel" and model.spec.output_dim == 8
    # Training moved the weights away from the family's seeded start.
    start = toy.ToyModel.pretrained(model.spec.model_copy(update={"weights": "scratch"}))
    moved = (model.embedder.embedding.weight - start.embedder.embedding.weight).abs().max()
    assert moved.item() > 1e-3
    texts = ["red shoes", "a coat in grey for every day", "unknown words here"]
    onnx_model = inference.get_model(str(output), is_onnx=True)
    np.testing.assert_allclose(onnx_model.encode(texts), model.encode(texts), atol=1e-5)
    assert "toy-bow, fine-tuned" in (output / "README.md").read_text()


def test_describe_models_loads_no_torch():
    """The catalogue and the registry are light: lookup imports no torch."""
    code = (
        "import sys; import finetuner.catalogue as c; c.lookup('minilm-l6-en'); "
        "c.lookup('resnet-base', resolve_weights=False); c.describe_models(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'open_clip', 'timm', 'torchvision')]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
