"""Parameter sweeps: parse a grid of params overrides, keep each point's results, compare the points' headline metrics.

Shared by both sweep runners (the Prefect `sweep_flow` and the DVC experiment queue); no Prefect, no DVC here.

Separator rule of `-S key=v1,v2`: values are split at commas outside brackets, braces and quotes, so
`fewshot.shots=[1,4],[2,8]` gives the two values `[1,4]` and `[2,8]`; quote a string value that holds a comma
(`-S 'key="a,b",c'`). Each value is then read as YAML, exactly like a single `-S key=value`.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline_lib.engine.params import ParamsError, parse_override
from pipeline_lib.engine.stages import path_pattern, stage_names, upstream_closure
from pipeline_lib.engine.summary import flatten_metrics, metrics_files, metrics_name

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
    """Metrics and plot files written by the named stages and everything upstream (default: every stage); a matrix
    stage's files as glob patterns (`stages.path_pattern`)."""
    closure = upstream_closure(list(stages) if stages else stage_names())
    return [path_pattern(path) for stage in closure for path in stage.metrics + tuple(p.path for p in stage.plots)]


def keep_point(
    root: Path, dest: Path, overrides: Sequence[str], stages: Sequence[str] | None, rows: Sequence[Mapping[str, Any]]
) -> Path:
    """Copy the point's published metrics and plots into `dest` (before the next point republishes them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in result_paths(stages):
        for path in root.glob(pattern):
            rel = path.relative_to(root)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
    point = {"overrides": list(overrides), "stages": [dict(row) for row in rows]}
    (dest / POINT_FILE).write_text(json.dumps(point, indent=2) + "\n")
    return dest


def cell_text(value: Any) -> str:
    """One metric or param value as table text: numbers to 4 significant digits, everything else as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


def metric_cells(metrics: Mapping[str, Any]) -> dict[str, str]:
    """`{metrics file stem: parsed JSON}` -> `{"stem:dotted.key": text}`, every scalar the files hold, in file order.

    No metric name is special: whatever flat keys the metrics files hold become rows of the comparison.
    """
    return {f"{stem}:{key}": cell_text(value) for stem, data in metrics.items() for key, value in flatten_metrics(data)}


def compare_points(
    points: Sequence[tuple[Sequence[str], Mapping[str, Any]]], only_changed: bool = False
) -> tuple[list[str], list[dict[str, str]]]:
    """One row per point: its override values (the swept keys, always kept), then every metric its files hold.

    `points` are (overrides, {metrics file stem: parsed JSON}). Metric columns are `stem:dotted.key` (e.g.
    `gap:energy.weak`); `only_changed` drops the metric columns that are equal across points.
    """
    rows: list[dict[str, str]] = []
    swept: dict[str, None] = {}
    for overrides, metrics in points:
        row = {key: value for key, value in (o.split("=", 1) for o in overrides)}
        swept.update(dict.fromkeys(row))
        row.update(metric_cells(metrics))
        rows.append(row)
    columns = list(dict.fromkeys(column for row in rows for column in row))
    if only_changed and len(rows) > 1:
        columns = [c for c in columns if c in swept or len({row.get(c, "") for row in rows}) > 1]
    return columns, [{c: row.get(c, "") for c in columns} for row in rows]


def comparison(
    points: Sequence[tuple[Sequence[str], Path]], only_changed: bool = False
) -> tuple[list[str], list[dict[str, str]]]:
    """`compare_points` over the metrics files found under each point's folder (`keep_point`'s copies)."""
    loaded = [
        (overrides, {metrics_name(path): json.loads(path.read_text()) for path in metrics_files(folder)})
        for overrides, folder in points
    ]
    return compare_points(loaded, only_changed)


def transposed(
    columns: Sequence[str], rows: Sequence[Mapping[str, str]], swept: Sequence[str], names: Sequence[str]
) -> list[dict[str, str]]:
    """The comparison as records with a column per point (headed by `names`): the swept keys first, then a record per
    metric. For the table artifact, which a UI shows as it is (no width to fit)."""
    order = [*swept, *(c for c in columns if c not in swept)]
    return [
        {"name": column, **{name: row.get(column, "") for name, row in zip(names, rows, strict=True)}}
        for column in order
    ]


def metrics_paths(stages: Sequence[str] | None) -> list[str]:
    """The metrics files (repo-relative) of the named stages and everything upstream (default: every stage)."""
    closure = upstream_closure(list(stages) if stages else stage_names())
    return list(dict.fromkeys(path for stage in closure for path in stage.metrics))


def headline_column_regex(swept_keys: Sequence[str], metric_keys: Sequence[str]) -> str:
    """A regex for `dvc exp show --keep`: exactly the swept params and the given metric keys (the files' flat keys).

    DVC names a column by its key, prefixed with `path:` only when two files share the key; `--keep` matches at the
    start of the name, so the regex allows such a prefix and anchors the end.
    """
    names = sorted(set(swept_keys) | set(metric_keys))
    return r"(?:[^:]*:)?(?:" + "|".join(re.escape(name) for name in names) + r")\Z"


# --- the printed table: one column per point headed by its swept values, one row per metric -----------------------

TABLE_WIDTH = 100  # columns, when the terminal's width is unknown
MIN_PART = 4  # a shortened dotted part keeps at least this many characters, `…` included (the last part is whole)
GAP = "  "  # between two table columns
INDENT = "  "  # a metric's label under its metrics file's name


def cut_part(part: str, keep: int) -> str:
    """`part` in `keep` characters: its start and its end (a third), joined by `…` (`semobr…@16shot`)."""
    if keep >= len(part):
        return part
    tail = max(1, (keep - 1) // 3)
    return part[: keep - 1 - tail] + "…" + part[-tail:]


def shorten_key(key: str, limit: int) -> str:
    """`key` in about `limit` characters: its dotted parts but the last are cut in the middle, the longest first,
    down to `MIN_PART` characters; a key that fits, or has a single part, is returned whole."""
    parts = key.split(".")
    if len(key) <= limit or len(parts) == 1:
        return key
    keep = [len(part) for part in parts[:-1]]
    for _ in range(len(key) - limit):
        longest = max(range(len(keep)), key=keep.__getitem__)
        if keep[longest] <= MIN_PART:
            break
        keep[longest] -= 1
    return ".".join([*(cut_part(part, n) for part, n in zip(parts[:-1], keep, strict=True)), parts[-1]])


def unique_labels(keys: Sequence[str], limit: int) -> dict[str, str]:
    """Labels of at most about `limit` characters for distinct `keys`, never one label for two keys: keys whose
    shortened labels clash are shortened less, up to whole."""
    limits = dict.fromkeys(keys, limit)
    while True:
        labels = {key: shorten_key(key, limits[key]) for key in keys}
        owners: dict[str, list[str]] = {}
        for key, label in labels.items():
            owners.setdefault(label, []).append(key)
        clashing = [key for group in owners.values() if len(group) > 1 for key in group if labels[key] != key]
        if not clashing:
            return labels
        for key in clashing:  # each round lengthens a clashing label, so this ends at the latest with whole keys
            limits[key] = len(labels[key]) + MIN_PART


def pack_blocks(widths: Sequence[int], label_width: int, width: int) -> list[list[int]]:
    """Point column indices in blocks that fit `width` beside the label column (a block has one column at least)."""
    blocks: list[list[int]] = [[]]
    used = label_width
    for index, column in enumerate(widths):
        if blocks[-1] and used + len(GAP) + column > width:
            blocks.append([])
            used = label_width
        blocks[-1].append(index)
        used += len(GAP) + column
    return blocks


def render_comparison(
    columns: Sequence[str], rows: Sequence[Mapping[str, str]], swept: Sequence[str], width: int = TABLE_WIDTH
) -> str:
    """`compare_points`' table as text for a terminal `width` columns wide, transposed for reading.

    One column per point, headed by its swept values (one header line per swept key), then one line per metric,
    under the name of its metrics file. Points that do not fit beside the labels wrap into further blocks, each
    repeating the labels. Names longer than 2/5 of the width are shortened (`…`), never into another name's label.
    """
    metrics = [c for c in columns if c not in swept]
    groups: dict[str, list[str]] = {}
    for column in metrics:
        stem, _, key = column.partition(":")
        groups.setdefault(stem, []).append(key)
    limit = max(16, width * 2 // 5)
    labels = unique_labels(list(swept), limit)
    for stem, keys in groups.items():
        shortened = unique_labels(keys, limit - len(INDENT))
        labels.update({f"{stem}:{key}": INDENT + shortened[key] for key in keys})
    label_width = max([len(label) for label in labels.values()] + [len(stem) for stem in groups])
    order = [*swept, *metrics]
    cells = [[row.get(column, "") or "-" for column in order] for row in rows]  # cells[point][line]
    widths = [max(len(text) for text in point) for point in cells]

    def line(label: str, index: int, block: list[int]) -> str:
        values = [cells[point][index].rjust(widths[point]) for point in block]
        return GAP.join([label.ljust(label_width), *values])

    blocks = pack_blocks(widths, label_width, width)
    lines: list[str] = []
    for block in blocks:
        if len(blocks) > 1:
            lines += ([""] if lines else []) + [f"points {block[0] + 1}-{block[-1] + 1} of {len(rows)}"]
        lines += [line(labels[key], index, block) for index, key in enumerate(swept)]
        lines.append("-" * (label_width + sum(len(GAP) + widths[point] for point in block)))
        for stem, keys in groups.items():
            lines.append(stem)
            lines += [line(labels[f"{stem}:{key}"], order.index(f"{stem}:{key}"), block) for key in keys]
        if not groups:
            lines.append("(no metric differs between the points)")
    if any("…" in label for label in labels.values()):
        lines.append("(… marks a shortened name; COLUMNS=N shows more)")
    return "\n".join(text.rstrip() for text in lines)
