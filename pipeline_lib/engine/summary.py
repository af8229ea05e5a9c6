"""The short results table printed at the end of `./run.sh` and `bridgeflow run`, read from metrics/*.json."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from pipeline_lib.engine.stages import STAGES

# The headline numbers per metrics file (fnmatch patterns over dotted keys); without a match, the first numbers.
HEADLINES: dict[str, tuple[str, ...]] = {
    "data": ("images_total",),
    "backbone": ("zero_shot.*", "steps", "train_seconds"),
    "features": ("images_encoded", "images_per_s", "seconds"),
    "gap": (
        "matched_image_text",
        "image_image",
        "text_text",
        "centroid_distance",
        "energy.weak",
        "energy.outside_row_space",
        "retrieval_map.*",
        "zero_shot_accuracy",
        "prototype_accuracy.*_shot",
    ),
    "fewshot": ("test_acc.*.16.mean", "paired_test_diff.*.16.mean"),
    "inversion": (
        "image.image_to_image.map",
        "image.oti_to_image.map",
        "image.class_text_to_image.map",
        "image.best_map",
        "image.best_step",
        "text.text_to_text.map",
        "text.ovi_to_text.map",
        "text.best_map",
        "text.best_step",
    ),
    "czsl": ("rows.*.closed.auc", "rows.*.closed.hm", "rows.*.open.auc"),
}
MAX_ROWS_PER_FILE = 24


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
    """(metric, formatted value) rows of one metrics file: its headline metrics, else its first numbers."""
    flat = {k: v for k, v in flatten_metrics(json.loads(path.read_text())) if _is_number(v)}
    keys = [k for pattern in HEADLINES.get(path.stem, ()) for k in flat if fnmatch.fnmatchcase(k, pattern)]
    keys = list(dict.fromkeys(keys))[:MAX_ROWS_PER_FILE] or list(flat)[:MAX_ROWS_PER_FILE]
    return [(key, _format(flat[key])) for key in keys]


def summary_rows(root: Path) -> list[tuple[str, str, str]]:
    """(metrics file stem, metric, formatted value) rows over every metrics file."""
    return [(path.stem, key, value) for path in metrics_files(root) for key, value in headline_rows(path)]


def metrics_files(root: Path) -> list[Path]:
    """The metrics JSON files the registry declares that exist under `root`, in pipeline order."""
    declared = (root / path for stage in STAGES for path in stage.metrics)
    return [path for path in dict.fromkeys(declared) if path.is_file()]
