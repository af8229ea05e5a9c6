"""Stage entry point of `diagnose`: the backbone's modality gap and intra-modal misalignment on its cached features.

`gap_report` reads the few-shot feature store and calls the plain functions of `diagnose.gap`; `run_diagnose` only
resolves paths and writes outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.backbone.config import DiagnoseConfig
from pipeline_lib.diagnose import gap as dg
from pipeline_lib.diagnose.outputs import GAP_DETAILS
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.engine.store import read_array

logger = logging.getLogger(__name__)


def gap_report(store: Path, cfg: DiagnoseConfig) -> tuple[dict[str, Any], list[dict[str, float]], dict[str, Any]]:
    """(metrics, histogram rows, details) of the few-shot feature store at `store` (of `backbone.diagnose.dataset`)."""
    if not Path(store).exists():
        raise FileNotFoundError(f"feature store {store} not found: run the features stage first")
    image = read_array(store, f"{cfg.split}/image")  # (N, D)
    labels = read_array(store, f"{cfg.split}/label")  # (N,)
    train = read_array(store, "train/image")  # (Ntr, D)
    train_labels = read_array(store, "train/label")
    class_text = read_array(store, "text/class_proj")  # (C, D)
    prompt_text = read_array(store, "text/prompt_proj")  # (C, M, D)
    text_projection = read_array(store, "clip/text_projection")  # (W, D)
    n_classes = len(class_text)

    spectrum = dg.projection_spectrum(text_projection, cfg.weak_atol)
    energy = dg.energy_shares(image, text_projection, cfg.weak_atol)
    gap = dg.gap_summary(image, labels, class_text, prompt_text)
    map_ii = dg.retrieval_map(image, labels, image, labels, exclude_self=True)
    map_ti = dg.retrieval_map(class_text, np.arange(n_classes), image, labels)
    zero_shot = dg.zero_shot_accuracy(image, labels, class_text)
    max_shots = int(np.bincount(train_labels, minlength=n_classes).min())
    shots = [k for k in cfg.shots if k <= max_shots]
    if len(shots) < len(cfg.shots):
        logger.warning(
            "shots %s skipped: the train split has only %d images in its smallest class",
            sorted(set(cfg.shots) - set(shots)),
            max_shots,
        )
    protos = dg.prototype_accuracy(train, train_labels, image, labels, n_classes, shots, cfg.seeds)

    metrics = {
        "split": cfg.split,
        "images": len(image),
        "classes": n_classes,
        **{k: round(v, 4) for k, v in gap.items()},
        "text_projection": {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in spectrum.items() if k != "singular_values"
        },
        "energy": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in energy.items()},
        "retrieval_map": {"image_to_image": round(map_ii, 4), "class_text_to_image": round(map_ti, 4)},
        "zero_shot_accuracy": round(zero_shot, 4),
        "prototype_accuracy": {f"{k}_shot": round(v["mean"], 4) for k, v in protos.items()},
        "prototype_accuracy_std": {f"{k}_shot": round(v["std"], 4) for k, v in protos.items()},
    }
    hist = dg.similarity_histograms(image, labels, class_text, prompt_text, cfg.bins, cfg.histogram_images)
    details = {"singular_values": spectrum["singular_values"], "prototypes": {str(k): v for k, v in protos.items()}}
    return metrics, hist, details


#: The gap numbers a reader compares across runs (dotted keys of `gap_report`'s metrics); the rest is in GAP_DETAILS.
HEADLINE = (
    "matched_image_text",
    "unmatched_image_text",
    "image_image",
    "text_text",
    "centroid_distance",
    "energy.weak",
    "zero_shot_accuracy",
    "retrieval_map.image_to_image",
    "retrieval_map.class_text_to_image",
)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The HEADLINE entries of `metrics`, nested as they are there."""
    out: dict[str, Any] = {}
    for key in HEADLINE:
        group, _, name = key.rpartition(".")
        (out.setdefault(group, {}) if group else out)[name] = (metrics[group] if group else metrics)[name]
    return out


def run_diagnose(ctx: StageContext) -> dict[str, Any]:
    """Modality-gap diagnostics of the few-shot feature store: the gap metrics and similarity histograms."""
    metrics, hist, details = gap_report(ctx.input("features_fewshot") / "fewshot.zarr", ctx.cfg.backbone.diagnose)
    write_json(ctx.output() / GAP_DETAILS, {**metrics, **details}, sort_keys=True)
    write_json(ctx.metrics(), headline(metrics), sort_keys=True)
    write_csv(ctx.plot("gap_similarity"), ["cosine", "image_text", "image_image", "text_text"], hist)
    return metrics
