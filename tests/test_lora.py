"""LoRA adapters (finetuner.training.lora): only the adapters train, the adapter alone loads
onto the pretrained model with peft and sentence-transformers and gives the merged model's
embeddings, and families without adapters refuse LoRA before training."""

from pathlib import Path

import numpy as np
import pytest
from conftest import wordnet

from finetuner.catalogue import lookup
from finetuner.errors import FinetunerError
from finetuner.training import lora
from finetuner.training.loop import TrainConfig, train

TEXTS = ["hotelier", "an owner or manager of hotels", "a person who is not a member"]


def _base_state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _without_adapters(module) -> dict:
    """The base weights of a module with adapters, under the names they had without."""
    state = module.state_dict().items()
    return {n.replace(".base_layer", ""): t for n, t in state if ".lora_" not in n}


def test_only_the_adapters_train_and_peft_loads_the_adapter_onto_the_base(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    from finetuner import models
    from finetuner.models.weights import local_path

    spec = lookup("minilm-l6-en", max_length=32)
    model = models.pretrained(spec)
    before = _base_state(model.embedder)
    seen = []

    def on_step(step):
        # During training: only adapter weights have gradients, and the base has not moved.
        trainable = [n for n, p in model.embedder.named_parameters() if p.requires_grad]
        assert trainable and all(".lora_" in n for n in trainable)
        now = _without_adapters(model.embedder)
        assert now.keys() == before.keys()
        assert all(torch.equal(now[n], t) for n, t in before.items())
        seen.append(step)

    config = TrainConfig(
        lora_r=4, lora_target_modules="query,value", batch_size=8, max_steps=2,
        learning_rate=1e-3, evaluate_every_epoch=False,
    )  # fmt: skip
    train(model, wordnet(32), config, device="cpu", on_step=on_step)
    assert seen == [1, 2]

    # Merged: a plain BERT again, whose query weights moved and whose key weights did not.
    layer = model.embedder.backbone.encoder.layer[0].attention.self
    assert type(layer.query) is torch.nn.Linear
    assert not torch.equal(
        layer.query.weight, before["backbone.encoder.layer.0.attention.self.query.weight"]
    )
    assert torch.equal(
        layer.key.weight, before["backbone.encoder.layer.0.attention.self.key.weight"]
    )
    adapter = lora.save_adapter(model, tmp_path / "trained")
    assert {p.name for p in adapter.iterdir()} == {lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS}

    # The adapter alone, on the pretrained transformer, gives the merged model's embeddings.
    fresh = models.pretrained(spec)
    fresh.embedder.backbone = PeftModel.from_pretrained(
        AutoModel.from_pretrained(local_path(spec.weights)), str(adapter)
    )
    np.testing.assert_allclose(fresh.encode(TEXTS), model.encode(TEXTS), atol=1e-5)
    assert not np.allclose(models.pretrained(spec).encode(TEXTS), model.encode(TEXTS), atol=1e-4)


def test_clip_towers_train_adapters_that_peft_loads_onto_open_clip(tmp_path):
    import torch
    from peft import PeftModel

    from finetuner.models.clip_net import TextImageModel, build_clip, clip_loss

    torch.manual_seed(0)
    spec = lookup("clip-base-en", resolve_weights=False)
    model = TextImageModel(build_clip("clip-base-en", size="tiny"), spec)
    base = build_clip("clip-base-en", size="tiny").model
    base.load_state_dict(model.embedder.state_dict())
    before = _base_state(model.embedder)
    peft_model = lora.wrap(model, TrainConfig(lora_r=4))
    trainable = [n for n, p in model.embedder.named_parameters() if p.requires_grad]
    # Both towers' MLP projections, nothing else (not the temperature).
    assert any(n.startswith("text.") for n in trainable)
    assert any(n.startswith("visual.") for n in trainable)
    assert all(".lora_" in n for n in trainable)

    texts = torch.randint(1, 400, (4, 77))
    pixels = torch.randn(4, 3, model.clip.image_size, model.clip.image_size)
    optimizer = torch.optim.AdamW([p for p in model.embedder.parameters() if p.requires_grad], 1e-2)
    model.embedder.train()
    for _ in range(2):
        loss = clip_loss()(
            model.clip.vision_tower(pixels), model.clip.text_tower(texts), model.scale()
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    moved = [
        n for n, p in model.embedder.named_parameters() if ".lora_B" in n and p.abs().sum() > 0
    ]
    assert moved
    now = _without_adapters(model.embedder)
    assert now.keys() == before.keys()
    assert all(torch.equal(now[n], t) for n, t in before.items())

    lora.merge(model, peft_model)
    adapter = lora.save_adapter(model, tmp_path)
    on_base = PeftModel.from_pretrained(base, str(adapter)).eval()
    model.embedder.eval()
    with torch.inference_mode():
        np.testing.assert_allclose(
            on_base.base_model.model.encode_text(texts),
            model.embedder.encode_text(texts),
            atol=1e-5,
        )
        np.testing.assert_allclose(
            on_base.base_model.model.encode_image(pixels),
            model.embedder.encode_image(pixels),
            atol=1e-5,
        )


def test_lora_is_refused_where_it_cannot_apply(pairs_csv, tmp_path):
    import finetuner

    mlp = lookup("mlp", model_options={"input_size": 4, "hidden_sizes": [8]})
    with pytest.raises(
        FinetunerError,
        match=r"parameter lora_r: 8, but mlp is of the mlp family.*adapters \(clip, text\)",
    ):
        lora.check(TrainConfig(lora_r=8), mlp)
    lora.check(TrainConfig(lora_r=0), mlp)  # off: any family
    text = lookup("minilm-l6-en", model_options={"output_dim": 32, "freeze": True})
    with pytest.raises(FinetunerError, match="parameter lora_r: 8 .*model option freeze"):
        lora.check(TrainConfig(lora_r=8), text)
    minilm = lookup("minilm-l6-en")
    with pytest.raises(FinetunerError, match="parameter wiseft_alpha: 0.5 with lora_r 8"):
        lora.check(TrainConfig(lora_r=8, wiseft_alpha=0.5), minilm)
    with pytest.raises(FinetunerError, match="parameter lora_target_modules: .*empty name"):
        lora.check(TrainConfig(lora_r=8, lora_target_modules="query,,value"), minilm)
    with pytest.raises(
        FinetunerError, match="parameter lora_r: invalid value -1. Valid: an integer >= 0"
    ):
        TrainConfig(lora_r=-1)

    from finetuner import models

    with pytest.raises(
        FinetunerError,
        match="parameter lora_target_modules: no module of minilm-l6-en fits nothere",
    ):
        lora.wrap(models.pretrained(minilm), TrainConfig(lora_r=4, lora_target_modules="nothere"))

    # Through fit: refused before the output is claimed or any data is read.
    output = tmp_path / "out"
    with pytest.raises(FinetunerError, match="parameter lora_r: 4, but mlp is of the mlp family"):
        finetuner.fit(
            model="mlp", model_options={"input_size": 4}, train_data=str(pairs_csv(10)),
            output=str(output), lora_r=4,
        )  # fmt: skip
    assert not output.exists()


def test_fit_exports_the_merged_model_and_the_adapter_that_sentence_transformers_loads(
    pairs_csv, tmp_path
):
    from sentence_transformers import SentenceTransformer

    import finetuner
    from finetuner.models.weights import local_path

    output = tmp_path / "model"
    run = finetuner.fit(
        model="minilm-l6-en", train_data=str(pairs_csv(40)), output=str(output),
        batch_size=16, max_length=32, epochs=1, learning_rate=1e-3, lora_r=4,
    )  # fmt: skip
    assert run.status == "FINISHED"
    adapter = output / "model" / "adapter"
    assert {p.name for p in adapter.iterdir()} == {lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS}
    size = (adapter / lora.ADAPTER_WEIGHTS).stat().st_size
    assert size < 0.05 * (output / "model" / "model.safetensors").stat().st_size
    assert "model/adapter/" in (output / "README.md").read_text()
    assert (output / "onnx" / "model.onnx").is_file()

    merged = SentenceTransformer(str(output / "model"), device="cpu")
    on_base = SentenceTransformer(str(local_path(lookup("minilm-l6-en").weights)), device="cpu")
    pretrained = on_base.encode(TEXTS)
    on_base.load_adapter(str(adapter))
    np.testing.assert_allclose(on_base.encode(TEXTS), merged.encode(TEXTS), atol=1e-5)
    assert not np.allclose(pretrained, merged.encode(TEXTS), atol=1e-4)
    # finetuner's own loader reads the merged model; the ONNX export is of it too.
    np.testing.assert_allclose(
        finetuner.encode(finetuner.get_model(str(output)), TEXTS), merged.encode(TEXTS), atol=1e-5
    )
    assert Path(output / "manifest.json").is_file()


def test_the_cli_refuses_lora_for_a_family_without_adapters(pairs_csv, tmp_path):
    import subprocess
    import sys

    output = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable, "-m", "finetuner", "run", "--model", "mlp", "--model-options",
            '{"input_size": 4}', "--train-data", str(pairs_csv(10)), "--output", str(output),
            "--lora-r", "4",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: parameter lora_r: 4, but mlp"), result.stderr
    assert "Traceback" not in result.stderr and not output.exists()
