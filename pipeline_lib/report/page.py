"""A static, network-free HTML report of the latest results: PNG plots, then folded metrics tables.

Driven by the stage registry: every declared plot CSV becomes a PNG (one line per y column, or per value of a text
column such as `method`), every metrics JSON a table. Summaries that only exist in a metrics JSON (the backbone's gap
statistics, intra-modal vs inverted retrieval, the CZSL ablation) get bar charts from `METRIC_FIGURES`, and the last
section plots every published instance's compute time and how often it ran vs was reused (the stage event log).
The page opens with the Claims section (`report.claims`: forest plot and table of the claims stage's full table), which
replaces the claims stage's own section. The only script is inline and marks each image as loaded or broken, so a
headless browser can check the page.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from pipeline_lib.engine.artifacts import read_manifest
from pipeline_lib.engine.config import effective_params
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.events import latest_status, outcome_counts, read_events
from pipeline_lib.engine.params import get_dotted
from pipeline_lib.engine.stages import STAGES, Plot, Stage, instances, path_pattern
from pipeline_lib.engine.summary import claims_path, flatten_metrics
from pipeline_lib.report.claims import claims_section

log = logging.getLogger(__name__)

MAX_TABLE_ROWS = 60
CLAIMS_STAGE = "claims"
MAX_LINES = 12

Bars = tuple[list[str], dict[str, list[float]]]  # (categories, series name -> one value per category)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _axes(height: float = 3.8) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, height), dpi=100)


def _save(fig: Any, png_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)


def plot_png(csv_path: Path, plot: Plot, png_path: Path) -> bool:
    """Draw one registry plot from its CSV; False when the CSV is missing or has none of the plot's columns."""
    if not csv_path.is_file():
        return False
    frame = pl.read_csv(csv_path, infer_schema_length=10000)
    ys = [y for y in plot.y if y in frame.columns]
    if frame.is_empty() or plot.x not in frame.columns or not ys:
        return False
    groups = [c for c in frame.columns if frame[c].dtype == pl.String and c != plot.x]
    fig, ax = _axes()
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
    _save(fig, png_path)
    return True


def bars_png(bars: Bars, title: str, png_path: Path, value_label: str = "", horizontal: bool = False) -> None:
    """Grouped bars: one group per category, one bar per series, each labelled with its value."""
    import numpy as np

    categories, series = bars
    fig, ax = _axes(max(3.0, 0.3 * len(categories) + 1.2) if horizontal else 3.8)
    width = 0.8 / len(series)
    positions = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        offsets = positions - 0.4 + width * (i + 0.5)
        if horizontal:
            drawn = ax.barh(offsets, values, height=width, label=name)
        else:
            drawn = ax.bar(offsets, values, width=width, label=name)
        ax.bar_label(drawn, fmt="%.3g", fontsize=6, padding=1)
    if horizontal:
        ax.set_yticks(positions, categories, fontsize=7)
        ax.invert_yaxis()  # first category on top, as in the tables
        ax.set_xlabel(value_label)
    else:
        ax.set_xticks(positions, categories, fontsize=7, rotation=20, ha="right")
        ax.set_ylabel(value_label)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    if len(series) > 1:
        ax.legend(fontsize=7)
    _save(fig, png_path)


def gap_bars(gap: dict[str, Any]) -> Bars | None:
    """The backbone's modality gap: mean cosines within and across modalities, and the centroid distance."""
    keys = {
        "matched image-text": "matched_image_text",
        "unmatched image-text": "unmatched_image_text",
        "image-image": "image_image",
        "text-text": "text_text",
        "centroid distance": "centroid_distance",
    }
    found = {label: gap[key] for label, key in keys.items() if isinstance(gap.get(key), (int, float))}
    return (list(found), {"backbone": list(found.values())}) if found else None


def inversion_bars(inv: dict[str, Any]) -> Bars | None:
    """Retrieval mAP of intra-modal queries vs the same queries inverted into the other modality."""
    pairs = {
        "image queries (OTI)": ("image", "image_to_image", "oti_to_image"),
        "text queries (OVI)": ("text", "text_to_text", "ovi_to_text"),
    }
    found = {
        label: inv[side]
        for label, (side, intra, inverted) in pairs.items()
        if intra in inv.get(side, {}) and inverted in inv.get(side, {})
    }
    if not found:
        return None
    intra = [inv[pairs[label][0]][pairs[label][1]]["map"] for label in found]
    last = [inv[pairs[label][0]][pairs[label][2]]["map"] for label in found]
    chosen = [inv[pairs[label][0]].get(f"{pairs[label][2]}_selected", {}).get("map", float("nan")) for label in found]
    return list(found), {"intra-modal": intra, "inverted, last step": last, "inverted, val-selected step": chosen}


def czsl_bars(czsl: dict[str, Any]) -> Bars | None:
    """The SAM-CZSL ablation ({row: {world: {metric: mean}}}): AUC and HM of every row in each world that has them."""
    rows = {name: row for name, row in czsl.items() if isinstance(row, dict)}
    if not rows:
        return None
    series = {
        f"{world} {metric.upper()}": [row[world][metric] for row in rows.values()]
        for world in ("closed", "open")
        for metric in ("auc", "hm")
        if all(isinstance(row.get(world), dict) and metric in row[world] for row in rows.values())
    }
    return (list(rows), series) if series else None


@dataclass(frozen=True)
class MetricFigure:
    """A bar chart drawn from a stage's metrics JSON, for summaries that have no plot CSV of their own."""

    stage: str  # its metrics file is the one the registry declares for the stage
    png: str
    title: str
    bars: Callable[[dict[str, Any]], Bars | None]  # None when the metrics lack what the figure needs
    value_label: str = ""


METRIC_FIGURES = (
    MetricFigure(
        "diagnose",
        "gap_summary.png",
        "Modality gap of the backbone",
        gap_bars,
        "mean cosine; centroid distance",
    ),
    MetricFigure("oti", "oti_map.png", "Image retrieval mAP: image->image vs OTI", inversion_bars, "mAP"),
    MetricFigure("ovi", "ovi_map.png", "Text retrieval mAP: text->text vs OVI", inversion_bars, "mAP"),
    MetricFigure("czsl", "czsl_ablation.png", "CZSL ablation (test split)", czsl_bars),
)


@dataclass(frozen=True)
class InstanceRun:
    """A published stage instance: its last computation (manifest) and its logged outcomes (event log)."""

    id: str
    seconds: float | None
    fingerprint: str
    finished: str
    last_outcome: str
    ran: int
    reused: int


def instance_runs(root: Path, params: dict[str, Any]) -> list[InstanceRun]:
    """One entry per published stage instance of the current params, in pipeline order."""
    manifests = {}
    for stage in STAGES:
        try:
            found = instances(stage, params)
        except KeyError:
            continue
        for inst in found:
            manifest = read_manifest(root, inst)
            if manifest:
                manifests[inst.id] = manifest
    events = read_events(root)
    counts, last = outcome_counts(events, list(manifests)), latest_status(events)
    return [
        InstanceRun(
            id=i,
            seconds=m.get("seconds"),
            fingerprint=m["fingerprint"],
            finished=m.get("finished", ""),
            last_outcome=last.get(i, "not logged"),
            ran=counts[i]["ran"],
            reused=counts[i]["reused"],
        )
        for i, m in manifests.items()
    ]


def _img(png: str, title: str) -> str:
    return f"<img src='{png}' alt='{html.escape(title)}'>"


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows[:MAX_TABLE_ROWS])
    more = (
        f"<p class='note'>{len(rows) - MAX_TABLE_ROWS} more values in the JSON file.</p>"
        if len(rows) > MAX_TABLE_ROWS
        else ""
    )
    return f"<table>{body}</table>{more}"


def reproduction_section(root: Path) -> str:
    """Measured vs published numbers (the papers' tables as data, `reproduction.published`), or which datasets and
    backbones have published numbers when this run's have none."""
    from pipeline_lib.reproduction.compare import render_html
    from pipeline_lib.reproduction.sources import published_rows

    return f"<h2 id='reproduction'>Reproduction</h2>{render_html(published_rows(root))}"


def runs_section(runs: list[InstanceRun], out_dir: Path) -> tuple[str, list[str]]:
    """HTML and PNG names of the timings and cache-hits section."""
    ids = [r.id for r in runs]
    timings = (ids, {"seconds": [r.seconds or 0.0 for r in runs]})
    bars_png(timings, "Stage timings (last computation)", out_dir / "stage_timings.png", "seconds", horizontal=True)
    hits = (ids, {"ran": [float(r.ran) for r in runs], "reused": [float(r.reused) for r in runs]})
    bars_png(hits, "Cache hits: computed vs reused", out_dir / "cache_hits.png", "times", horizontal=True)
    head = "".join(
        f"<th>{h}</th>" for h in ("stage", "seconds", "fingerprint", "finished", "last outcome", "ran", "reused")
    )
    body = "".join(
        f"<tr><td>{html.escape(r.id)}</td><td>{_fmt(r.seconds)}</td><td>{r.fingerprint[:12]}</td>"
        f"<td>{r.finished}</td><td>{html.escape(r.last_outcome)}</td><td>{r.ran}</td><td>{r.reused}</td></tr>"
        for r in runs
    )
    page = (
        "<h2>Stage timings and cache hits</h2><p class='note'>Seconds of each instance's last computation (its "
        "manifest); ran / reused counts every time bridgeflow ran it or found it already done (.bridgeflow/"
        "stage_events.jsonl; stages DVC skipped itself are not counted).</p><div class='grid'>"
        + _img("stage_timings.png", "Stage timings")
        + _img("cache_hits.png", "Cache hits")
        + f"</div><table><tr>{head}</tr>{body}</table>"
    )
    return page, ["stage_timings.png", "cache_hits.png"]


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em} table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#666;font-size:12px} .grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}
summary{cursor:pointer;font-weight:bold;margin:.4em 0}"""

# Marks each <img> data-loaded="yes|no" and the body data-images-loaded="N/M" once the page has loaded.
MARK_IMAGES_JS = """addEventListener('load',function(){var imgs=document.images,n=0;
for(var i=0;i<imgs.length;i++){var ok=imgs[i].complete&&imgs[i].naturalWidth>0;
imgs[i].setAttribute('data-loaded',ok?'yes':'no');n+=ok?1:0;}
document.body.setAttribute('data-images-loaded',n+'/'+imgs.length);});"""


def _instance_label(template: str, path: Path) -> str:
    """'' for a plain stage's file; the instance's name (`mit_states`) for a matrix stage's."""
    return path.stem if "{" in template else ""


def stage_section(root: Path, stage: Stage, out_dir: Path) -> tuple[str, list[str], list[str]]:
    """HTML of one stage's metrics tables and plots (every instance's, for a matrix stage), the PNG names drawn and
    the metrics files shown."""
    tables, pngs, shown, images = [], [], [], []
    for template in stage.metrics:
        for path in sorted(root.glob(path_pattern(template))):
            rel = path.relative_to(root).as_posix()
            doc = json.loads(path.read_text())
            rows = flatten_metrics(doc)
            summary = f"<summary>{html.escape(rel)} ({len(rows)} values)</summary>"
            tables.append(f"<details>{summary}{_table(rows)}</details>")
            shown.append(rel)
            label = _instance_label(template, path)
            for figure in (f for f in METRIC_FIGURES if f.stage == stage.name):
                bars = figure.bars(doc)
                if bars:
                    png = Path(figure.png).stem + (f"_{label}" if label else "") + ".png"
                    title = figure.title + (f": {label}" if label else "")
                    bars_png(bars, title, out_dir / png, figure.value_label)
                    images.append(_img(png, title))
                    pngs.append(png)
    for plot in stage.plots:
        for path in sorted(root.glob(path_pattern(plot.path))):
            label = _instance_label(plot.path, path)
            png = plot.name + (f"_{label}" if label else "") + ".png"
            title = plot.title + (f": {label}" if label else "")
            if plot_png(path, replace(plot, title=title), out_dir / png):
                images.append(_img(png, title))
                pngs.append(png)
    if not tables and not images:
        return "", [], []
    grid = "<div class='grid'>" + "".join(images) + "</div>" if images else ""
    return (
        f"<h2>{html.escape(stage.name)}</h2><p class='note'>{html.escape(stage.description)}</p>{grid}"
        + "".join(tables),
        pngs,
        shown,
    )


def write_report(root: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write index.html and its PNGs into out_dir; returns what was included."""
    out_dir.mkdir(parents=True, exist_ok=True)
    claims_html, pngs, claims = claims_section(root, out_dir)
    sections: list[str] = [claims_html, reproduction_section(root)]  # first: the claims lead the page
    metrics: list[str] = [claims_path(root).relative_to(root).as_posix()] if claims is not None else []
    for stage in STAGES:
        if stage.name == CLAIMS_STAGE:  # shown by the Claims section above
            continue
        section, drawn, shown = stage_section(root, stage, out_dir)
        sections.append(section)
        pngs += drawn
        metrics += shown
    runs = instance_runs(root, params)
    if runs:
        section, drawn = runs_section(runs, out_dir)
        sections.append(section)
        pngs += drawn
    model = html.escape(f"{get_dotted(params, 'backbone.model')} / {get_dotted(params, 'backbone.pretrained')}")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>bridgeflow report</title><style>{CSS}</style>"
        f"</head><body><h1>bridgeflow report</h1><p>Backbone: {model}</p>{''.join(sections)}"
        f"<script>{MARK_IMAGES_JS}</script></body></html>"
    )
    (out_dir / "index.html").write_text(page)
    log.info("report: %d plots, %d metrics files -> %s", len(pngs), len(metrics), out_dir)
    n_claims = len(claims["claims"]) if claims is not None else 0
    return {"plots": len(pngs), "metrics": len(metrics), "stages_timed": len(runs), "claims": n_claims}


def run_report(ctx: StageContext) -> dict[str, Any]:
    """The `report` stage: index.html with every plot and metrics table published so far."""
    return write_report(ctx.root, ctx.output(), effective_params(ctx.cfg))
