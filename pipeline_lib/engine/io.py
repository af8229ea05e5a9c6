"""Small result files (metrics JSON, plot CSVs) written atomically.

Each file is written to a temporary sibling and moved into place with `os.replace`, so a reader (DVC, the report, a
resumed run) sees either the old file or the whole new one, never half of it after a crash.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def _atomic_write(path: Path | str, write: Callable[[IO[str]], object]) -> None:
    """Create the parents, write a temporary sibling with `write`, then replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per call: concurrent writers of one file never share a temporary; mode "x" keeps the umask's
    # permissions (unlike mkstemp's 0600), so the result reads like any other output.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(
    path: Path | str,
    data: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write `data` as JSON text ending in a newline; serialised first, so an unserialisable value leaves no file."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    _atomic_write(path, lambda fh: fh.write(text))


def write_csv(path: Path | str, header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> None:
    """Write a header line and one line per row.

    A row is either a sequence in header order or a mapping read by the header's names (a missing name gives an empty
    cell; names outside the header are left out), so callers can pass the records they already have.
    """
    columns = list(header)

    def cells(row: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any]:
        return [row.get(c, "") for c in columns] if isinstance(row, Mapping) else row

    def write(fh: IO[str]) -> None:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(cells(r) for r in rows)

    _atomic_write(path, write)
