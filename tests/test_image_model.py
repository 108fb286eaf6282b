"""Image models through the steps' model interface: build, train, save, load, export."""

from pathlib import Path

import numpy as np
import pytest

from finetuner import models
from finetuner.catalogue import lookup
from finetuner.data import pairs as data
from finetuner.errors import FinetunerError
from finetuner.evaluation.evaluate import evaluate
from finetuner.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def lite0_spec():
    return lookup("efficientnet-lite0")


def test_pairs_resolve_image_paths_against_the_csv(fashion_pairs):
    csv = fashion_pairs(6)
    pairs = data.read_pairs(str(csv), field=data.resolve_media)
    assert len(pairs) == 6
    assert all(p.startswith(str(csv.parent / "images")) for pair in pairs for p in pair)


@pytest.mark.parametrize(
    "row, message",
    [
        ("images/missing.png,images/00000.png", "images/missing.png does not exist"),
        ("../secret.png,images/00000.png", "must be a path inside the data file's folder"),
        ("/etc/passwd,images/00000.png", "must be a path inside the data file's folder"),
    ],
)
def test_bad_image_references_name_file_line_and_column(fashion_pairs, row, message):
    csv = fashion_pairs(2)
    csv.write_text(csv.read_text() + row + "\n")
    with pytest.raises(FinetunerError) as err:
        data.read_pairs(str(csv), field=data.resolve_media)
    assert f"{csv}, line 3, column 1" in str(err.value) and message in str(err.value)


def test_lite0_learns_fashion_mnist_pairs(fashion_pairs, lite0_spec):
    """(Export and ONNX of image models: tests/test_pipeline.py, through `finetuner run`.)"""
    pairs = data.read_pairs(str(fashion_pairs(12)), field=data.resolve_media)
    eval_set = data.EvalSet.from_pairs(pairs)
    model = models.pretrained(lite0_spec)
    assert model.encode(eval_set.queries[:2]).shape == (2, 1280)
    before = evaluate(model, eval_set)["ndcg@10"]
    train(model, pairs, TrainConfig(epochs=2, batch_size=6, learning_rate=1e-4, log_every=100))
    after = evaluate(model, eval_set)["ndcg@10"]
    assert after > before, (before, after)


def test_images_decode_in_workers_and_a_bad_one_is_skipped_not_fatal(fashion_pairs, lite0_spec):
    """Preprocess checks every image; one spoiled after that is skipped at training time,
    with its row, and counted: the DataLoader workers carry on."""
    pairs = data.read_pairs(str(fashion_pairs(12)), field=data.resolve_media)
    Path(pairs[3][1]).write_bytes(b"spoiled after preprocess")
    model = models.pretrained(lite0_spec)
    config = TrainConfig(epochs=1, batch_size=6, learning_rate=1e-4, num_workers=2)
    result = train(model, pairs, config)
    assert result["items_skipped"] == 1 and result["steps"] == 2


def test_image_model_saves_and_loads(lite0_spec, fashion_pairs, tmp_path):
    images = [
        p for pair in data.read_pairs(str(fashion_pairs(2)), field=data.resolve_media) for p in pair
    ]
    model = models.pretrained(lite0_spec)
    model.save(tmp_path / "m")
    np.testing.assert_allclose(
        models.load(tmp_path / "m").encode(images), model.encode(images), atol=1e-6
    )


def test_a_model_folder_of_an_earlier_version_loads(lite0_spec, fashion_pairs, tmp_path):
    """Before the families declared themselves, a folder's spec had no builder nor item
    kinds, and the trunk's weights were an nn.Sequential's (trunk.0.weight ...)."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    images = [
        p for pair in data.read_pairs(str(fashion_pairs(2)), field=data.resolve_media) for p in pair
    ]
    model = models.pretrained(lite0_spec)
    folder = tmp_path / "m"
    model.save(folder)
    config = json.loads((folder / "finetuner.json").read_text())
    for key in ("builder", "query_kind", "document_kind"):
        del config["spec"][key]
    (folder / "finetuner.json").write_text(json.dumps(config))
    trunk = model.embedder.trunk  # timm's model: the old cut was its top modules in a row
    old = torch.nn.Sequential(trunk.conv_stem, trunk.bn1, trunk.blocks, trunk.conv_head, trunk.bn2)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()}
    state = {k: v for k, v in state.items() if not k.startswith("trunk.")}
    state |= {f"trunk.{k}": v.contiguous() for k, v in old.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    loaded = models.load(folder)
    assert loaded.spec.query_kind == "image" and loaded.spec.builder == ""
    np.testing.assert_allclose(loaded.encode(images), model.encode(images), atol=1e-6)


def test_cnn_weights_load_from_a_model_mirror(tmp_path, monkeypatch, fashion_pairs):
    """efficientnet_b0 has no offline weights; a mirror folder supplies them."""
    import torch

    from finetuner.catalogue import get_entry, weights
    from finetuner.models import cnn_net as vision
    from finetuner.models.folder import save_weights

    torch.manual_seed(1)
    saved = vision.build_cnn(get_entry("efficientnet_b0").builder).eval()
    (tmp_path / "mirror" / "efficientnet_b0").mkdir(parents=True)
    save_weights(saved, tmp_path / "mirror" / "efficientnet_b0" / "model.safetensors")
    monkeypatch.setenv(weights.MIRROR_ENV, str(tmp_path / "mirror"))

    spec = lookup("efficientnet_b0")
    assert spec.weights == f"{tmp_path / 'mirror'}/efficientnet_b0/"
    model = models.pretrained(spec)
    images = [
        p for pair in data.read_pairs(str(fashion_pairs(1)), field=data.resolve_media) for p in pair
    ]
    with torch.no_grad():
        expected = saved(model.pixels(images)).numpy()
    np.testing.assert_allclose(model.encode(images), expected, atol=1e-6)
