"""The short results printed at the end of `./run.sh` and `bridgeflow run`, read from metrics/*.json.

The claims (the claims stage's full table, `claims.outputs.TABLE`: one paired interval and verdict per paper claim)
come first, one line each (`claims_lines`); then the headline numbers of every other metrics file (`summary_rows`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from pipeline_lib.claims.outputs import TABLE as CLAIMS_TABLE
from pipeline_lib.engine import stages
from pipeline_lib.engine.stages import get_stage
from pipeline_lib.engine.textgrid import grid_lines

log = logging.getLogger(__name__)

CLAIMS_STEM = "claims"  # metrics/claims.json: printed first, one line per claim, not as headline numbers
SUMMARY_WIDTH = 120
MIN_REPRODUCTION_WIDTH = 90  # the reproduction table's narrowest layout
VERDICTS = ("holds", "refuted", "undecided", "not run")
# Panel (unit) of a claim's difference -> short unit label; inferred from the claim's `metric` by `claim_panel`.
PANEL_UNITS = {"accuracy": "acc pts", "mAP": "mAP pts", "AUC": "AUC pts", "correlation": "rho", "other": ""}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(value: float) -> str:
    return f"{value:d}" if isinstance(value, int) else f"{value:.4g}"


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


def headline_rows(path: Path) -> list[tuple[str, str]]:
    """(metric, formatted value) rows of one metrics file: every number in it (the stages write headlines only).

    The claims file gives one row per claim: (claim id, "verdict difference [low, high]").
    """
    if path.stem == CLAIMS_STEM:
        doc = json.loads(path.read_text())
        return [(str(cid), " ".join(str(c[k]) if k != "difference" else _num(c[k])
                                    for k in ("verdict", "difference", "interval") if k in c))
                for cid, c in (doc.items() if isinstance(doc, dict) else ()) if isinstance(c, dict)]
    return [(k, _format(v)) for k, v in flatten_metrics(json.loads(path.read_text())) if _is_number(v)]


def summary_rows(root: Path) -> list[tuple[str, str, str]]:
    """(metrics file name, metric, formatted value) rows over every metrics file."""
    return [
        (metrics_name(path), key, value)
        for path in metrics_files(root)
        if path.stem != CLAIMS_STEM  # printed apart, first (claims_lines)
        for key, value in headline_rows(path)
    ]


def results_lines(root: Path, width: int = SUMMARY_WIDTH) -> list[str]:
    """Every metrics file but the claims as text within `width` columns (`textgrid`: shared leaves make tables)."""
    lines = []
    for path in metrics_files(root):
        if path.stem != CLAIMS_STEM:
            lines += grid_lines(metrics_name(path), headline_rows(path), width)
    return lines


def reproduction_lines(root: Path, width: int = SUMMARY_WIDTH) -> list[str]:
    """This run's numbers vs the papers' published ones (`reproduction`), or where published numbers exist."""
    from pipeline_lib.reproduction.compare import render_text
    from pipeline_lib.reproduction.sources import published_rows

    return render_text(published_rows(root), width=max(width, MIN_REPRODUCTION_WIDTH))


def metrics_files(root: Path) -> list[Path]:
    """The metrics JSON files the registry declares that exist under `root`, in pipeline order (a matrix stage's
    files, `metrics/czsl/<dataset>.json`, in name order)."""
    declared = (path for stage in stages.STAGES for template in stage.metrics  # read at call time
                for path in sorted(root.glob(stages.path_pattern(template))))
    return [path for path in dict.fromkeys(declared) if path.is_file()]


def metrics_name(path: Path) -> str:
    """How results name a metrics file: its stem (`fewshot`), or `czsl/<dataset>` for a matrix stage's file."""
    return path.stem if path.parent.name == "metrics" else f"{path.parent.name}/{path.stem}"


# --- claims: the claims stage's full table ----------------------------------------------------------------------


def claim_panel(metric: str) -> str:
    """The unit panel of a claim from its `metric` text: accuracy / mAP / AUC points, a correlation, or other."""
    text = metric.lower()
    if "correlation" in text or "spearman" in text:  # before AUC: "Spearman correlation of RMG and AUC"
        return "correlation"
    if "map" in text:
        return "mAP"
    if "auc" in text:
        return "AUC"
    if "acc" in text:
        return "accuracy"
    return "other"


def claims_path(root: Path) -> Path:
    """Where the claims stage writes its full table (in its output folder; the metrics file is the short form)."""
    return root / get_stage("claims").manifest_dir / CLAIMS_TABLE


def _claims_doc(doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        return None
    return {**doc, "claims": [c for c in doc["claims"] if isinstance(c, dict)]}


def load_claims(root: Path) -> dict[str, Any] | None:
    """The claims stage's full table ({"level", "claims": [...]}), or None when missing or unreadable."""
    path = claims_path(root)
    if not path.is_file():
        return None
    try:
        doc = _claims_doc(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        log.warning("claims: cannot read %s: %s", path, err)
        return None
    if doc is None:
        log.warning("claims: %s has no list of claims", path)
    return doc


def is_measured(claim: dict[str, Any]) -> bool:
    """Whether a claim has an interval to show (run, with mean / low / high numbers)."""
    return claim.get("verdict") != "not run" and all(_is_number(claim.get(k)) for k in ("mean", "low", "high"))


def _num(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else str(value)


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` characters with an ellipsis; a claim id keeps its `@<shots>shot` suffix."""
    if len(text) <= width:
        return text
    head, at, tail = text.rpartition("@")
    if at and len(tail) + 3 <= width:
        return head[: width - len(tail) - 2] + "…@" + tail
    return text[: width - 1] + "…"


def claims_header(doc: dict[str, Any]) -> str:
    level = doc.get("level", 0.95)
    pct = f"{100 * level:.0f}%" if _is_number(level) else "?"
    return f"claims ({pct} intervals; paired over seeds or queries)"


def claims_lines(doc: dict[str, Any] | None, width: int = SUMMARY_WIDTH) -> list[str]:
    """The claims as text lines of at most `width` columns: a header, then per claim its id, verdict and
    mean [low, high] (n) with the unit. Ids are shortened to fit, numbers never; a claim that did not run shows
    why, cut to the line."""
    if doc is None:
        return ["claims: none yet (the claims table is missing or unreadable: run the claims stage)"]
    claims = doc.get("claims", [])
    if not claims:
        return [claims_header(doc), "  (no claims in the claims table)"]
    measured = [c for c in claims if is_measured(c)]
    cols = {k: max((len(_num(c[k])) for c in measured), default=0) for k in ("mean", "low", "high")}
    n_w = max((len(str(c.get("n", ""))) for c in measured), default=0)

    def numbers(c: dict[str, Any]) -> str:
        n = f"(n={c['n']})" if "n" in c else ""
        return (
            f"{_num(c['mean']):>{cols['mean']}} [{_num(c['low']):>{cols['low']}}, "
            f"{_num(c['high']):>{cols['high']}}] {n:<{n_w + 4}}"
        )

    verdict_w = max(len(v) for v in VERDICTS)
    rest_w = max(
        (len(numbers(c)) + 2 + len(PANEL_UNITS[claim_panel(str(c.get("metric", "")))]) for c in measured), default=0
    )
    ids = [str(c.get("id", "?")) for c in claims]
    id_w = max(16, min(max(len(i) for i in ids), width - 2 - 2 - verdict_w - 2 - rest_w))
    lines = [claims_header(doc)]
    for claim_id, c in zip(ids, claims, strict=True):
        head = f"  {_fit(claim_id, id_w):<{id_w}}  {str(c.get('verdict', '?')):<{verdict_w}}  "
        if is_measured(c):
            unit = PANEL_UNITS[claim_panel(str(c.get("metric", "")))]
            lines.append((head + numbers(c) + "  " + unit).rstrip())
        else:
            why = str(c.get("diagnostic", "")) or "-"
            lines.append(head + _fit(why, max(10, width - len(head))))
    return lines
