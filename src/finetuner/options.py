"""Each model family's options as a pydantic schema: typed, with defaults and meanings.

`finetuner list-model-options MODEL` prints them, and catalogue-lookup validates a run's
choices against them, so an option a model does not have is an error that says so.
"""

from __future__ import annotations

import math
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from finetuner.errors import FinetunerError


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


Positive = Annotated[float, AfterValidator(_positive)]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _gem_p():
    return Field(3.0, description="GeM's exponent p: 1 is mean pooling")


def _gem_eps():
    return Field(1e-6, description="GeM's floor on activations before the power")


class _Pooling(Options):
    @field_validator("pooler", mode="before", check_fields=False)
    @classmethod
    def _pooler_case(cls, value):
        # Finetuner users write "gem" as often as "GeM".
        return "GeM" if isinstance(value, str) and value.lower() == "gem" else value


class TextOptions(_Pooling):
    pooler: Literal["mean", "cls", "max", "GeM"] = Field(
        "mean", description="how token embeddings become one vector"
    )
    pooler_p: Positive = _gem_p()
    pooler_eps: Positive = _gem_eps()
    max_length: int = Field(128, ge=8, le=512, description="tokens kept of each text")


class CNNOptions(_Pooling):
    pooler: Literal["mean", "GeM"] = Field(
        "mean", description="final pooling; GeM's p is learnable and starts at pooler_p"
    )
    pooler_p: Positive = _gem_p()
    pooler_eps: Positive = _gem_eps()


class PointNetOptions(Options):
    num_points: int = Field(2048, ge=32, description="points sampled from each mesh")
    augment: bool = Field(False, description="random rotation, scaling and jitter in training")


class MLPOptions(Options):
    input_size: int = Field(ge=1, description="length of the input vectors (required)")
    hidden_sizes: list[int] = Field([128], min_length=1, description="sizes of the layers")
    bias: bool = Field(True, description="whether the layers have a bias")
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] | None = Field(
        "relu", description="activation between layers"
    )
    l2: bool = Field(True, description="L2-normalise the output")


class NoOptions(Options):
    pass


SCHEMAS: dict[str, type[Options]] = {
    "text": TextOptions,
    "cnn": CNNOptions,
    "clip": NoOptions,
    "pointnet": PointNetOptions,
    "mlp": MLPOptions,
    "cross-encoder": NoOptions,
}


def schema(entry) -> type[Options]:
    return SCHEMAS[entry.family]


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


def list_model_options(model: str) -> list[dict]:
    """Every option of a model: name, type, default and meaning."""
    from finetuner.catalogue import get_entry

    rows = []
    for name, field in schema(get_entry(model)).model_fields.items():
        rows.append(
            {
                "option": name,
                "type": type_name(field.annotation),
                "default": "required" if field.is_required() else repr(field.default),
                "description": field.description or "",
            }
        )
    return rows


def validate_options(entry, **values) -> Options:
    """The model's options with these values; errors name the parameter and what is valid."""
    cls = schema(entry)
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "options"
        if error["type"] == "extra_forbidden":
            valid = ", ".join(cls.model_fields) or "none"
            raise FinetunerError(
                f"parameter {name}: {entry.name} has no option '{name}'. Its options: {valid}."
            ) from None
        if error["type"] == "literal_error":
            annotation = cls.model_fields[name].annotation
            valid = ", ".join(str(v) for v in get_args(annotation) if v is not None)
            raise FinetunerError(
                f"parameter {name}: '{error['input']}' is not valid for {entry.name}. "
                f"Valid {name}s: {valid}."
            ) from None
        message = error["msg"].removeprefix("Value error, ")
        raise FinetunerError(f"parameter {name}: {message} (model {entry.name}).") from None
