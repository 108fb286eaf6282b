"""The projection head (option output_dim) and freeze, on a tiny BERT and efficientnet-lite0."""

import numpy as np
import pytest
import torch

from finetuner import models
from finetuner.catalogue import lookup
from finetuner.export import inference
from finetuner.export.publish import export, export_onnx
from finetuner.models import TextModel
from finetuner.training.loop import TrainConfig, train

TEXTS = ["aardvark", "nocturnal burrowing mammal of Africa", "x", "a longer text " * 5]
PAIRS = [(f"query number {i}", f"the document that answers query {i}") for i in range(12)]
METRICS = {"k": 10, "before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.6}}


@pytest.fixture
def text_spec(tiny_bert, tmp_path):
    """A bert-base-en spec on the tiny BERT's folder, with these model options."""

    def make(**options):
        folder = tiny_bert(tmp_path / "bert")
        spec = lookup("bert-base-en", max_length=16, model_options=options, resolve_weights=False)
        return spec.model_copy(update={"weights": str(folder)})

    return make


def test_text_head_projects_to_output_dim_and_starts_the_same_every_time(text_spec):
    spec = text_spec(output_dim=8)
    model = TextModel.pretrained(spec)
    emb = model.encode(TEXTS)
    assert spec.output_dim == 8 and emb.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Evaluation builds the pretrained model again: it must be the one training starts from.
    np.testing.assert_array_equal(TextModel.pretrained(spec).encode(TEXTS), emb)


def test_text_head_is_saved_exported_and_loaded(text_spec, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = TextModel.pretrained(text_spec(output_dim=8, pooler="GeM"))
    with torch.no_grad():  # as if trained: the saved head must be this one, not a fresh one
        model.embedder.head.weight.mul_(torch.linspace(0.5, 2.0, 8)[:, None])
    expected = model.encode(TEXTS)
    np.testing.assert_allclose(
        TextModel.load(model.save(tmp_path / "saved")).encode(TEXTS), expected, atol=1e-6
    )

    export(model, METRICS, str(tmp_path / "out"))  # checks ONNX against PyTorch itself
    st = SentenceTransformer(str(tmp_path / "out" / "model"), device="cpu", trust_remote_code=True)
    assert [type(m).__name__ for m in st][2:] == ["Dense", "Normalize"]
    np.testing.assert_allclose(st.encode(TEXTS), expected, atol=1e-5)
    onnx_model = inference.get_model(str(tmp_path / "out"), is_onnx=True)
    np.testing.assert_allclose(onnx_model.encode(TEXTS), expected, atol=1e-4)


def _train_a_few_steps(model):
    before = {k: v.clone() for k, v in model.embedder.state_dict().items()}
    config = TrainConfig(batch_size=4, learning_rate=1e-2, warmup_ratio=0, log_every=100)
    train(model, PAIRS, config, device="cpu")
    after = model.embedder.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_freeze_trains_only_the_head(text_spec):
    model = TextModel.pretrained(text_spec(output_dim=8, freeze=True))
    assert _train_a_few_steps(model) == {"head.weight"}
    model.embedder.train()
    assert model.embedder.training and not model.embedder.backbone.training  # no dropout


def test_without_freeze_the_backbone_trains_with_the_head(text_spec):
    changed = _train_a_few_steps(TextModel.pretrained(text_spec(output_dim=8)))
    assert "head.weight" in changed
    assert "backbone.encoder.layer.0.attention.self.query.weight" in changed


@pytest.fixture(scope="module")
def lite0_head_spec():
    options = {"output_dim": 16, "freeze": True, "preprocess_options": {"image_size": 64}}
    return lookup("efficientnet-lite0", pooler="GeM", model_options=options)


def test_cnn_head_shape_onnx_and_round_trip(lite0_head_spec, tmp_path):
    model = models.pretrained(lite0_head_spec)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        emb = model.embedder(images)
        assert emb.shape == (3, 16)
        torch.testing.assert_close(models.pretrained(lite0_head_spec).embedder(images), emb)
        model.embedder.head.weight.mul_(2.0)  # as if trained
        model.embedder.pool.p.fill_(2.5)
        emb = model.embedder(images)
        loaded = models.load(model.save(tmp_path / "m"))
        torch.testing.assert_close(loaded.embedder(images), emb, atol=1e-6, rtol=0)
    trainable = [n for n, p in model.embedder.named_parameters() if p.requires_grad]
    assert trainable == ["pool.p", "head.weight"]
    onnx_spec = model.onnx_spec()
    assert onnx_spec["example"]["images"].shape[1:] == (3, 64, 64)  # the image_size option
    assert export_onnx(onnx_spec, tmp_path / "m.onnx")["max_abs_diff"] <= 1e-4


def test_cnn_head_starts_fresh_on_mirror_weights(lite0_head_spec, tmp_path, monkeypatch):
    """A mirror holds the upstream trunk only: no head, no GeM p."""
    from finetuner.catalogue import get_entry, weights
    from finetuner.models.cnn_net import build_cnn
    from finetuner.models.folder import WEIGHTS_FILE, save_weights

    (tmp_path / "mirror" / "efficientnet-lite0").mkdir(parents=True)
    save_weights(
        build_cnn(get_entry("efficientnet-lite0").builder, "package"),
        tmp_path / "mirror" / "efficientnet-lite0" / WEIGHTS_FILE,
    )
    monkeypatch.setenv(weights.MIRROR_ENV, str(tmp_path / "mirror"))
    options = {"output_dim": 16, "preprocess_options": {"image_size": 64}}
    spec = lookup("efficientnet-lite0", pooler="GeM", model_options=options)
    assert spec.weights.startswith(str(tmp_path / "mirror"))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        from_mirror = models.pretrained(spec).embedder(images)
        from_package = models.pretrained(lite0_head_spec).embedder(images)
    torch.testing.assert_close(from_mirror, from_package)


@pytest.mark.parametrize("name, size", [("resnet-base", 96), ("efficientnet-lite0", 48)])
def test_image_size_sets_the_crop(name, size):
    from PIL import Image

    from finetuner.models.cnn_net import image_transform

    spec = lookup(name, model_options={"image_size": size}, resolve_weights=False)
    assert image_transform(spec)(Image.new("RGB", (300, 200))).shape == (3, size, size)
