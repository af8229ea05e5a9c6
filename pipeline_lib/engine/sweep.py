"""Parameter sweeps: parse a grid of params overrides, keep each point's results, compare the points' headline metrics.

Shared by both sweep runners (the Prefect `sweep_flow` and the DVC experiment queue); no Prefect, no DVC here.

Separator rule of `-S key=v1,v2`: values are split at commas outside brackets, braces and quotes, so
`fewshot.shots=[1,4],[2,8]` gives the two values `[1,4]` and `[2,8]`; quote a string value that holds a comma
(`-S 'key="a,b",c'`). Each value is then read as YAML, exactly like a single `-S key=value`.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline_lib.engine.params import ParamsError, parse_override
from pipeline_lib.engine.stages import stage_names, upstream_closure
from pipeline_lib.engine.summary import HEADLINES, headline_rows, metrics_files

SWEEPS_DIR = Path(".bridgeflow") / "sweeps"
POINT_FILE = "point.json"
_CLOSERS = {"[": "]", "{": "}"}


def split_values(text: str) -> list[str]:
    """Split a value list at top-level commas (outside [], {} and quotes); empty items are an error."""
    values, depth, quote, start = [], [], "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _CLOSERS:
            depth.append(_CLOSERS[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif char == "," and not depth:
            values.append(text[start:i].strip())
            start = i + 1
    if quote or depth:
        raise ParamsError(f"sweep values {text!r}: unbalanced {quote or depth[-1]!r}")
    values.append(text[start:].strip())
    if any(not v for v in values):
        raise ParamsError(f"sweep values {text!r}: empty value (separate values with single commas)")
    return values


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """`["k=v1,v2", "j=a"]` -> `{"k": ["v1", "v2"], "j": ["a"]}` (value texts, each valid YAML)."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        if "=" not in spec:
            raise ParamsError(f"sweep axis {spec!r} must look like key=v1,v2")
        key, raw = (part.strip() for part in spec.split("=", 1))
        if key in grid:
            raise ParamsError(f"sweep key {key!r} is given twice; list all its values in one -S {key}=v1,v2")
        values = split_values(raw)
        for value in values:
            parse_override(f"{key}={value}")  # each value must be valid YAML on its own
        grid[key] = values
    if not grid:
        raise ParamsError("a sweep needs at least one -S key=v1,v2")
    return grid


def value_text(value: Any) -> str:
    """A grid value as override text: strings as given, anything else as JSON (which YAML reads back unchanged)."""
    return value if isinstance(value, str) else json.dumps(value)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[list[str]]:
    """Every combination of the grid's values, as `key=value` override lists (first key varies slowest)."""
    if not grid or any(not list(values) for values in grid.values()):
        raise ParamsError(f"sweep grid {dict(grid)!r}: every key needs at least one value")
    keys = list(grid)
    return [
        [f"{k}={value_text(v)}" for k, v in zip(keys, combo, strict=True)]
        for combo in itertools.product(*grid.values())
    ]


def validate_points(root: Path, profile: str | None, points: Sequence[Sequence[str]]) -> None:
    """Validate every point's params up front, so a bad key or value fails before the first point runs."""
    from pipeline_lib.engine.preflight import preflight  # imports every section model: only when sweeping

    for point in points:
        preflight(root, profile, tuple(point))


def point_name(index: int, overrides: Sequence[str]) -> str:
    """A folder name for a point: its index, then its overrides shortened to `leaf=value`, filesystem-safe."""
    text = "-".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in (o.split("=", 1) for o in overrides))
    return f"{index:03d}-" + re.sub(r"[^A-Za-z0-9=.+-]+", "-", text).strip("-")[:80]


def result_paths(stages: Sequence[str] | None) -> list[str]:
    """Metrics and plot files written by the named stages and everything upstream (default: every stage)."""
    closure = upstream_closure(list(stages) if stages else stage_names())
    return [path for stage in closure for path in stage.metrics + tuple(p.path for p in stage.plots)]


def keep_point(
    root: Path, dest: Path, overrides: Sequence[str], stages: Sequence[str] | None, rows: Sequence[Mapping[str, Any]]
) -> Path:
    """Copy the point's published metrics and plots into `dest` (before the next point republishes them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in result_paths(stages):
        if (root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest / rel)
    point = {"overrides": list(overrides), "stages": [dict(row) for row in rows]}
    (dest / POINT_FILE).write_text(json.dumps(point, indent=2) + "\n")
    return dest


def comparison(
    points: Sequence[tuple[Sequence[str], Path]], only_changed: bool = False
) -> tuple[list[str], list[dict[str, str]]]:
    """One row per point: its override values, then the headline metrics found under its folder's `metrics/`.

    Metric columns are `file:metric` (e.g. `gap:energy.weak`); `only_changed` drops columns equal across points.
    """
    rows: list[dict[str, str]] = []
    for overrides, folder in points:
        row = {key: value for key, value in (o.split("=", 1) for o in overrides)}
        for path in metrics_files(folder):
            row.update({f"{path.stem}:{metric}": value for metric, value in headline_rows(path)})
        rows.append(row)
    columns = list(dict.fromkeys(column for row in rows for column in row))
    if only_changed and len(rows) > 1:
        columns = [c for c in columns if len({row.get(c, "") for row in rows}) > 1]
    return columns, [{c: row.get(c, "") for c in columns} for row in rows]


def headline_column_regex(stages: Sequence[str] | None, swept_keys: Sequence[str]) -> str:
    """A regex for `dvc exp show --keep`: the swept params and the headline metrics of the stages' metrics files.

    DVC names a column by its key, prefixed with `path:` only when two files share the key; `--keep` matches at the
    start of the name, so the regex allows such a prefix.
    """
    closure = upstream_closure(list(stages) if stages else stage_names())
    stems = {Path(p).stem for stage in closure for p in stage.metrics}
    metric_res = [fnmatch.translate(pattern) for stem in sorted(stems) for pattern in HEADLINES.get(stem, ())]
    param_res = [re.escape(key) + r"\Z" for key in swept_keys]
    return r"(?:[^:]*:)?(?:" + "|".join(param_res + metric_res) + ")"
