"""The short results table printed at the end of `./run.sh` and `bridgeflow run`, read from metrics/*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The headline numbers per metrics file (dotted paths); files not listed show their top-level numbers.
HEADLINES: dict[str, tuple[str, ...]] = {}
MAX_ROWS_PER_FILE = 10


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix, data)] if isinstance(data, (int, float)) and not isinstance(data, bool) else []


def _format(value: float) -> str:
    return f"{value:d}" if isinstance(value, int) else f"{value:.4g}"


def summary_rows(root: Path) -> list[tuple[str, str, str]]:
    """(metrics file stem, metric, formatted value) rows, headline metrics first."""
    rows: list[tuple[str, str, str]] = []
    for path in sorted((root / "metrics").glob("*.json")):
        flat = dict(_flatten(json.loads(path.read_text())))
        keys = [k for k in HEADLINES.get(path.stem, ()) if k in flat] or list(flat)[:MAX_ROWS_PER_FILE]
        rows += [(path.stem, key, _format(flat[key])) for key in keys]
    return rows
