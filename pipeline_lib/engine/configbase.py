"""Base class for params.yaml sections: strict, frozen, with errors that name the key, the value and what is allowed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    """One group of params.yaml. Unknown keys are rejected (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class NamedPaths(Section):
    """A section whose text fields name files or folders: a name YAML read as a number is still a name.

    (EuroSAT's CoOp layout keeps its images in `2750/`; `image_dir: 2750` must mean that folder.)
    """

    @field_validator("*", mode="before")
    @classmethod
    def _names_are_text(cls, v: object, info: ValidationInfo) -> object:
        text_field = cls.model_fields[info.field_name or ""].annotation in (str, str | None)
        return str(v) if text_field and isinstance(v, int | float) and not isinstance(v, bool) else v
