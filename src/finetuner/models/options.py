"""The base of every model family's options schema: typed, with defaults and meanings.

A family module declares its schema from these (finetuner.models.registry.Family.options);
the catalogue validates a run's choices against it (finetuner.catalogue.options).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


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

    def embedding_dim(self) -> int | None:
        """The output size these options set, for a catalogue row that has none."""
        return None

    def flat_dump(self, exclude: tuple[str, ...] = (), **kwargs) -> dict:
        """The values without the groups, which are folded into the flat options."""
        return self.model_dump(exclude={*self.groups(), *exclude}, **kwargs)


def group_class(field) -> type[Options] | None:
    """The Options class of a group field (typed `SomeOptions | None`), else None."""
    for arg in (field.annotation, *get_args(field.annotation)):
        if isinstance(arg, type) and issubclass(arg, Options):
            return arg
    return None


def gem_p():
    return Field(3.0, description="GeM's exponent p: 1 is mean pooling")


def gem_eps():
    return Field(1e-6, description="GeM's floor on activations before the power")


class PoolerOptions(Options):
    FLAT: ClassVar[dict[str, str]] = {"p": "pooler_p", "eps": "pooler_eps"}
    p: Positive = gem_p()
    eps: Positive = gem_eps()


def pooler_options_field():
    return Field(None, description="pooler_p and pooler_eps as one group")


def output_dim_field():
    return Field(None, ge=1, description="add a linear projection head to this size; None: no head")


def freeze_field():
    return Field(False, description="train only the projection head (needs output_dim)")


class Backbone(Options):
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


class NoOptions(Options):
    pass
