"""The report's first section: every paper claim with our paired 95% interval, as a forest plot and a table.

Reads the claims stage's full table (`summary.claims_path`). The forest plot has one row per claim that ran: a point
at the mean difference, a line from the interval's low to high end, a vertical line at 0, the marker coloured by
verdict; one
panel per unit (accuracy, mAP and AUC points, the gap correlation: `summary.claim_panel` reads it from the claim's
`metric`). Claims that did not run are listed under the plot and in the table, not plotted.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pipeline_lib.engine.summary import claim_panel, claims_header, claims_path, is_measured, load_claims

FOREST_PNG = "claims_forest.png"
PANEL_ORDER = ("accuracy", "mAP", "AUC", "correlation", "other")
PANEL_TITLES = {
    "accuracy": "test accuracy difference (points)",
    "mAP": "test-query mAP difference (points)",
    "AUC": "closed-world AUC difference (points)",
    "correlation": "Spearman correlation of RMG and AUC (claim: below 0)",
    "other": "other differences",
}
VERDICT_COLOURS = {"holds": "#2ca02c", "refuted": "#d62728", "undecided": "#7f7f7f"}
OTHER_COLOUR = "#1f77b4"  # a verdict outside the three above (the stage should not write one)
MAX_LABEL = 40


def forest_panels(claims: list[dict[str, Any]]) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[dict[str, Any]]]:
    """The forest plot's data: (panel, its measured claims in file order) per non-empty panel in PANEL_ORDER, and
    the claims not plotted (not run, or without numbers)."""
    panels: dict[str, list[dict[str, Any]]] = {p: [] for p in PANEL_ORDER}
    skipped = []
    for claim in claims:
        if is_measured(claim):
            panels[claim_panel(str(claim.get("metric", "")))].append(claim)
        else:
            skipped.append(claim)
    return [(p, rows) for p, rows in panels.items() if rows], skipped


def _label(claim_id: str) -> str:
    return claim_id if len(claim_id) <= MAX_LABEL else claim_id[: MAX_LABEL - 1] + "…"


def forest_png(panels: list[tuple[str, list[dict[str, Any]]]], png_path: Path, title: str) -> None:
    """One panel per unit, stacked, each row a claim: mean point, low-high line, 0 line; colour = verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    heights = [len(rows) + 1.2 for _, rows in panels]
    fig_height = 1.0 + 0.32 * sum(heights)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8.0, fig_height), dpi=100, squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, (panel, rows) in zip(axes[:, 0], panels, strict=True):
        ys = list(range(len(rows)))
        for y, claim in zip(ys, rows, strict=True):
            colour = VERDICT_COLOURS.get(str(claim.get("verdict")), OTHER_COLOUR)
            ax.hlines(y, claim["low"], claim["high"], color=colour, linewidth=2)
            ax.plot(claim["mean"], y, "o", color=colour, markersize=6)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(ys, [_label(str(c.get("id", "?"))) for c in rows], fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first claim on top, as in the table
        ax.set_title(PANEL_TITLES[panel], fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    handles = [Line2D([], [], color=c, marker="o", linewidth=2, label=v) for v, c in VERDICT_COLOURS.items()]
    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.legend(handles=handles, fontsize=7, loc="upper right", ncol=len(handles), frameon=False)
    fig.tight_layout()  # leaves room for the title, on whose line the legend sits
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)


def _ours(claim: dict[str, Any]) -> str:
    if not is_measured(claim):
        return "-"
    numbers = f"{claim['mean']:+.2f} [{claim['low']:+.2f}, {claim['high']:+.2f}]"
    how = ", ".join(str(x) for x in (f"n={claim['n']}" if "n" in claim else None, claim.get("interval")) if x)
    return f"<b>{html.escape(numbers)}</b> {html.escape(str(claim.get('metric', '')))}" + (
        f"<br><span class='note'>{html.escape(how)}</span>" if how else ""
    )


def claims_table(claims: list[dict[str, Any]]) -> str:
    """HTML table: claim (statement, id, paper), ours, paper effect, verdict, diagnostic; all text escaped."""
    head = "".join(
        f"<th>{h}</th>" for h in ("claim", "ours: mean [low, high]", "paper effect", "verdict", "diagnostic")
    )
    body = []
    for c in claims:
        verdict = str(c.get("verdict", "?"))
        claim = (
            f"{html.escape(str(c.get('claim', '')))}<br><span class='note'>{html.escape(str(c.get('id', '?')))}"
            f" &middot; {html.escape(str(c.get('paper', '')))}</span>"
        )
        colour = VERDICT_COLOURS.get(verdict, "#999999" if verdict == "not run" else OTHER_COLOUR)
        body.append(
            f"<tr class='claim'><td>{claim}</td><td>{_ours(c)}</td><td>{html.escape(str(c.get('paper_effect', '')))}"
            f"</td><td style='color:{colour};font-weight:bold'>{html.escape(verdict)}</td>"
            f"<td>{html.escape(str(c.get('diagnostic', '')))}</td></tr>"
        )
    return f"<table class='claims'><tr>{head}</tr>{''.join(body)}</table>"


def claims_section(root: Path, out_dir: Path) -> tuple[str, list[str], dict[str, Any] | None]:
    """HTML of the Claims section, the PNG names drawn and the claims document (None when missing)."""
    rel = claims_path(root).relative_to(root).as_posix()
    doc = load_claims(root)
    if doc is None:
        note = (
            f"{html.escape(rel)} is missing: run the claims stage."
            if not claims_path(root).is_file()
            else f"{html.escape(rel)} could not be read (see the log)."
        )
        return f"<h2 id='claims'>Claims</h2><p class='note'>No claims yet: {note}</p>", [], None
    claims = doc["claims"]
    panels, skipped = forest_panels(claims)
    header = claims_header(doc)
    boot = doc.get("bootstrap_resamples")
    intro = (
        f"<p class='note'>{html.escape(header[0].upper() + header[1:])}. Each claim is a paired difference (ours: "
        "mean [low, high], in points of the metric, except the correlation); it holds when the interval excludes 0 "
        "on the claimed side, is refuted when it excludes 0 on the other side, and is undecided when it contains 0."
        + (f" Query intervals: percentile bootstrap, {html.escape(str(boot))} resamples." if boot else "")
        + f" From {html.escape(rel)}.</p>"
    )
    pngs = []
    figure = ""
    if panels:
        forest_png(panels, out_dir / FOREST_PNG, "Claims: paired difference and interval")
        pngs.append(FOREST_PNG)
        figure = f"<img src='{FOREST_PNG}' alt='Claims forest plot'>"
    elif claims:
        figure = "<p class='note'>No claim has an interval yet: nothing to plot.</p>"
    not_plotted = (
        "<p class='note'>Not plotted (not run): "
        + "; ".join(
            f"{html.escape(str(c.get('id', '?')))} ({html.escape(str(c.get('diagnostic', '')) or 'no reason given')})"
            for c in skipped
        )
        + "</p>"
        if skipped
        else ""
    )
    table = claims_table(claims) if claims else f"<p class='note'>{html.escape(rel)} lists no claims.</p>"
    return f"<h2 id='claims'>Claims</h2>{intro}{figure}{not_plotted}{table}", pngs, doc
