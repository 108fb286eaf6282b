"""CNN and MLP embedders: real ImageNet weights where a package ships them, else the real
architectures with random weights."""

import numpy as np
import pytest
import torch

from finetuner.catalogue import describe_models, get_entry
from finetuner.errors import FinetunerError
from finetuner.models import cnn_net as vision
from finetuner.models.mlp_net import MLP

TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN_CAT = 281, 282, 283, 284, 285


def builder(name: str) -> str:
    """How the CNN family builds a catalogue entry (its row's builder)."""
    return get_entry(name).builder


@pytest.fixture(scope="module")
def chelsea():
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.chelsea())


def test_lite0_package_weights_classify_chelsea_as_a_cat(chelsea):
    model = vision.build_classifier(builder("efficientnet-lite0"), weights="package").eval()
    image = vision.weights_transform(builder("efficientnet-lite0"))(chelsea)[None]
    with torch.no_grad():
        top = model(image).softmax(-1)[0].topk(3)
    assert top.indices[0].item() in {TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN_CAT}
    assert top.values.sum() > 0.5


def test_lite0_embedder_drops_the_head_and_keeps_the_pretrained_trunk(chelsea):
    embedder = vision.build_cnn(builder("efficientnet-lite0"), weights="package").eval()
    image = vision.weights_transform(builder("efficientnet-lite0"))(chelsea)[None]
    flipped = torch.flip(image, dims=[3])
    with torch.no_grad():
        emb, emb_flipped = embedder(image), embedder(flipped)
        noise = embedder(torch.randn_like(image))
    assert emb.shape == (1, 1280)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    # A pretrained trunk sees a mirrored cat as the same thing, unlike noise.
    assert (emb @ emb_flipped.T).item() > 0.9 > (emb @ noise.T).item()


@pytest.mark.parametrize("name", [e.name for e in describe_models("image-to-image")])
def test_full_size_cnns_build_with_random_weights_at_their_catalogue_dim(name):
    embedder = vision.build_cnn(builder(name)).eval()
    with torch.no_grad():
        out = embedder(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, get_entry(name).output_dim)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet-base", "efficientnet_b0"])
def test_the_trunk_is_the_classifier_up_to_its_pooling(name):
    """The trunk, cut by timm or torchvision's feature extraction, pooled as the classifier
    pools, gives what the classifier's own head takes in, with the classifier's weights."""
    torch.manual_seed(0)
    weights = "package" if name == "efficientnet-lite0" else None
    classifier = vision.build_classifier(builder(name), weights).eval()
    torch.manual_seed(0)  # the same random start as the classifier
    embedder = vision.build_cnn(builder(name), weights).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled = embedder.trunk(images).mean(dim=(2, 3))
        if name == "efficientnet-lite0":
            expected = classifier.forward_head(classifier.forward_features(images), pre_logits=True)
        else:  # torchvision: the classifier's input, caught on its way in
            seen = []
            head = classifier.fc if hasattr(classifier, "fc") else classifier.classifier
            hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
            classifier(images)
            hook.remove()
            expected = seen[0]
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-5)


def test_gem_replaces_average_pooling_with_a_learnable_p():
    embedder = vision.build_cnn(builder("efficientnet_b0"), pooler="GeM", pooler_p=2.5)
    assert isinstance(embedder.pool, vision.GeM2d)
    assert embedder.pool.p.requires_grad and embedder.pool.p.item() == pytest.approx(2.5)
    features = torch.rand(2, 8, 4, 4)
    torch.testing.assert_close(vision.GeM2d(p=1.0)(features), features.mean(dim=(2, 3)))
    with pytest.raises(FinetunerError, match="CNNs support mean and GeM"):
        vision.build_cnn(builder("efficientnet_b0"), pooler="cls")


def test_torchvision_transforms_come_with_the_weights():
    transform = vision.weights_transform(builder("resnet-base"))
    assert transform.crop_size == [224] and transform.resize_size == [232]


def test_mlp_follows_finetuners_options():
    mlp = MLP(input_size=10, hidden_sizes=(32, 16), bias=False, activation="gelu", l2=True)
    assert mlp.output_dim == 16
    assert [type(m).__name__ for m in mlp.layers] == ["Linear", "GELU", "Linear"]
    assert all(layer.bias is None for layer in mlp.layers if isinstance(layer, torch.nn.Linear))
    out = mlp(torch.randn(4, 10))
    np.testing.assert_allclose(out.norm(dim=-1).detach().numpy(), 1.0, atol=1e-6)
    with pytest.raises(FinetunerError, match="unknown activation 'swish'"):
        MLP(input_size=10, activation="swish")
    with pytest.raises(FinetunerError, match="positive integers"):
        MLP(input_size=0)


def test_cnn_embedder_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    import onnxruntime as ort
    from torch.export import Dim

    embedder = vision.build_cnn(
        builder("efficientnet-lite0"), weights="package", pooler="GeM"
    ).eval()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        embedder,
        (torch.randn(2, 3, 96, 96),),
        str(path),
        input_names=["images"],
        output_names=["embedding"],
        dynamic_shapes={"images": {0: Dim("batch")}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(str(path))
    for batch in (1, 3):
        images = torch.randn(batch, 3, 96, 96)
        with torch.no_grad():
            expected = embedder(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)


def _old_trunk(name: str, classifier):
    """The trunk as earlier versions cut it, per architecture, and saved it (a mirror's
    `trunk.` weights): the names that legacy_trunk_names maps."""
    if name == "efficientnet-lite0":
        m = classifier
        return torch.nn.Sequential(m.conv_stem, m.bn1, m.blocks, m.conv_head, m.bn2)
    if name.startswith("resnet"):
        return torch.nn.Sequential(*list(classifier.children())[:-2])
    return classifier.features


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet-base", "efficientnet_b0"])
def test_a_mirror_of_an_earlier_version_loads_into_the_library_cut_trunk(name, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    old = _old_trunk(name, vision.build_classifier(builder(name))).eval()
    state = {f"trunk.{k}": v.contiguous() for k, v in old.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    embedder = vision.build_cnn(builder(name)).eval()
    assert set(embedder.trunk.state_dict()) != {k[len("trunk.") :] for k in state}
    vision.load_cnn_weights(embedder.trunk, builder(name), tmp_path, "trunk.")
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(embedder.trunk(images), old(images))


def test_weights_that_fit_no_trunk_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    save_file({"trunk.0.weight": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    embedder = vision.build_cnn(builder("resnet-base"))
    with pytest.raises(RuntimeError, match="Missing key"):
        vision.load_cnn_weights(embedder.trunk, builder("resnet-base"), tmp_path, "trunk.")
