"""A static HTML report (no network, no JavaScript) of the latest results: PNG plots plus metrics tables.

Driven by the stage registry: every declared plot CSV becomes a PNG (one line per y column, or per value of a text
column such as `method`), every metrics JSON a table, and every published manifest a row of the timings table.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from pipeline_lib.artifacts import read_manifest
from pipeline_lib.params import get_dotted
from pipeline_lib.stages import STAGES, Plot, instances

log = logging.getLogger(__name__)

MAX_TABLE_ROWS = 60
MAX_LINES = 12


def flatten_metrics(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) rows of a metrics JSON; short numeric lists become one comma-separated value."""
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows += flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(data, list) and len(data) <= 8 and all(isinstance(v, (int, float)) for v in data):
        return [(prefix, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in data))]
    if isinstance(data, (int, float, str, bool)) or data is None:
        return [(prefix, data)]
    return []


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def plot_png(csv_path: Path, plot: Plot, png_path: Path) -> bool:
    """Draw one registry plot from its CSV; False when the CSV is missing or has none of the plot's columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not csv_path.is_file():
        return False
    frame = pl.read_csv(csv_path, infer_schema_length=10000)
    ys = [y for y in plot.y if y in frame.columns]
    if frame.is_empty() or plot.x not in frame.columns or not ys:
        return False
    groups = [c for c in frame.columns if frame[c].dtype == pl.String and c != plot.x]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    series: list[tuple[str, pl.DataFrame]] = (
        [(" / ".join(str(v) for v in key), part) for key, part in frame.group_by(groups, maintain_order=True)]
        if groups
        else [("", frame)]
    )
    drawn = 0
    for label, part in series:
        for y in ys:
            if drawn >= MAX_LINES:
                break
            data = part.select(plot.x, y).drop_nulls()
            name = " ".join(s for s in (label, y if len(ys) > 1 or not label else "") if s)
            if plot.template == "scatter":
                ax.plot(data[plot.x], data[y], marker="o", markersize=3, label=name or y)
            elif plot.template == "bar_horizontal":
                ax.barh([str(v) for v in data[plot.x]], data[y], label=name or y)
            else:
                ax.plot(data[plot.x], data[y], marker="." if data.height < 40 else None, label=name or y)
            drawn += 1
    ax.set_title(plot.title)
    ax.set_xlabel(plot.x)
    ax.grid(alpha=0.3)
    if drawn > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return True


def timings(root: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per published stage instance: seconds and fingerprint from its manifest."""
    rows = []
    for stage in STAGES:
        try:
            found = instances(stage, params)
        except KeyError:
            continue
        for inst in found:
            manifest = read_manifest(root, inst)
            if manifest:
                rows.append({"stage": inst.id, "seconds": manifest.get("seconds"), "fingerprint": manifest["fingerprint"],
                             "finished": manifest.get("finished", "")})
    return rows


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows[:MAX_TABLE_ROWS])
    more = f"<p class='note'>{len(rows) - MAX_TABLE_ROWS} more values in the JSON file.</p>" if len(rows) > MAX_TABLE_ROWS else ""
    return f"<table>{body}</table>{more}"


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em} table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#666;font-size:12px} .grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}"""


def write_report(root: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write index.html and its PNGs into out_dir; returns what was included."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    included = {"plots": [], "metrics": []}
    for stage in STAGES:
        parts: list[str] = []
        for metrics in stage.metrics:
            path = root / metrics
            if path.is_file():
                parts.append(f"<h3>{html.escape(metrics)}</h3>" + _table(flatten_metrics(json.loads(path.read_text()))))
                included["metrics"].append(metrics)
        images = []
        for plot in stage.plots:
            png = Path(plot.path).with_suffix(".png").name
            if plot_png(root / plot.path, plot, out_dir / png):
                images.append(f"<img src='{png}' alt='{html.escape(plot.title)}'>")
                included["plots"].append(plot.path)
        if images:
            parts.append("<div class='grid'>" + "".join(images) + "</div>")
        if parts:
            sections.append(f"<h2>{html.escape(stage.name)}</h2><p class='note'>{html.escape(stage.description)}</p>"
                            + "".join(parts))
    rows = timings(root, params)
    if rows:
        head = "<tr><th>stage</th><th>seconds</th><th>fingerprint</th><th>finished</th></tr>"
        body = "".join(f"<tr><td>{r['stage']}</td><td>{_fmt(r['seconds'])}</td><td>{r['fingerprint']}</td>"
                       f"<td>{r['finished']}</td></tr>" for r in rows)
        sections.append(f"<h2>Stage timings</h2><table>{head}{body}</table>")
    model = html.escape(f"{get_dotted(params, 'backbone.model')} / {get_dotted(params, 'backbone.pretrained')}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>bridgeflow report</title><style>{CSS}</style>"
            f"</head><body><h1>bridgeflow report</h1><p>Backbone: {model}</p>{''.join(sections)}</body></html>")
    (out_dir / "index.html").write_text(page)
    log.info("report: %d plots, %d metrics files -> %s", len(included["plots"]), len(included["metrics"]), out_dir)
    return {"plots": len(included["plots"]), "metrics": len(included["metrics"]), "stages_timed": len(rows)}


def run_report(ctx: Any) -> dict[str, Any]:
    """The `report` stage: reports/index.html with every plot and metrics table published so far."""
    from pipeline_lib.config import effective_params

    return write_report(ctx.root, ctx.out("reports"), effective_params(ctx.cfg))
