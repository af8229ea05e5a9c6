"""Base class for params.yaml sections: strict, frozen, with errors that name the key, the value and what is allowed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One group of params.yaml. Unknown keys are rejected (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
