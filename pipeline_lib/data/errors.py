"""The one exception type for bad dataset input (missing files, corrupt images, malformed split files)."""

from __future__ import annotations

from pipeline_lib.engine.errors import UserInputError


class DatasetError(UserInputError):
    """A dataset on disk is missing, unreadable or malformed; the message names the file and what was expected."""
