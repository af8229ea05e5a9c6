"""Pickles that dataset releases ship (revisited Oxford / Paris ground truth, the Cross-the-Gap LLM summaries), read
without letting them run code: the unpickler resolves only the globals a caller allows (numpy's array rebuilders for
the ground truth, none for plain dicts of strings), so a crafted file fails with a `DatasetError` instead."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from pipeline_lib.data.errors import DatasetError

#: numpy's array / scalar reconstruction (numpy 1 and 2 module paths), and _codecs.encode, which protocol-2 pickles
#: written by Python 3 use to rebuild the arrays' bytes (data only).
NUMPY_GLOBALS = frozenset({(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                           for n in ("_reconstruct", "scalar")}
                          | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global outside `allowed`."""

    def __init__(self, file: Any, allowed: frozenset[tuple[str, str]], what: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays from Python 2 pickles
        self.allowed, self.what = allowed, what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise DatasetError(f"{self.what} names the disallowed global {module}.{name}")
        # numpy 2 renamed numpy.core to numpy._core (the old path still imports, with a deprecation warning)
        return getattr(importlib.import_module(module.replace("numpy.core.", "numpy._core.", 1)), name)


def load_pickle(path: Path, what: str, allowed: frozenset[tuple[str, str]] = frozenset()) -> Any:
    """The object pickled in `path` (`what` names it in errors), resolving only the `allowed` globals."""
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, allowed, f"{what} {path}").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc
