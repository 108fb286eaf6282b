"""What is made from the declared parameters: a pipeline's signature and docstring, the
CLI flags, the keywords of `finetuner.fit`, the UI's dropdowns (`literals`) and the
README's table. A test compares each with what the repository holds."""

from __future__ import annotations

import argparse
import inspect
import json
import textwrap

from finetuner.parameters.base import GROUPS, Parameters, extra, parts, valid_text


def ordered(model: type[Parameters]) -> list[tuple[str, object]]:
    """The fields in the order a signature needs and help shows: required first, then by
    group, then as declared."""
    fields = list(model.model_fields.items())
    index = {name: i for i, (name, _) in enumerate(fields)}

    def key(item):
        name, field = item
        group = extra(field).get("group", "")
        rank = GROUPS.index(group) if group in GROUPS else len(GROUPS)
        return (not field.is_required(), rank, index[name])

    return sorted(fields, key=key)


def kfp_type(field) -> type:
    """The pipeline parameter's type: a value that may also be a word ("auto") is a string,
    as KFP has no unions (and no None)."""
    plain, words = parts(field.annotation)
    plain = [t for t in plain if t is not type(None)]
    if words or not plain:
        return str
    return plain[0]


def kfp_value(field, value):
    """A value as the pipeline parameter of kfp_type takes it."""
    if kfp_type(field) is str and not isinstance(value, str):
        return json.dumps(value)
    return value


def kfp_arguments(model: type[Parameters], values: dict) -> dict:
    """Arguments of the pipeline from parameter values."""
    fields = model.model_fields
    return {name: kfp_value(fields[name], value) for name, value in values.items()}


# ---------------------------------------------------------------- pipelines


def signature(model: type[Parameters]) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                kind,
                annotation=kfp_type(field),
                default=inspect.Parameter.empty
                if field.is_required()
                else kfp_value(field, field.get_default()),
            )
            for name, field in ordered(model)
        ]
    )


def args_section(model: type[Parameters], skip=(), indent: str = "    ") -> str:
    """The Google-style `Args:` section that documents every parameter."""
    lines = ["Args:"]
    for name, field in ordered(model):
        if name in skip:
            continue
        lines += textwrap.wrap(
            f"{name}: {field.description}",
            width=88,
            initial_indent=indent,
            subsequent_indent=indent * 2,
        )
    return "\n".join(lines)


def docstring(model: type[Parameters], summary: str) -> str:
    return f"{summary}\n\n{args_section(model)}\n"


def pipeline_function(model: type[Parameters], name: str, summary: str):
    """Make `body(params)`, which gets the parameters as one dict of pipeline channels, a
    pipeline function: KFP reads its parameters from the signature and their descriptions
    from the docstring, both made from `model`, and calls it with them."""

    def decorate(body):
        sig = signature(model)

        def pipeline(*args, **kwargs):
            return body(sig.bind(*args, **kwargs).arguments)

        pipeline.__signature__ = sig
        pipeline.__doc__ = docstring(model, summary)
        pipeline.__name__ = pipeline.__qualname__ = name
        pipeline.__module__ = body.__module__
        return pipeline

    return decorate


def literals(model: type[Parameters]) -> dict[str, list]:
    """The parameters with a fixed set of values, which the KFP UI shows as dropdowns."""
    out = {}
    for name, field in model.model_fields.items():
        plain, words = parts(field.annotation)
        if words and not plain:
            out[name] = list(words)
    return out


# ---------------------------------------------------------------- the command line


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return value in ("true", "1", "yes")


def json_value(text: str, kind: type = dict):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        example = "'{\"input_size\": 64}'" if kind is dict else '\'[{"key": "gpu"}]\''
        what = "a JSON object" if kind is dict else "a JSON list"
        raise argparse.ArgumentTypeError(f"expected {what}, like {example}")
    return value


def json_object(text: str) -> dict:
    return json_value(text, dict)


def _flag_type(field):
    plain, words = parts(field.annotation)
    numbers = [t for t in plain if t in (int, float)]
    if dict in plain:
        return json_object
    if list in plain:
        return lambda text: json_value(text, list)
    if bool in plain:
        return boolean
    if not numbers:
        return str

    def number(text: str):
        if text in words:
            return text
        try:
            return numbers[0](text)
        except ValueError:
            options = " or ".join([f"{'an integer' if numbers[0] is int else 'a number'}", *words])
            raise argparse.ArgumentTypeError(f"expected {options}, got '{text}'") from None

    number.__name__ = numbers[0].__name__
    return number


def flag_name(name: str, flags: dict) -> str:
    return flags.get(name, "--" + name.replace("_", "-"))


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[Parameters],
    flags: dict | None = None,
    optional: tuple = (),
    skip: tuple = (),
) -> None:
    """A flag for each parameter that a run on this machine uses, in argument groups:
    `--name-with-dashes` unless `flags` names it otherwise, with the parameter's default
    and its description as help; `optional` parameters are optional flags though the
    pipeline needs them. A switch (false by default) takes no value."""
    flags = flags or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, field in ordered(model):
        if name in skip or not extra(field).get("local", True):
            continue
        group_name = extra(field).get("group", "")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name} parameters")
        kwargs: dict = {"dest": name, "help": field.description.replace("%", "%%")}
        if field.is_required() and name not in optional:
            kwargs["required"] = True
        elif not field.is_required():
            kwargs["default"] = field.get_default()
        flag = flag_name(name, flags)
        if kfp_type(field) is bool and field.get_default() is False:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _flag_type(field)
            kwargs["metavar"] = flag[2:].replace("-", "_").upper()
        groups[group_name].add_argument(flag, **kwargs)


# ---------------------------------------------------------------- the Python API


def keywords(model: type[Parameters], skip=()) -> list[inspect.Parameter]:
    """Keyword-only parameters with their defaults, for a function like `finetuner.fit`."""
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=field.get_default(),
            annotation=field.annotation,
        )
        for name, field in ordered(model)
        if name not in skip and not field.is_required()
    ]


# ---------------------------------------------------------------- the README


def _default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default()
    if isinstance(value, dict | list | bool):
        return f"`{json.dumps(value)}`"
    return f"`{value}`" if value != "" else "empty"


def markdown_table(model: type[Parameters]) -> str:
    """The parameters as a Markdown table, by group."""
    rows = ["| group | parameter | valid | default | description |", "|---|---|---|---|---|"]
    for name, field in ordered(model):
        description = field.description.replace("|", "\\|")
        rows.append(
            f"| {extra(field).get('group', '')} | `{name}` | {valid_text(field)} | "
            f"{_default_text(field)} | {description} |"
        )
    return "\n".join(rows) + "\n"
