"""What a run parameter is: a pydantic field with a group, bounds that are checked with a
message naming the parameter, the value and what is valid, and, where it has one, the
reason for the bounds.

Words such as "auto" are values of their own (a `Literal` in the field's type), never a
number or an empty string standing for something else."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finetuner.errors import FinetunerError

AUTO = "auto"
Auto = Literal["auto"]
NONE = "none"
NoneWord = Literal["none"]

# How CLI help and the README lay the parameters out, in this order.
GROUPS = ("data", "synthesis", "model", "training", "evaluation", "output", "cluster")


def param(
    default: Any = ...,
    description: str = "",
    group: str = "",
    why: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    local: bool = True,
) -> Any:
    """A run parameter: its default (none: required), the description that the pipeline's
    docstring, the CLI help and the README show, its group, its bounds and why they are what
    they are. `local=False`: a cluster setting, which a run on this machine ignores (no CLI
    flag)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    extra = {"group": group, "why": why, "local": local}
    extra["bounds"] = {k: v for k, v in bounds.items() if v is not None}
    return Field(default, description=description, json_schema_extra=extra)


def extra(field) -> dict:
    return field.json_schema_extra or {}


def parts(annotation) -> tuple[list, list]:
    """A field type's plain types and its words (the values of its Literals)."""
    plain, words = [], []
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in args:
            sub_plain, sub_words = parts(arg)
            plain += sub_plain
            words += sub_words
    elif typing.get_origin(annotation) is Literal:
        words += list(args)
    else:
        plain.append(annotation)
    return plain, words


def valid_text(field) -> str:
    """What a field takes, in words: 'an integer >= 1, or auto'."""
    plain, words = parts(field.annotation)
    bounds = extra(field).get("bounds", {})
    texts = []
    for kind in plain:
        if kind is type(None):
            continue
        if kind in (int, float):
            texts.append(_number_text("an integer" if kind is int else "a number", bounds))
        else:
            names = {str: "a string", bool: "true or false", dict: "a JSON object"}
            texts.append(names.get(kind, "a JSON list" if kind is list else str(kind)))
    if words:
        texts.append(("one of " if len(words) > 1 and not texts else "") + ", ".join(words))
    text = ", or ".join(texts)
    if type(None) in plain:
        text += ", or None"
    return text


def _number_text(kind: str, bounds: dict) -> str:
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds.get("gt"))
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds.get("lt"))
    if low[1] is None and high[1] is None:
        return kind
    if high[1] is None:
        return f"{kind} {'>=' if low[0] == 'ge' else '>'} {low[1]}"
    if low[1] is None:
        return f"{kind} {'<=' if high[0] == 'le' else '<'} {high[1]}"
    left = "[" if low[0] == "ge" else "("
    right = "]" if high[0] == "le" else ")"
    return f"{kind} in {left}{low[1]}, {high[1]}{right}"


def _in_bounds(value: float, bounds: dict) -> bool:
    # Comparisons with NaN are false: it is out of any bounds.
    return (
        ("ge" not in bounds or value >= bounds["ge"])
        and ("gt" not in bounds or value > bounds["gt"])
        and ("le" not in bounds or value <= bounds["le"])
        and ("lt" not in bounds or value < bounds["lt"])
    )


def invalid(cls, name: str, value) -> FinetunerError:
    field = cls.model_fields[name]
    why = extra(field).get("why", "")
    return FinetunerError(
        f"parameter {name}: invalid value {value!r}. Valid: {valid_text(field)}"
        f"{f' ({why})' if why else ''}."
    )


class Parameters(BaseModel):
    """A set of run parameters. Building one checks every value; a bad one fails with a
    FinetunerError that names it and says what is valid. Unknown names are refused."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _error(type(self), exc, values) from None

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_given(cls, values):
        """Bounds of the numbers as given (the message shows the value the user wrote), and
        no switch where a number belongs (pydantic would take True for 1)."""
        for name, value in values.items() if isinstance(values, dict) else ():
            field = cls.model_fields.get(name)
            if field is None or not isinstance(value, int | float):
                continue
            plain, _ = parts(field.annotation)
            if isinstance(value, bool):
                if bool not in plain and (int in plain or float in plain):
                    raise invalid(cls, name, value)
            elif not _in_bounds(value, extra(field).get("bounds", {})):
                raise invalid(cls, name, value)
        return values

    @model_validator(mode="after")
    def _bounds(self):
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            bounds = extra(field).get("bounds")
            if bounds and isinstance(value, int | float) and not isinstance(value, bool):
                if not _in_bounds(value, bounds):
                    raise invalid(type(self), name, value)
        return self

    @classmethod
    def from_strings(cls, values: dict, **more):
        """Built from values that may arrive as text, as a KFP step gets the values of a
        dict of pipeline parameters: numbers, true/false and JSON are parsed where the
        parameter is not a string."""
        parsed = {}
        for name, value in values.items():
            field = cls.model_fields.get(name)
            if (
                isinstance(value, str)
                and field is not None
                and str not in parts(field.annotation)[0]
            ):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass  # a word ("auto", "True"), which validation takes or refuses
            parsed[name] = value
        return cls(**parsed, **more)

    @classmethod
    def defaults(cls) -> dict:
        return {n: f.get_default() for n, f in cls.model_fields.items() if not f.is_required()}


def _error(cls, exc: ValidationError, values: dict) -> FinetunerError:
    unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
    if unknown:
        return FinetunerError(f"unknown parameter(s): {', '.join(unknown)}.")
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "missing":
        return FinetunerError(f"parameter {name}: required.")
    if name in cls.model_fields:
        return invalid(cls, name, values.get(name, first.get("input")))
    return FinetunerError(f"invalid parameters: {exc}")
