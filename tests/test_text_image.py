"""Text-to-image: CLIP trained on Fashion-MNIST image-caption pairs, exported per tower."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FASHION_CLASSES, fashion_mnist

from finetuner.catalogue import lookup, weights
from finetuner.data import pairs as data
from finetuner.errors import FinetunerError
from finetuner.io import storage


@pytest.fixture
def captions(tmp_path):
    """Fashion-MNIST PNGs and a CSV of (caption, image) rows; image_first swaps columns."""

    def make(n: int = 24, image_first: bool = False, name: str = "captions.csv"):
        from PIL import Image

        images, labels = fashion_mnist(n)
        (tmp_path / "images").mkdir(exist_ok=True)
        rows = ["text,image" if not image_first else "image,text"]
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = f"images/{i:05d}.png"
            Image.fromarray(image).save(tmp_path / path)
            caption = f"a photo of a {FASHION_CLASSES[label]}"
            rows.append(f"{path},{caption}" if image_first else f"{caption},{path}")
        (tmp_path / name).write_text("\n".join(rows) + "\n")
        return tmp_path / name

    return make


@pytest.fixture
def tiny_clip_mirror(tmp_path, monkeypatch):
    """A model mirror holding a tiny clip-base-en (random weights, OpenAI tokenizer)."""
    import torch

    from finetuner.models.clip_net import build_clip, save_clip

    torch.manual_seed(0)
    save_clip(build_clip("clip-base-en", size="tiny"), tmp_path / "mirror" / "clip-base-en")
    monkeypatch.setenv(weights.MIRROR_ENV, str(tmp_path / "mirror"))
    return tmp_path / "mirror"


def test_rows_come_back_as_text_then_image_in_either_column_order(captions):
    spec = lookup("clip-base-en", resolve_weights=False)
    pairs = data.read_model_pairs(str(captions(4)), spec)
    swapped = data.read_model_pairs(str(captions(4, image_first=True, name="b.csv")), spec)
    assert pairs == swapped
    assert pairs[0][0].startswith("a photo of a ") and pairs[0][1].endswith("images/00000.png")


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a.png,b.png"], "line 1: text-to-image data needs one text column and one image "
         "column.*both columns"),
        (["a cat,a dog"], "line 1: .*neither column"),
        (["a bag,images/00000.png", "a coat,a sandal"], "line 2, column 2: expected an image"),
        (["a bag,images/nothere.png"], "line 1, column 2: .*nothere.png does not exist"),
        (["a bag,../images/00000.png"], "line 1, column 2: .*must be a path inside"),
    ],
)  # fmt: skip
def test_bad_text_image_rows_name_line_and_column(captions, rows, message):
    folder = captions(1).parent
    (folder / "bad.csv").write_text("\n".join(rows) + "\n")
    spec = lookup("clip-base-en", resolve_weights=False)
    with pytest.raises(FinetunerError, match=message):
        data.read_model_pairs(str(folder / "bad.csv"), spec)


def test_clip_options_and_losses_are_checked(tiny_clip_mirror):
    from finetuner.orchestration.steps import catalogue_lookup

    d = dict(pooler="auto", pooler_p="auto", pooler_eps="auto", max_length="auto")
    assert catalogue_lookup("clip-base-en", **{**d, "loss": "CLIPLoss"}) is not None
    assert catalogue_lookup("clip-base-en", **{**d, "loss": "auto"}) is not None
    # Given is given, even when it is the usual default of other models.
    with pytest.raises(FinetunerError, match="parameter pooler: clip-base-en has no option"):
        catalogue_lookup("clip-base-en", **{**d, "pooler": "mean", "loss": "CLIPLoss"})
    with pytest.raises(
        FinetunerError,
        match="parameter pooler: clip-base-en has no option 'pooler' .CLIP towers pool",
    ):
        catalogue_lookup("clip-base-en", **{**d, "pooler": "GeM", "loss": "CLIPLoss"})
    with pytest.raises(FinetunerError, match="clip models train with CLIPLoss only"):
        catalogue_lookup("clip-base-en", **d, loss="TripletMarginLoss")
    with pytest.raises(FinetunerError, match="CLIPLoss trains CLIP models"):
        catalogue_lookup("minilm-l6-en", **d, loss="CLIPLoss")


def test_no_clip_weights_offline_names_every_place_and_the_mirror_command(monkeypatch):
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    with pytest.raises(FinetunerError) as err:
        lookup("clip-large-en")
    message = str(err.value)
    assert "open_clip:clip-large-en" in message
    assert "finetuner mirror-models clip-large-en --to URI" in message


def test_trains_exports_towers_that_load_alone_and_match_onnx(captions, tiny_clip_mirror, tmp_path):

    from finetuner import get_model, models
    from finetuner.evaluation.evaluate import evaluate
    from finetuner.export.publish import export
    from finetuner.training.loop import TrainConfig, train

    spec = lookup("clip-base-en")
    assert spec.weights == f"{tiny_clip_mirror}/clip-base-en/"
    model = models.pretrained(spec)
    assert model.spec.output_dim == 32  # measured: the mirror holds the tiny configuration
    pairs = data.read_model_pairs(str(captions(24)), spec)
    eval_set = data.EvalSet.from_pairs(pairs)

    before = evaluate(model, eval_set, k=5)
    scale = model.clip.logit_scale.item()
    result = train(model, pairs, TrainConfig(loss="CLIPLoss", epochs=4, batch_size=8,
                                              learning_rate=1e-3))  # fmt: skip
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert model.clip.logit_scale.item() != scale  # the temperature is learnt
    after = evaluate(model, eval_set, k=5)

    uris = export(model, {"before": before, "after": after}, str(tmp_path / "out"))
    assert uris["onnx"] == {
        t: str(tmp_path / "out" / "onnx" / f"{t}.onnx") for t in ("clip-text", "clip-vision")
    }
    texts = [q for q, _ in pairs[:5]]
    images = [d for _, d in pairs[:5]]
    text_tower = get_model(str(tmp_path / "out"), select_model="clip-text")
    vision_tower = get_model(str(tmp_path / "out"), select_model="clip-vision")
    np.testing.assert_allclose(text_tower.encode(texts), model.text.encode(texts), atol=1e-6)
    np.testing.assert_allclose(vision_tower.encode(images), model.image.encode(images), atol=1e-6)
    for tower, items in (("clip-text", texts), ("clip-vision", images)):
        onnx = get_model(str(tmp_path / "out"), is_onnx=True, select_model=tower)
        torch_model = text_tower if tower == "clip-text" else vision_tower
        np.testing.assert_allclose(onnx.encode(items), torch_model.encode(items), atol=1e-4)

    # The whole model (both towers and the temperature) loads back to train on.
    whole = models.load(tmp_path / "out" / "model")
    assert whole.clip.logit_scale.item() == pytest.approx(model.clip.logit_scale.item())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["onnx"] == {t: f"onnx/{t}.onnx" for t in ("clip-text", "clip-vision")}
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'select_model="clip-vision"' in card and "onnx/clip-text.onnx" in card

    with pytest.raises(FinetunerError, match="choose one with select_model='clip-text'"):
        get_model(str(tmp_path / "out"))


def test_select_model_is_refused_for_a_one_tower_export(tmp_path):
    from finetuner import get_model, models
    from finetuner.export.publish import export

    spec = lookup("mlp", model_options={"input_size": 4, "hidden_sizes": [8]})
    export(models.pretrained(spec), {}, str(tmp_path / "out"))
    with pytest.raises(FinetunerError, match="select_model is for CLIP exports"):
        get_model(str(tmp_path / "out"), select_model="clip-text")


def test_a_mirror_of_another_clip_model_is_refused(tiny_clip_mirror):
    import shutil

    from finetuner import models

    shutil.copytree(tiny_clip_mirror / "clip-base-en", tiny_clip_mirror / "clip-large-en")
    with pytest.raises(FinetunerError, match="holds weights of clip-base-en, not of clip-large"):
        models.pretrained(lookup("clip-large-en"))


def test_text_to_image_through_finetuner_run_with_an_s3_mirror(captions, s3, tmp_path, monkeypatch):
    """The whole pipeline on a tiny CLIP whose weights come from a mirror in S3."""
    import torch

    from finetuner.cli import main
    from finetuner.models.clip_net import build_clip, save_clip

    torch.manual_seed(0)
    folder = save_clip(build_clip("clip-base-en", size="tiny"), tmp_path / "saved")
    storage.upload_dir(folder, f"s3://{s3}/mirror/clip-base-en/")
    monkeypatch.setenv(weights.MIRROR_ENV, f"s3://{s3}/mirror")
    csv = captions(30)
    out = tmp_path / "run"
    code = main(
        ["run", "--model", "clip-base-en", "--train-data", str(csv), "--output", str(out),
         "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-3", "--val-split", "0.3"]
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["metrics"]["after"]) >= {"ndcg@10", "mrr@10"}
    assert manifest["onnx"] == {t: f"onnx/{t}.onnx" for t in ("clip-text", "clip-vision")}
    for tower in ("clip-text", "clip-vision"):
        assert (out / tower / "tower.safetensors").is_file()


def test_weights_option_starts_from_a_model_folder(tmp_path, monkeypatch):
    import torch

    from finetuner import models
    from finetuner.models.clip_net import build_clip, save_clip

    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    torch.manual_seed(3)
    saved = build_clip("clip-base-en", size="tiny")
    folder = save_clip(saved, tmp_path / "mine")
    spec = lookup("clip-base-en", weights=str(folder))
    assert spec.weights == f"{folder}/"
    texts = ["a photo of a bag", "a coat"]
    saved.model.eval()
    with torch.no_grad():
        want = saved.text_tower(saved.tokenize(texts)).numpy()
    np.testing.assert_allclose(models.pretrained(spec).text.encode(texts), want, atol=1e-6)

    with pytest.raises(FinetunerError, match=r"parameter weights: .*nothere/ holds no clip.json"):
        lookup("clip-base-en", weights=str(tmp_path / "nothere"))


def test_mirror_models_writes_a_clip_mirror_that_the_pipeline_loads(tmp_path, monkeypatch):
    """Upstream CLIP checkpoints need the network: a tiny model stands in for open_clip's
    download, and the rest (layout, tokenizer, loading from the mirror) is the real path."""
    import torch

    from finetuner import models
    from finetuner.models import clip_net as clip

    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    with pytest.raises(FinetunerError, match="no pretrained weights for clip-base-en"):
        weights.mirror_model("clip-base-en", str(tmp_path / "mirror"))

    torch.manual_seed(5)
    upstream = clip.build_clip("clip-base-en", size="tiny")
    monkeypatch.setattr(clip, "upstream_cached", lambda name: True)
    monkeypatch.setattr(clip, "build_clip", lambda name, weights=None, size="full": upstream)
    target = weights.mirror_model("clip-base-en", str(tmp_path / "mirror"))
    monkeypatch.undo()

    assert target == f"{tmp_path / 'mirror'}/clip-base-en/"
    monkeypatch.setenv(weights.MIRROR_ENV, str(tmp_path / "mirror"))
    model = models.pretrained(lookup("clip-base-en"))
    upstream.model.eval()
    with torch.no_grad():
        want = upstream.text_tower(upstream.tokenize(["a bag"])).numpy()
    np.testing.assert_allclose(model.text.encode(["a bag"]), want, atol=1e-6)
