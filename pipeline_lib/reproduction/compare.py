"""Measured numbers next to the published ones: a polars table, its terminal text and an HTML fragment.

A measured row names the same key as a published row (task, dataset, backbone, method, setting, metric; see
`published.py`) and its value in our unit (OUR_UNITS unless the row says otherwise). Only measured rows with a
published counterpart appear in the table; everything is shown in the paper's unit.

`within_spread`: for a published value with a ±, whether |measured - published| <= spread; for a published range,
whether low <= measured <= high. Both bounds are inclusive, up to a 1e-9 relative tolerance, so a value exactly on a
quoted bound counts as within despite binary rounding (74.03 - 73.98 is 0.05000000000000426 in floating point).
None when the paper gives neither. The measured spread is shown but does not enter the test.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from pipeline_lib.reproduction.published import PublishedRow, PublishedTable, convert, dataset_id, load_published

#: The units our metrics files store, per (task, metric): few-shot accuracy in points, CZSL and retrieval as
#: fractions. A MeasuredRow with unit=None is taken to be in this unit.
OUR_UNITS: dict[tuple[str, str], str] = {
    ("fewshot", "accuracy"): "points",
    ("fewshot", "accuracy_diff"): "points",
    ("fewshot", "train_seconds"): "s",
    ("fewshot", "sv_median"): "ratio",
    ("fewshot", "sv_max"): "ratio",
    ("fewshot", "n_dropped"): "count",
    ("fewshot", "n_singular_values"): "count",
    **{("czsl", m): "fraction" for m in ("auc", "hm", "seen", "unseen", "auc_diff")},
    ("czsl", "rmg"): "ratio",
    ("czsl", "ow_threshold"): "ratio",
    **{(t, m): "fraction" for t in ("image_retrieval", "text_retrieval") for m in ("map", "map_diff")},
    ("image_retrieval", "seconds_per_query"): "s",
    ("text_retrieval", "seconds_per_query"): "s",
}

REL_TOL = 1e-9  # relative tolerance of the inclusive within-spread bounds
TEXT_WIDTH = 100  # terminal columns the text rendering fits
MIN_TEXT_WIDTH = 90  # below this the value columns alone may not fit

SCHEMA: dict[str, type[pl.DataType]] = {
    "task": pl.String,
    "dataset": pl.String,
    "backbone": pl.String,
    "method": pl.String,
    "setting": pl.String,
    "metric": pl.String,
    "unit": pl.String,  # the paper's unit; every number below is in it
    "measured": pl.Float64,
    "measured_spread": pl.Float64,
    "measured_n": pl.Int64,
    "published": pl.Float64,
    "published_spread": pl.Float64,
    "published_low": pl.Float64,
    "published_high": pl.Float64,
    "difference": pl.Float64,  # measured - published (None for a published range)
    "within_spread": pl.Boolean,
    "quality": pl.String,
    "paper": pl.String,
    "source": pl.String,
}


@dataclass(frozen=True)
class MeasuredRow:
    """One number this run measured, keyed like a published row."""

    task: str
    dataset: str  # any spelling published.dataset_id() knows
    backbone: str  # the paper's form: published.backbone_id(model, pretrained)
    method: str
    setting: str
    metric: str
    value: float
    unit: str | None = None  # None: OUR_UNITS[(task, metric)]
    spread: float | None = None  # e.g. the std over seeds, in the same unit as value
    n: int | None = None  # how many runs / queries the value averages

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.task, dataset_id(self.dataset), self.backbone, self.method, self.setting, self.metric)

    def our_unit(self) -> str:
        if self.unit is not None:
            return self.unit
        if (self.task, self.metric) not in OUR_UNITS:
            raise ValueError(
                f"measured row {self.key}: no unit given and ({self.task!r}, {self.metric!r}) has no "
                f"default in OUR_UNITS; pass unit="
            )
        return OUR_UNITS[(self.task, self.metric)]


def _close_or_below(a: float, b: float) -> bool:
    """a <= b, inclusive up to REL_TOL."""
    return a <= b or math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


def within_spread(measured: float, published: PublishedRow) -> bool | None:
    """Whether `measured` (in the paper's unit) lies inside the published ± or range; None when neither is given."""
    if published.value is None:
        assert published.low is not None and published.high is not None, f"range row without bounds: {published.key}"
        return _close_or_below(published.low, measured) and _close_or_below(measured, published.high)
    if published.spread is None:
        return None
    return _close_or_below(abs(measured - published.value), published.spread)


def _check_unique(measured: Sequence[MeasuredRow]) -> None:
    seen: set[tuple[str, ...]] = set()
    for m in measured:
        if m.key in seen:
            raise ValueError(
                f"measured key {m.key} given twice; give each (task, dataset, backbone, method, setting, metric) once"
            )
        seen.add(m.key)


def compare(measured: Iterable[MeasuredRow], published: PublishedTable | None = None) -> pl.DataFrame:
    """One row per measured number that has a published counterpart (in measured order), with SCHEMA's columns.
    Empty (same columns) when nothing matches."""
    table = published if published is not None else load_published()
    measured = list(measured)
    _check_unique(measured)
    records = []
    for m in measured:
        p = table.lookup(*m.key)
        if p is None:
            continue
        ours = m.our_unit()
        value = convert(m.value, ours, p.unit)
        records.append(
            {
                "task": p.task,
                "dataset": p.dataset,
                "backbone": p.backbone,
                "method": p.method,
                "setting": p.setting,
                "metric": p.metric,
                "unit": p.unit,
                "measured": value,
                "measured_spread": None if m.spread is None else convert(m.spread, ours, p.unit),
                "measured_n": m.n,
                "published": p.value,
                "published_spread": p.spread,
                "published_low": p.low,
                "published_high": p.high,
                "difference": None if p.value is None else value - p.value,
                "within_spread": within_spread(value, p),
                "quality": p.quality,
                "paper": p.paper_ref,
                "source": p.source,
            }
        )
    return pl.DataFrame(records, schema=SCHEMA)


def run_pairs(measured: Iterable[MeasuredRow]) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs a run measured, sorted."""
    return sorted({(dataset_id(m.dataset), m.backbone) for m in measured})


# ---------------------------------------------------------------------------------------------------- rendering

_DECIMALS = {"points": 2, "fraction": 4, "ratio": 4, "count": 0, "s": 1}


def _num(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:{'+' if signed else ''}.{_DECIMALS.get(unit, 4)}f}"


def _published_cell(row: dict, unit: str) -> str:
    if row["published"] is None:
        return f"[{_num(row['published_low'], unit)}, {_num(row['published_high'], unit)}]"
    text = _num(row["published"], unit)
    return f"{text} ± {_num(row['published_spread'], unit)}" if row["published_spread"] is not None else text


def _measured_cell(row: dict, unit: str) -> str:
    text = _num(row["measured"], unit)
    return f"{text} ± {_num(row['measured_spread'], unit)}" if row["measured_spread"] is not None else text


def _within_cell(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


NO_DATASET = "(dataset-independent)"  # how the dataset id "-" reads in messages


def _by_backbone(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    # Named backbones first, then the pooled / unstated ones ("several", "unspecified").
    for dataset, backbone in sorted(pairs, key=lambda p: (p[1] in ("several", "unspecified"), p[1], p[0])):
        out.setdefault(backbone, []).append(NO_DATASET if dataset == "-" else dataset)
    return out


def _pair_text(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return "no measured rows"
    return "; ".join(f"{b}: {', '.join(ds)}" for b, ds in _by_backbone(pairs).items())


def _available_lines(table: PublishedTable, width: int) -> list[str]:
    lines = ["Published numbers exist for these backbones and datasets:"]
    for backbone, datasets in _by_backbone(table.pairs()).items():
        lines += textwrap.wrap(
            ", ".join(datasets),
            width=width,
            initial_indent=f"  {backbone}: ",
            subsequent_indent=" " * 4,
            break_on_hyphens=False,
        )
    return lines


def _no_match_lines(measured: Sequence[MeasuredRow], table: PublishedTable, width: int) -> list[str]:
    ours = run_pairs(measured)
    known = set(table.pairs())
    if any(p in known for p in ours):
        head = (
            f"Published numbers exist for this run's {_pair_text([p for p in ours if p in known])}, but none for "
            f"the methods, settings and metrics it measured."
        )
    else:
        head = f"No published numbers exist for the datasets/backbone of this run ({_pair_text(ours)})."
    return textwrap.wrap(head, width=width) + _available_lines(table, width)


KEY_COLUMNS = ("dataset", "method", "setting", "metric")  # shown per row, or in the group header when constant
VALUE_HEADER = ("measured", "published", "diff", "within", "src")


#: Widths the key columns keep while others can still give (fits 'semobridge_all', 'coop11_mean', 'accuracy').
PREFERRED_WIDTH = {"dataset": 11, "method": 14, "setting": 8, "metric": 8}
MIN_WIDTH = 6


def _fit_widths(cells: list[list[str]], header: Sequence[str], width: int) -> list[int]:
    """Column widths that fit `width` with two-space gaps. Only key columns shrink: first toward PREFERRED_WIDTH, the
    one with the most to spare first, then toward MIN_WIDTH; cut cells end in '…'."""
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    shrinkable = [i for i, h in enumerate(header) if h in PREFERRED_WIDTH]
    for floor in ({i: PREFERRED_WIDTH[header[i]] for i in shrinkable}, dict.fromkeys(shrinkable, MIN_WIDTH)):
        while sum(widths) + 2 * (len(widths) - 1) > width:
            spare = {i: widths[i] - max(floor[i], len(header[i])) for i in shrinkable}
            i = max(spare, key=lambda j: spare[j], default=None)
            if i is None or spare[i] <= 0:
                break
            widths[i] -= 1
    return widths


def _clip(text: str, w: int) -> str:
    return text if len(text) <= w else text[: w - 1] + "…"


def _group_lines(rows: list[dict], sources: list[str], width: int) -> list[str]:
    """One (task, backbone, unit) group: a header naming what is constant, then an aligned table of the rest."""
    first = rows[0]
    varying = [c for c in KEY_COLUMNS if any(r[c] != first[c] for r in rows)]
    constant = [f"{c} {first[c]}" for c in KEY_COLUMNS if c not in varying]
    title = ", ".join([first["task"], first["backbone"], f"in {first['unit']}", *constant])
    header = [*varying, *VALUE_HEADER]
    cells = []
    for row in rows:
        if row["source"] not in sources:
            sources.append(row["source"])
        unit = row["unit"]
        cells.append(
            [
                *(row[c] for c in varying),
                _measured_cell(row, unit),
                _published_cell(row, unit),
                _num(row["difference"], unit, signed=True),
                _within_cell(row["within_spread"]),
                f"[{sources.index(row['source']) + 1}]",
            ]
        )
    widths = _fit_widths(cells, header, width)
    right = set(range(len(varying), len(varying) + 3))
    table = [
        "  ".join(
            _clip(c, w).rjust(w) if i in right else _clip(c, w).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [header, *cells]
    ]
    return ["", *textwrap.wrap(title + ":", width=width), table[0], "-" * min(width, len(table[0])), *table[1:]]


def render_text(
    measured: Sequence[MeasuredRow], published: PublishedTable | None = None, width: int = TEXT_WIDTH
) -> list[str]:
    """Plain-text lines, none longer than `width`: the comparison in (task, backbone, unit) groups, then the numbered
    sources; or, when nothing matches, a plain statement and the backbones and datasets that have published numbers.
    Key cells too long for the width are cut with '…' (the DataFrame and the HTML keep them whole)."""
    if width < MIN_TEXT_WIDTH:
        raise ValueError(f"width={width}; the text table needs at least {MIN_TEXT_WIDTH} columns")
    table = published if published is not None else load_published()
    df = compare(measured, table)
    if df.is_empty():
        return _no_match_lines(measured, table, width)
    lines = textwrap.wrap(
        "Measured vs published, in the paper's unit. within: inside the published ± or range "
        "(bounds included); '-' when the paper gives neither.",
        width=width,
    )
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in df.iter_rows(named=True):
        groups.setdefault((row["task"], row["backbone"], row["unit"]), []).append(row)
    sources: list[str] = []
    for rows in groups.values():
        lines += _group_lines(rows, sources, width)
    lines += ["", "Sources:"]
    for i, src in enumerate(sources, start=1):
        lines += textwrap.wrap(src, width=width, initial_indent=f"  [{i}] ", subsequent_indent=" " * 6)
    matched = set(zip(df["dataset"], df["backbone"], strict=True))
    unmatched = [p for p in run_pairs(measured) if p not in matched]
    if unmatched:
        lines += [""] + textwrap.wrap(f"No published numbers matched for {_pair_text(unmatched)}.", width=width)
    return lines


def render_html(measured: Sequence[MeasuredRow], published: PublishedTable | None = None) -> str:
    """An HTML fragment: a <table class="reproduction"> of the comparison, or, when nothing matches, a <p> saying so
    and a <ul> of the (dataset, backbone) pairs that do have published numbers. All text is escaped."""
    table = published if published is not None else load_published()
    df = compare(measured, table)
    esc = html.escape
    if df.is_empty():
        head, *rest = _no_match_lines(measured, table, width=10_000)
        items = "".join(f"<li>{esc(line.strip())}</li>" for line in rest[1:])
        return (
            f'<p class="reproduction-empty">{esc(head)}</p>\n<p>{esc(rest[0])}</p>\n'
            f'<ul class="reproduction-available">{items}</ul>'
        )
    header = [
        "task",
        "dataset",
        "backbone",
        "method",
        "setting",
        "metric",
        "unit",
        "measured",
        "published",
        "difference",
        "within",
        "quality",
        "source",
    ]
    out = [
        '<table class="reproduction">',
        "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in df.iter_rows(named=True):
        unit = row["unit"]
        within = _within_cell(row["within_spread"])
        cells = [
            row["task"],
            row["dataset"],
            row["backbone"],
            row["method"],
            row["setting"],
            row["metric"],
            unit,
            _measured_cell(row, unit),
            _published_cell(row, unit),
            _num(row["difference"], unit, signed=True),
            within,
            row["quality"],
            f"{row['paper']}: {row['source']}",
        ]
        css = {"yes": "within-yes", "no": "within-no"}.get(within, "within-na")
        tds = "".join(
            f'<td class="{css}">{esc(c)}</td>' if i == 10 else f"<td>{esc(c)}</td>" for i, c in enumerate(cells)
        )
        out.append(f"<tr>{tds}</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)
