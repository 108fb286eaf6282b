"""The run parameters are declared once (finetuner.parameters): the pipelines' signatures
and docstrings, the compiled YAML, the CLI flags, `finetuner.fit`, the UI's dropdowns and
the README's tables agree with the declarations. "auto" is a value that resolves in one
place; a value given is honoured or refused, never replaced."""

import inspect
from pathlib import Path

import pytest
import yaml

from finetuner.errors import FinetunerError
from finetuner.parameters import PIPELINES, Finetune, SynthesizeAndFinetune, TrainOptions
from finetuner.parameters.generate import docstring, kfp_type, literals, signature

ROOT = Path(__file__).resolve().parent.parent
KFP_TYPES = {
    str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN",
    dict: "STRUCT", list: "LIST",
}  # fmt: skip


def pipeline_functions():
    from finetuner.pipelines.finetune import finetune
    from finetuner.pipelines.synthesize_and_finetune import synthesize_and_finetune

    return {"finetune": finetune, "synthesize_and_finetune": synthesize_and_finetune}


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_signatures_and_docstrings_are_the_declared_ones(name):
    func = pipeline_functions()[name].pipeline_func
    model = PIPELINES[name]
    assert inspect.signature(func) == signature(model)
    summary = func.__doc__.split("\n\n")[0]
    assert func.__doc__ == docstring(model, summary)
    for field_name, field in model.model_fields.items():
        assert f"    {field_name}: " in func.__doc__, field_name
        assert field.description, field_name


@pytest.mark.parametrize("name", PIPELINES)
def test_compiled_yaml_declares_the_parameters_as_the_model(name):
    spec, *_ = yaml.safe_load_all((ROOT / "pipelines" / f"{name}.yaml").read_text())
    compiled = spec["root"]["inputDefinitions"]["parameters"]
    model = PIPELINES[name]
    assert set(compiled) == set(model.model_fields)
    for field_name, field in model.model_fields.items():
        entry = compiled[field_name]
        assert entry["parameterType"] == KFP_TYPES[kfp_type(field)], field_name
        assert " ".join(entry["description"].split()) == field.description, field_name
        if field.is_required():
            assert "defaultValue" not in entry, field_name
        else:
            default = field.get_default()
            assert entry["defaultValue"] == default, field_name
    for field_name, words in literals(model).items():
        assert compiled[field_name]["literals"] == words, field_name


def _subcommand(name: str):
    from finetuner.cli import build_parser

    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize(
    "command, model", [("run", Finetune), ("synthesize-and-finetune", SynthesizeAndFinetune)]
)
def test_cli_flags_are_the_declared_parameters(command, model):
    from finetuner.cli import FLAGS
    from finetuner.parameters.base import extra

    actions = {a.dest: a for a in _subcommand(command)._actions}
    for name, field in model.model_fields.items():
        if not extra(field)["local"]:
            assert name not in actions, name  # a cluster setting: no flag
            continue
        action = actions[name]
        assert action.option_strings == [FLAGS.get(name, "--" + name.replace("_", "-"))]
        assert action.help == field.description
        if not field.is_required():
            assert action.default == field.get_default(), name


def test_every_old_flag_still_works(pairs_csv):
    """The flags of before, named as before, parse to their parameters."""
    args = _subcommand("run").parse_args([
        "--train-data", "t.csv", "--output", "out", "--num-gpus", "2", "--max-bad-rows", "3",
        "--learning-rate", "1e-3", "--epochs", "auto", "--layerwise-decay", "0.9",
        "--num-warmup-steps", "5", "--evaluate-every-epoch", "false", "--force-claim",
        "--promote", "--loss-options", '{"margin": 0.1}', "--pooler-p", "auto",
    ])  # fmt: skip
    assert (args.output_uri, args.gpu_count, args.max_bad_rows) == ("out", 2, 3)
    assert (args.learning_rate, args.epochs, args.layerwise_decay) == (1e-3, "auto", 0.9)
    assert (args.num_warmup_steps, args.evaluate_every_epoch) == (5, False)
    assert args.force_claim and args.promote and args.loss_options == {"margin": 0.1}
    with pytest.raises(SystemExit):
        _subcommand("run").parse_args(["--train-data", "t.csv", "--epochs", "many"])


def test_fit_shows_every_keyword_with_its_default():
    import finetuner

    parameters = inspect.signature(finetuner.fit).parameters
    assert list(parameters)[:4] == ["model", "train_data", "output", "callbacks"]
    keywords = {n: p for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    expected = set(Finetune.model_fields) - {"model", "train_data", "output_uri"}
    assert set(keywords) == expected
    for name in expected:
        assert keywords[name].default == Finetune.model_fields[name].get_default(), name
        assert f"    {name}: " in finetuner.fit.__doc__, name
    with pytest.raises(FinetunerError, match="unknown parameter"):
        finetuner.fit("minilm-l6-en", "t.csv", no_such_option=1)


def test_readme_tables_are_made_from_the_declarations():
    from finetuner.parameters.readme import with_tables

    readme = (ROOT / "README.md").read_text()
    assert "<!-- parameters:finetune -->\n| group |" in readme
    assert with_tables(readme) == readme, "python -m finetuner.parameters.readme README.md"


def test_ui_dropdowns_come_from_the_types_and_the_catalogue():
    from finetuner.launch.compile import choices
    from finetuner.models.text import TextOptions

    found = choices()
    assert found["sampler"] == ["auto", "random", "class", "no_duplicates"]
    assert found["scheduler_step"] == ["batch", "epoch"]
    assert found["loss"][0] == found["pooler"][0] == "auto"
    # The pooler names are the text models' own (finetuner.options), with auto.
    pooler = TextOptions.model_fields["pooler"].annotation
    assert found["pooler"][1:] == list(pooler.__args__)


def test_values_that_arrive_as_text_are_parsed_as_declared():
    """A KFP step gets a dict of pipeline parameters with every value as text."""
    options = TrainOptions.from_strings({
        "epochs": "3.0", "learning_rate": "auto", "evaluate_every_epoch": "False",
        "loss_options": '{"margin": 0.1}', "miner": "123", "layerwise_decay": "none",
        "num_warmup_steps": "0",
    })  # fmt: skip
    assert (options.epochs, options.learning_rate, options.evaluate_every_epoch) == (
        3, "auto", False,
    )  # fmt: skip
    assert options.loss_options == {"margin": 0.1} and options.miner == "123"
    assert (options.layerwise_decay, options.num_warmup_steps) == ("none", 0)
    with pytest.raises(FinetunerError, match="parameter epochs: invalid value 'many'. Valid: "
                       "an integer >= 1, or auto"):  # fmt: skip
        TrainOptions.from_strings({"epochs": "many"})
    with pytest.raises(FinetunerError, match=r"parameter layerwise_decay: invalid value 0. "
                       r"Valid: a number in \(0, 1\], or none"):  # fmt: skip
        TrainOptions(layerwise_decay=0)
    with pytest.raises(FinetunerError, match="parameter batch_size: invalid value True"):
        TrainOptions(batch_size=True)
    with pytest.raises(FinetunerError, match="unknown parameter"):
        TrainOptions(epoch=3)


def test_auto_resolves_once_from_the_family_and_the_data():
    from finetuner.training.loop import TrainConfig, family_defaults
    from finetuner.training.losses import loss_for

    config = TrainConfig().validate().resolved("text")
    assert (config.learning_rate, config.epochs) == tuple(family_defaults("text").values())
    # Each family's own: fine-tuning a pretrained transformer, or training from scratch.
    for family, expected in [("text", (5e-5, 1)), ("mlp", (1e-3, 10)), ("pointnet", (1e-3, 20))]:
        config = TrainConfig().resolved(family)
        assert (config.learning_rate, config.epochs) == expected, family
    given = TrainConfig(learning_rate=1e-3, epochs=3).resolved("text")
    assert (given.learning_rate, given.epochs) == (1e-3, 3)
    assert loss_for("text", "auto", "pairs") == "MultipleNegativesRankingLoss"
    assert loss_for("text", "auto", "labeled") == "TripletMarginLoss"
    assert loss_for("text", "auto", "scored") == "CoSENTLoss"
    assert loss_for("clip", "auto", "pairs") == "CLIPLoss"
    assert loss_for("text", "auto") == "auto"  # the data not read yet


def test_an_explicit_loss_that_does_not_fit_the_data_is_refused():
    from finetuner.training.losses import loss_for

    # It used to become TripletMarginLoss silently.
    refused = "MultipleNegativesRankingLoss does not train on labeled data. Valid losses for "
    with pytest.raises(FinetunerError, match=refused + "labeled data: TripletMarginLoss"):
        loss_for("text", "MultipleNegativesRankingLoss", "labeled")
    with pytest.raises(FinetunerError, match="clip models train with CLIPLoss only"):
        loss_for("clip", "MultipleNegativesRankingLoss", "pairs")


def test_a_value_given_counts_as_given_even_at_the_usual_default():
    from finetuner.catalogue import lookup
    from finetuner.orchestration.steps import catalogue_lookup

    # Not given (None, auto): CLIP pools as it was pretrained.
    assert lookup("clip-base-en", resolve_weights=False).family == "clip"
    for name, value in (("pooler", "mean"), ("pooler_p", 3.0), ("max_length", 128)):
        with pytest.raises(FinetunerError, match=f"clip-base-en has no option '{name}'"):
            lookup("clip-base-en", **{name: value}, resolve_weights=False)
    text = catalogue_lookup("minilm-l6-en", pooler_p="auto", max_length="64")
    assert (text["pooler"], text["pooler_p"], text["max_length"]) == ("mean", 3.0, 64)


def test_the_train_step_takes_each_json_object_option_as_an_input():
    """kfp.local cannot nest a JSON object in the options dict: each is an input."""
    from finetuner.components.train import train
    from finetuner.parameters import STRUCT_OPTIONS

    inputs = train.component_spec.inputs
    assert set(STRUCT_OPTIONS) == {n for n, i in inputs.items() if i.type == "Dict"} - {
        "model_spec", "options", "trainjob", "node_selector",
    }  # fmt: skip
    assert STRUCT_OPTIONS
