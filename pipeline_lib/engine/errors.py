"""The errors a user can cause (bad params, missing inputs, bad data, unsupported models) and fix themselves.

Entry points print these as one clear message instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pipeline_lib.engine.params import ParamsError


class StageLockedError(RuntimeError):
    """Another process is running the same stage instance in this workspace."""


class MissingUpstreamError(RuntimeError):
    """A stage was asked to run before the stages it reads from have published their outputs."""


class StoreError(RuntimeError):
    """A feature store that cannot be read as its readers expect: a damaged or half-written chunk, a wrong shape."""


class UnknownStageError(KeyError):
    """A stage or matrix instance name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UserInputError(Exception):
    """Base of the errors a method raises for bad user input (a dataset, a model name): entry points print them."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error class that means "the input is wrong"; method packages subclass `UserInputError`."""
    return (
        ParamsError,
        MissingUpstreamError,
        StageLockedError,
        StoreError,
        UnknownStageError,
        FileNotFoundError,
        UserInputError,
    )
