"""Each model family's options as a pydantic schema: typed, with defaults and meanings.

`finetuner list-model-options MODEL` prints them, and catalogue-lookup validates a run's
choices against them, so an option a model does not have is an error that says so.
"""

from __future__ import annotations

import math
from types import UnionType
from typing import Annotated, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from finetuner.errors import FinetunerError


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


Positive = Annotated[float, AfterValidator(_positive)]


class Options(BaseModel):
    """A schema of options. A field whose type is another Options class is a group in
    Finetuner's style (`{"pooler_options": {"p": 2.0}}`): another way to write some flat
    options, folded into them after validation."""

    model_config = ConfigDict(extra="forbid")
    # The flat option each key of this class sets when it is used as a group.
    FLAT: ClassVar[dict[str, str]] = {}

    @classmethod
    def groups(cls) -> dict[str, type[Options]]:
        return {name: g for name, f in cls.model_fields.items() if (g := group_class(f))}

    @model_validator(mode="after")
    def _fold_groups(self):
        for name in self.groups():
            group = getattr(self, name)
            for key in sorted(group.model_fields_set) if group is not None else ():
                flat, value = group.FLAT.get(key, key), getattr(group, key)
                # A flat option counts as given only when it was set, not defaulted.
                if flat in self.model_fields_set and getattr(self, flat) != value:
                    raise ValueError(
                        f"parameter {name}.{key}: {value!r} disagrees with "
                        f"{flat}={getattr(self, flat)!r}; give one of them"
                    )
                setattr(self, flat, value)
        return self

    def flat_dump(self, exclude: tuple[str, ...] = (), **kwargs) -> dict:
        """The values without the groups, which are folded into the flat options."""
        return self.model_dump(exclude={*self.groups(), *exclude}, **kwargs)


def group_class(field) -> type[Options] | None:
    """The Options class of a group field (typed `SomeOptions | None`), else None."""
    for arg in (field.annotation, *get_args(field.annotation)):
        if isinstance(arg, type) and issubclass(arg, Options):
            return arg
    return None


def _gem_p():
    return Field(3.0, description="GeM's exponent p: 1 is mean pooling")


def _gem_eps():
    return Field(1e-6, description="GeM's floor on activations before the power")


def _max_length():
    return Field(128, ge=8, le=512, description="tokens kept of each text")


def _num_points():
    return Field(2048, ge=32, description="points sampled from each mesh")


def _augment():
    return Field(False, description="random rotation, scaling and jitter in training")


def _image_size():
    return Field(
        None, ge=32, le=1024, description="side of the square crop; None: the weights' own"
    )


class PoolerOptions(Options):
    FLAT: ClassVar[dict[str, str]] = {"p": "pooler_p", "eps": "pooler_eps"}
    p: Positive = _gem_p()
    eps: Positive = _gem_eps()


class CollateOptions(Options):
    max_length: int = _max_length()


class ImagePreprocessOptions(Options):
    image_size: int | None = _image_size()


class PointPreprocessOptions(Options):
    num_points: int = _num_points()
    augment: bool = _augment()


def _pooler_options():
    return Field(None, description="pooler_p and pooler_eps as one group")


def _output_dim():
    return Field(None, ge=1, description="add a linear projection head to this size; None: no head")


def _freeze():
    return Field(False, description="train only the projection head (needs output_dim)")


class _Backbone(Options):
    """Validators shared by the schemas of pretrained backbones (text and CNN)."""

    @field_validator("pooler", mode="before", check_fields=False)
    @classmethod
    def _pooler_case(cls, value):
        # Finetuner users write "gem" as often as "GeM".
        return "GeM" if isinstance(value, str) and value.lower() == "gem" else value

    @field_validator("freeze", check_fields=False)
    @classmethod
    def _freeze_needs_a_head(cls, freeze, info):
        # output_dim comes before freeze, so it is in info.data once valid.
        if freeze and not info.data.get("output_dim"):
            raise ValueError(
                "freeze trains only the projection head and needs output_dim, "
                'e.g. {"output_dim": 256, "freeze": true}'
            )
        return freeze


class TextOptions(_Backbone):
    pooler: Literal["mean", "cls", "max", "GeM"] = Field(
        "mean", description="how token embeddings become one vector"
    )
    pooler_p: Positive = _gem_p()
    pooler_eps: Positive = _gem_eps()
    pooler_options: PoolerOptions | None = _pooler_options()
    max_length: int = _max_length()
    collate_options: CollateOptions | None = Field(None, description="max_length as a group")
    output_dim: int | None = _output_dim()
    freeze: bool = _freeze()


class CNNOptions(_Backbone):
    pooler: Literal["mean", "GeM"] = Field(
        "mean", description="final pooling; GeM's p is learnable and starts at pooler_p"
    )
    pooler_p: Positive = _gem_p()
    pooler_eps: Positive = _gem_eps()
    pooler_options: PoolerOptions | None = _pooler_options()
    image_size: int | None = _image_size()
    preprocess_options: ImagePreprocessOptions | None = Field(
        None, description="image_size as a group"
    )
    output_dim: int | None = _output_dim()
    freeze: bool = _freeze()


class PointNetOptions(Options):
    num_points: int = _num_points()
    augment: bool = _augment()
    preprocess_options: PointPreprocessOptions | None = Field(
        None, description="num_points and augment as a group"
    )


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
    from finetuner.catalogue import get_entry

    return [_row(name, f) for name, f in schema(get_entry(model)).model_fields.items()]


def _schema_at(cls: type[Options], loc: tuple) -> type[Options]:
    """The schema that holds the option at loc: the model's own, or a group's."""
    field = cls.model_fields.get(str(loc[0])) if len(loc) > 1 else None
    return (group_class(field) if field else None) or cls


# Why a family takes no pooler, for the error that refuses one.
OWN_POOLING = {
    "clip": " (CLIP towers pool as they were pretrained: GeM and other poolers do not apply)",
    "pointnet": " (PointNet++ max-pools its point features: GeM and other poolers do not apply)",
    "mlp": " (an MLP embeds a vector: there is nothing to pool)",
}


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
            why = OWN_POOLING.get(entry.family, "") if name.startswith("pooler") else ""
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
