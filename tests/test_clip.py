"""CLIP: the real open_clip architectures with random weights (no weights ship offline)."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from finetuner.errors import FinetunerError
from finetuner.export.publish import export_onnx
from finetuner.models.clip_net import (
    CLIP_MODELS,
    ClipTextTower,
    ClipVisionTower,
    build_clip,
    check_options,
    clip_loss,
    load_clip,
    load_tower,
    save_clip,
    save_tower,
)

FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
]  # fmt: skip
CAPTIONS = [f"a photo of a {c}" for c in FASHION_CLASSES]

# Embedding width of both towers, measured by a forward pass on the full-size model.
# clip-large-en: Jina's Finetuner listed 1024, but ViT-L-14's projection (embed_dim) is 768.
FULL_DIMS = {"clip-base-en": 512, "clip-large-en": 768, "clip-base-multi": 512}


def _images(clip, n, seed=0):
    size = clip.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _token_ids(clip, n, seed=0):
    """Token ids for a model without an offline tokenizer (XLM-R): bos, words, eos, padding."""
    cfg = clip.cfg["hf_config"]
    ids = torch.full(
        (n, 77),  # the context length of open_clip's HFTokenizer
        cfg["pad_token_id"],
        dtype=torch.long,
    )
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        length = 4 + i % 8
        ids[i, 0], ids[i, length + 1] = cfg["bos_token_id"], cfg["eos_token_id"]
        ids[i, 1 : length + 1] = torch.randint(3, cfg["vocab_size"], (length,), generator=gen)
    return ids


def _texts(clip, n):
    if clip.tokenizer is None:
        return _token_ids(clip, n)
    return clip.tokenize(CAPTIONS[:n])


# Full-size builds (random init) plus one forward pass per tower take about 20-25 s here,
# most of it ViT-L-14's image tower; they are kept because they are the only check of the
# real dimensions.
@pytest.mark.parametrize("name", list(CLIP_MODELS))
def test_full_size_builds_offline_and_measures_dims(name):
    start = time.perf_counter()
    clip = build_clip(name)
    built = time.perf_counter() - start
    params = sum(p.numel() for p in clip.parameters())
    with torch.inference_mode():
        clip.text_tower.eval(), clip.vision_tower.eval()
        ids = _token_ids(clip, 2) if clip.tokenizer is None else clip.tokenize(CAPTIONS[:2])
        text = clip.text_tower(ids)
        image = clip.vision_tower(_images(clip, 1))
    print(f"{name}: built in {built:.1f}s, {params / 1e6:.1f}M parameters, "
          f"text {tuple(text.shape)}, image {tuple(image.shape)}")  # fmt: skip
    assert text.shape == (2, FULL_DIMS[name])
    assert image.shape == (1, FULL_DIMS[name])
    assert clip.output_dim == FULL_DIMS[name]
    assert clip.image_size == 224
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_preprocess_is_the_eval_transform():
    from PIL import Image

    clip = build_clip("clip-base-en", size="tiny")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))
    pixels = clip.preprocess(image)
    assert pixels.shape == (3, clip.image_size, clip.image_size)
    assert clip.vision_tower(pixels[None]).shape == (1, 32)


def test_openai_bpe_tokenizer_works_offline():
    clip = build_clip("clip-base-en", size="tiny")
    ids = clip.tokenize(CAPTIONS)
    assert ids.shape == (10, 77) and ids.dtype == torch.long
    assert (ids[:, 0] == 49406).all()  # <start_of_text>
    # "a photo of a sneaker" is 5 BPE tokens between start and end of text
    assert ids[7, :7].tolist()[-1] == 49407 and ids[7, 7] == 0
    assert len({tuple(row.tolist()) for row in ids}) == 10


def test_multilingual_tokenizer_is_missing_offline_with_a_clear_error():
    clip = build_clip("clip-base-multi", size="tiny")
    assert clip.tokenizer is None
    with pytest.raises(FinetunerError, match="tokenizer"):
        clip.tokenize(["ein Foto eines Turnschuhs"])


@pytest.mark.parametrize("name", ["clip-base-en", "clip-base-multi"])
def test_training_steps_reduce_clip_loss_and_train_logit_scale(name):
    torch.manual_seed(0)
    clip = build_clip(name, size="tiny")
    images, texts = _images(clip, 8), _texts(clip, 8)
    loss_fn = clip_loss()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3)
    scale_before = clip.logit_scale.item()
    losses = []
    clip.model.train()
    for _ in range(6):
        loss = loss_fn(clip.vision_tower(images), clip.text_tower(texts), clip.scale())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert clip.logit_scale.item() != scale_before


@pytest.mark.parametrize("name", list(CLIP_MODELS))
def test_towers_save_and_load_alone(name, tmp_path):
    clip = build_clip(name, size="tiny")
    clip.model.eval()
    images, texts = _images(clip, 3), _texts(clip, 3)
    with torch.inference_mode():
        want_text, want_image = clip.text_tower(texts), clip.vision_tower(images)
    save_tower(clip.text_tower, tmp_path / "text")
    save_tower(clip.vision_tower, tmp_path / "vision")
    del clip

    text_tower, vision_tower = load_tower(tmp_path / "text"), load_tower(tmp_path / "vision")
    assert isinstance(text_tower, ClipTextTower) and isinstance(vision_tower, ClipVisionTower)
    # each folder holds one tower only
    assert not any(k.startswith("visual") for k in text_tower.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(text_tower(texts), want_text, rtol=0, atol=0)
        torch.testing.assert_close(vision_tower(images), want_image, rtol=0, atol=0)
    assert vision_tower.preprocess is not None


def test_load_tower_rejects_a_folder_without_a_tower(tmp_path):
    with pytest.raises(FinetunerError, match="tower.json"):
        load_tower(tmp_path)


@pytest.mark.parametrize("name", ["clip-base-en", "clip-base-multi"])
def test_state_dict_in_a_mirror_folder_loads_back(name, tmp_path):
    trained = build_clip(name, size="tiny")
    with torch.no_grad():
        trained.logit_scale.fill_(3.0)
    folder = save_clip(trained, tmp_path / "mirror" / name)

    fresh = build_clip(name, size="tiny")
    for clip in (build_clip(name, weights=folder, size="tiny"), load_clip(folder)):
        assert clip.logit_scale.item() == 3.0
        images, texts = _images(clip, 2), _texts(clip, 2)
        with torch.inference_mode():
            for model in (trained, clip, fresh):
                model.model.eval()
            torch.testing.assert_close(clip.text_tower(texts), trained.text_tower(texts))
            torch.testing.assert_close(clip.vision_tower(images), trained.vision_tower(images))
            assert not torch.allclose(fresh.vision_tower(images), trained.vision_tower(images))
    # a single safetensors file works as well
    clip = build_clip(name, weights=folder / "model.safetensors", size="tiny")
    assert clip.logit_scale.item() == 3.0


def test_weights_of_another_model_are_refused(tmp_path):
    folder = save_clip(build_clip("clip-base-en", size="tiny"), tmp_path / "en")
    with pytest.raises(FinetunerError, match="do not fit clip-base-multi"):
        build_clip("clip-base-multi", weights=folder, size="tiny")
    with pytest.raises(FinetunerError, match="neither a file nor a folder"):
        build_clip("clip-base-en", weights=tmp_path / "missing", size="tiny")


def test_bad_names_sizes_and_poolers_are_refused():
    with pytest.raises(FinetunerError, match="valid names are: clip-base-en, clip-large-en"):
        build_clip("clip-huge")
    with pytest.raises(FinetunerError, match="valid sizes"):
        build_clip("clip-base-en", size="small")
    with pytest.raises(FinetunerError, match="clip-base-en does not support pooler GeM"):
        check_options("clip-base-en", "GeM")
    check_options("clip-base-en", None)
    check_options("clip-large-en", "default")


@pytest.mark.parametrize("name", ["clip-base-en", "clip-base-multi"])
def test_onnx_export_of_both_tiny_towers_matches_pytorch(name, tmp_path):
    clip = build_clip(name, size="tiny")
    clip.model.eval()
    cases = [
        (clip.text_tower, "token_ids", _texts(clip, 5)),
        (clip.vision_tower, "pixel_values", _images(clip, 3)),
    ]
    for tower, input_name, batch in cases:
        path = tmp_path / f"{input_name}.onnx"
        export_onnx(
            {
                "module": tower,
                "output": f"{input_name}_embedding",
                "example": {input_name: batch},
                "dynamic": {input_name: {0: "batch"}},
                "checks": [{input_name: batch}],
            },
            path,
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [input_name]
        for rows in (batch, batch[:1]):  # the batch axis is dynamic
            with torch.inference_mode():
                want = tower(rows).numpy()
            (got,) = session.run(None, {input_name: rows.numpy()})
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _word_tokenizer():
    """A small XLM-R-style tokenizer (<s>=0, <pad>=1, </s>=2) standing in for the real
    SentencePiece one, which no package ships."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a photo of ein Foto eines".split() + FASHION_CLASSES
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(dict.fromkeys(words))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip


def test_multilingual_tokenizer_comes_from_the_weights_folder(tmp_path):
    folder = save_clip(build_clip("clip-base-multi", size="tiny"), tmp_path / "mirror")
    _word_tokenizer().save_pretrained(folder)

    clip = build_clip("clip-base-multi", weights=folder, size="tiny")
    ids = clip.tokenize(["a photo of a sneaker", "ein Foto eines bag"])
    assert ids.shape == (2, 77)
    # <s> a photo of a sneaker </s>, then <pad>
    assert ids[0, :7].tolist() == [0, 4, 5, 6, 4, 17, 2] and (ids[0, 7:] == 1).all()

    # the tokenizer travels with the saved text tower
    clip.model.eval()
    save_tower(clip.text_tower, tmp_path / "text")
    tower = load_tower(tmp_path / "text")
    with torch.inference_mode():
        alone = tower(tower.tokenize(["ein Foto eines bag"]))
        torch.testing.assert_close(alone, clip.text_tower(ids[1:]))
