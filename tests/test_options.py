import os
import subprocess
import sys

import pytest

from finetuner import list_model_options
from finetuner.catalogue import get_entry, lookup
from finetuner.catalogue.options import validate_options
from finetuner.errors import FinetunerError


def test_every_catalogue_model_lists_its_options():
    rows = {row["option"]: row for row in list_model_options("mlp")}
    assert set(rows) == {"input_size", "hidden_sizes", "bias", "activation", "l2"}
    assert rows["input_size"]["default"] == "required"
    assert rows["hidden_sizes"]["type"] == "list[int]"
    assert rows["activation"]["type"] == "relu | gelu | tanh | sigmoid | None"
    text = {row["option"]: row for row in list_model_options("bert-base-cased")}
    assert text["pooler"]["type"] == "mean | cls | max | GeM"
    assert text["pooler_p"]["default"] == "3.0" and text["max_length"]["default"] == "128"
    assert [row["option"] for row in list_model_options("resnet50")] == [
        "pooler", "pooler_p", "pooler_eps", "pooler_options", "image_size",
        "preprocess_options", "output_dim", "freeze",
    ]  # fmt: skip
    assert list_model_options("clip-base-en") == []


def test_option_groups_are_listed_as_the_dicts_they_are_written_as():
    text = {row["option"]: row for row in list_model_options("minilm-l6-en")}
    assert text["pooler_options"]["type"] == "{p: float, eps: float}"
    assert text["pooler_options"]["default"] == "{p: 3.0, eps: 1e-06}"
    assert text["collate_options"]["type"] == "{max_length: int}"
    assert text["output_dim"]["type"] == "int | None" and text["output_dim"]["default"] == "None"
    assert "projection head" in text["output_dim"]["description"]
    assert text["freeze"]["default"] == "False"
    points = {row["option"]: row for row in list_model_options("pointnet-base")}
    assert points["preprocess_options"]["type"] == "{num_points: int, augment: bool}"
    assert points["preprocess_options"]["default"] == "{num_points: 2048, augment: False}"


def test_an_option_the_model_lacks_is_named_with_the_valid_ones():
    with pytest.raises(FinetunerError) as err:
        validate_options(get_entry("resnet-base"), max_length=64)
    assert str(err.value) == (
        "parameter max_length: resnet-base has no option 'max_length'. "
        "Its options: pooler, pooler_p, pooler_eps, pooler_options, image_size, "
        "preprocess_options, output_dim, freeze."
    )
    with pytest.raises(FinetunerError, match="clip-base-en has no option 'pooler'"):
        validate_options(get_entry("clip-base-en"), pooler="GeM")


def test_groups_set_the_flat_options():
    text = get_entry("minilm-l6-en")
    options = validate_options(
        text, pooler_options={"eps": 1e-5}, collate_options={"max_length": 64}, pooler_p=2.0
    ).flat_dump()
    assert (options["pooler_p"], options["pooler_eps"], options["max_length"]) == (2.0, 1e-5, 64)
    assert "pooler_options" not in options and "collate_options" not in options
    points = validate_options(
        get_entry("pointnet-base"), preprocess_options={"num_points": 64, "augment": True}
    )
    assert points.flat_dump() == {"num_points": 64, "augment": True}
    cnn = validate_options(get_entry("resnet-base"), preprocess_options={"image_size": 96})
    assert cnn.image_size == 96


def test_a_group_and_its_flat_option_must_agree():
    text = get_entry("minilm-l6-en")
    assert validate_options(text, pooler_p=2.0, pooler_options={"p": 2.0}).pooler_p == 2.0
    with pytest.raises(FinetunerError) as err:
        validate_options(text, max_length=32, collate_options={"max_length": 64})
    assert str(err.value) == (
        "parameter collate_options.max_length: 64 disagrees with max_length=32; "
        "give one of them (model minilm-l6-en)."
    )


def test_an_unknown_key_in_a_group_names_the_group_and_its_keys():
    with pytest.raises(FinetunerError) as err:
        validate_options(get_entry("minilm-l6-en"), collate_options={"foo": 1})
    assert str(err.value) == (
        "parameter collate_options.foo: minilm-l6-en has no option 'collate_options.foo'. "
        "Its options: max_length."
    )
    with pytest.raises(FinetunerError, match="parameter pooler_options.p: must be > 0"):
        validate_options(get_entry("resnet-base"), pooler_options={"p": 0})
    with pytest.raises(
        FinetunerError,
        match=r"preprocess_options: invalid value \[64\]: expected a dict like \{num_",
    ):
        validate_options(get_entry("pointnet-base"), preprocess_options=[64])


def test_freeze_needs_output_dim():
    for name in ("minilm-l6-en", "efficientnet-lite0"):
        with pytest.raises(FinetunerError) as err:
            validate_options(get_entry(name), freeze=True)
        assert str(err.value).startswith(
            "parameter freeze: freeze trains only the projection head and needs output_dim"
        )
        assert validate_options(get_entry(name), output_dim=64, freeze=True).freeze
    with pytest.raises(
        FinetunerError, match="parameter output_dim: invalid value 0: Input should be greater"
    ):
        validate_options(get_entry("minilm-l6-en"), output_dim=0)


@pytest.mark.parametrize(
    "model, option, valid",
    [
        ("mlp", "output_dim", "input_size, hidden_sizes, bias, activation, l2"),
        ("pointnet-base", "freeze", "num_points, augment, preprocess_options"),
        ("clip-base-en", "output_dim", "none"),
    ],
)
def test_families_without_a_head_reject_its_options(model, option, valid):
    entry = get_entry(model)
    with pytest.raises(FinetunerError) as err:
        validate_options(entry, **{option: 8, "input_size": 4})
    message = f"parameter {option}: {entry.name} has no option '{option}'. Its options: {valid}."
    assert str(err.value) == message


def test_lookup_takes_output_dim_and_groups_from_model_options():
    spec = lookup(
        "minilm-l6-en",
        model_options={"output_dim": 64, "freeze": True, "pooler_options": {"p": 2.0}},
        resolve_weights=False,
    )
    assert spec.output_dim == 64 and spec.options == {"output_dim": 64, "freeze": True}
    # The pipeline passes every flat parameter; at its default it gives way to the group.
    assert spec.pooler_p == 2.0
    assert lookup("minilm-l6-en", resolve_weights=False).output_dim == 384
    with pytest.raises(FinetunerError, match="pooler_options.p: 2.0 disagrees with pooler_p=2.5"):
        lookup("minilm-l6-en", pooler_p=2.5, model_options={"pooler_options": {"p": 2.0}})
    with pytest.raises(FinetunerError, match="parameter max_length: 32 disagrees with model_op"):
        lookup("minilm-l6-en", max_length=32, model_options={"max_length": 64})
    points = lookup("pointnet-base", model_options={"preprocess_options": {"num_points": 64}})
    assert points.options == {"num_points": 64}  # the defaults are left out
    assert lookup("minilm-l6-en", max_length=64, resolve_weights=False).options == {}


def test_values_are_checked_against_the_schema():
    cnn = get_entry("efficientnet-lite0")
    assert validate_options(cnn, pooler="gem").pooler == "GeM"
    with pytest.raises(FinetunerError, match="Valid poolers: mean, GeM"):
        validate_options(cnn, pooler="cls")
    with pytest.raises(FinetunerError, match="parameter pooler_p: must be > 0, got -1.0"):
        validate_options(cnn, pooler_p=-1)
    mlp = get_entry("mlp")
    with pytest.raises(FinetunerError, match="parameter input_size: Field required"):
        validate_options(mlp)
    assert validate_options(mlp, input_size=8, hidden_sizes=[16, 4]).hidden_sizes == [16, 4]


def test_list_model_options_cli():
    out = subprocess.run(
        [sys.executable, "-m", "finetuner", "list-model-options", "minilm-l6-en"],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    for word in ("pooler_eps", "max_length", "mean | cls | max | GeM", "{p: float, eps: float}"):
        assert word in out.stdout
