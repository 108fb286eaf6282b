import os
import subprocess
import sys

import pytest

from finetuner import list_model_options
from finetuner.catalogue import get_entry
from finetuner.errors import FinetunerError
from finetuner.options import validate_options


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
        "pooler", "pooler_p", "pooler_eps",
    ]  # fmt: skip
    assert list_model_options("clip-base-en") == []


def test_an_option_the_model_lacks_is_named_with_the_valid_ones():
    with pytest.raises(FinetunerError) as err:
        validate_options(get_entry("resnet-base"), max_length=64)
    assert str(err.value) == (
        "parameter max_length: resnet-base has no option 'max_length'. "
        "Its options: pooler, pooler_p, pooler_eps."
    )
    with pytest.raises(FinetunerError, match="clip-base-en has no option 'pooler'"):
        validate_options(get_entry("clip-base-en"), pooler="GeM")


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
    for word in ("pooler", "pooler_p", "pooler_eps", "max_length", "mean | cls | max | GeM"):
        assert word in out.stdout
