"""Validating a run's model options against its family's schema, and listing them.

`finetuner list-model-options MODEL` prints them, and catalogue-lookup validates a run's
choices against them, so an option a model does not have is an error that says so. The
schemas are the families' own (finetuner.models.registry.Family.options).
"""

from __future__ import annotations

from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import ValidationError

from finetuner.errors import FinetunerError
from finetuner.models.options import Options, group_class
from finetuner.models.registry import get_family


def schema(entry) -> type[Options]:
    return get_family(entry.family).options


def type_name(annotation) -> str:
    """A readable type: `mean | cls`, `list[int]`, `relu | gelu | None`."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in args)
    if get_origin(annotation) in (Union, UnionType):
        return " | ".join(type_name(a) for a in args)
    if args:
        return f"{annotation.__name__}[{', '.join(type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else annotation.__name__


def _row(name: str, field) -> dict:
    group = group_class(field)
    if group is None:
        kind = type_name(field.annotation)
        default = "required" if field.is_required() else repr(field.default)
    else:  # shown as the dict it is written as, with the defaults of its keys
        fields = group.model_fields.items()
        kind = "{" + ", ".join(f"{k}: {type_name(f.annotation)}" for k, f in fields) + "}"
        default = "{" + ", ".join(f"{k}: {f.default!r}" for k, f in fields) + "}"
    return {
        "option": name,
        "type": kind,
        "default": default,
        "description": field.description or "",
    }


def list_model_options(model: str) -> list[dict]:
    """Every option of a model: name, type, default and meaning."""
    from finetuner.catalogue.rows import get_entry

    return [_row(name, f) for name, f in schema(get_entry(model)).model_fields.items()]


def _schema_at(cls: type[Options], loc: tuple) -> type[Options]:
    """The schema that holds the option at loc: the model's own, or a group's."""
    field = cls.model_fields.get(str(loc[0])) if len(loc) > 1 else None
    return (group_class(field) if field else None) or cls


def validate_options(entry, **values) -> Options:
    """The model's options with these values; errors name the parameter and what is valid."""
    cls = schema(entry)
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        name = ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        if not name:  # a check of several options, whose message names them
            raise FinetunerError(f"{message} (model {entry.name}).") from None
        holder = _schema_at(cls, loc)
        if error["type"] == "model_type":  # a group that is not a dict
            message = f"expected a dict like {_row(name, holder.model_fields[name])['type']}"
        if error["type"] == "extra_forbidden":
            valid = ", ".join(holder.model_fields) or "none"
            own = get_family(entry.family).own_pooling
            why = f" ({own})" if own and name.startswith("pooler") else ""
            raise FinetunerError(
                f"parameter {name}: {entry.name} has no option '{name}'{why}. Its options: {valid}."
            ) from None
        if error["type"] == "literal_error":
            annotation = holder.model_fields[str(loc[-1])].annotation
            valid = ", ".join(str(v) for v in get_args(annotation) if v is not None)
            raise FinetunerError(
                f"parameter {name}: '{error['input']}' is not valid for {entry.name}. "
                f"Valid {name}s: {valid}."
            ) from None
        # Pydantic's own messages do not say the value; ours (value_error) do.
        plain = error["type"] in ("missing", "value_error")
        value = "" if plain else f"invalid value {error['input']!r}: "
        raise FinetunerError(f"parameter {name}: {value}{message} (model {entry.name}).") from None
