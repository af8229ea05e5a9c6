"""Retrieval evaluation of the inversion stage: validation/test queries, step selection on validation, test numbers.

Each direction's inverted queries are split once into validation and test queries (`split_queries`, stratified by
label, seeded). The optimisation step reported as "selected" is the one with the best mAP on the validation queries
(`select_step`); every headline number is a mean over the test queries only: the intra-modal baseline, the inverted
queries at the final step (the reference protocol: a fixed number of steps) and at the selected step. Per-query AP of
every method at every recorded step is kept as a table (`outputs.PER_QUERY_AP`) for paired comparisons over queries.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from torch import Tensor

from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.diagnose.retrieval import PerQueryMetrics, per_query_metrics

SPLITS = ("val", "test")
BASELINE_STEP = -1  # the `step` of the intra-modal baselines in the per-query table
PER_QUERY_SCHEMA = {
    "direction": pl.String,  # "image" | "text"
    "method": pl.String,  # "image_to_image" | "oti_to_image" | "text_to_text" | "ovi_to_text"
    "step": pl.Int64,  # optimisation step of the inverted queries; BASELINE_STEP for the baselines
    "query": pl.Int64,  # row of the direction's query set
    "split": pl.String,  # "val" | "test"
    "ap": pl.Float64,
}
_SPLIT_SALT = {"image": 0, "text": 1}  # the two directions' splits are drawn independently from the one seed


def split_queries(labels: np.ndarray, val_fraction: float, seed: int | Sequence[int]) -> np.ndarray:
    """(Q,) boolean mask of the validation queries, stratified by label; the rest are the test queries.

    floor(Q * val_fraction) queries (at least 1, at most Q - 1) are validation queries, so an odd count leaves the
    extra query to the test side, whose numbers are reported. The queries are ordered by
    label (labels in a seeded random order) and within a label by a seeded random key, and every position i of that
    order with floor((i + 1) * V / Q) > floor(i * V / Q) is a validation query (systematic sampling): each label gets
    its share of validation queries to within one, and single-query labels (text groups) fall on either side at
    random. Deterministic in (labels, val_fraction, seed).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise ValueError(f"{n} queries cannot be split into validation and test queries; at least 2 are needed")
    n_val = min(max(int(np.floor(n * val_fraction + 1e-9)), 1), n - 1)  # + 1e-9: 0.57 * 100 = 56.999...
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(labels, return_inverse=True)
    label_rank = rng.permutation(int(inverse.max()) + 1)[inverse.reshape(-1)]
    order = np.lexsort((rng.permutation(n), label_rank))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    return (position + 1) * n_val // n > position * n_val // n


def direction_split(direction: str, labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """The validation mask of one direction's queries ("image" | "text") under the stage's seed."""
    return split_queries(labels, val_fraction, (seed, _SPLIT_SALT[direction]))


def select_step(val_map: Mapping[int, float]) -> int:
    """The step with the highest validation mAP; ties go to the earlier step (the shorter optimisation)."""
    if not val_map:
        raise ValueError("no steps to select from")
    return min(val_map, key=lambda s: (-val_map[s], s))


def evaluate_direction(
    direction: str,
    baseline: str,
    inverted: str,
    targets: np.ndarray | Tensor,
    snapshots: np.ndarray,
    steps: Sequence[int],
    final_step: int,
    labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    query_index: np.ndarray,
    *,
    is_val: np.ndarray,
    chunk: int,
    own: np.ndarray | None = None,
    relevant: RelevantSets | None = None,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Metrics of one direction (the metrics JSON's `image` / `text` entry, less its extras) and its per-query AP.

    `targets` (Q, D) are the raw query features (ranked for `baseline`), `snapshots` (Q, S, D) the inverted features
    at `steps` (ranked for `inverted`), `is_val` (Q,) the validation mask. Headline rows (the baseline, `inverted` at
    `final_step` and `{inverted}_selected` at the validation-selected step) are means over the test queries;
    `by_step` holds the mAP per step over each split. `own` and `relevant` are as in
    `pipeline_lib.diagnose.retrieval.per_query_metrics` (same-split benchmarks; explicit relevance).
    """
    is_val = np.asarray(is_val, dtype=bool)
    is_test = ~is_val
    kw: dict[str, Any] = {"chunk": chunk, "own": own, "relevant": relevant}
    base = per_query_metrics(targets, labels, gallery, gallery_labels, **kw)
    per_step = {int(s): per_query_metrics(snapshots[:, i], labels, gallery, gallery_labels, **kw)
                for i, s in enumerate(steps)}
    by_split = {split: {s: pq.mean(mask).map for s, pq in per_step.items()}
                for split, mask in zip(SPLITS, (is_val, is_test), strict=True)}
    selected = select_step(by_split["val"])
    base_test = base.mean(is_test).as_dict()
    final = per_step[final_step].mean(is_test).as_dict()
    chosen = per_step[selected].mean(is_test).as_dict()
    metrics = {
        "n_queries": len(is_val),
        "n_val": int(is_val.sum()),
        "n_test": int(is_test.sum()),
        "n_gallery": len(gallery),
        baseline: base_test,
        inverted: final,
        f"{inverted}_selected": chosen,
        "final_step": int(final_step),
        "selected_step": selected,
        "map_gain": final["map"] - base_test["map"],
        "map_gain_selected": chosen["map"] - base_test["map"],
        "by_step": {split: {str(s): m for s, m in maps.items()} for split, maps in by_split.items()},
    }
    split = np.where(is_val, "val", "test")
    frames = [_per_query_frame(direction, baseline, BASELINE_STEP, query_index, split, base)]
    frames += [_per_query_frame(direction, inverted, s, query_index, split, pq) for s, pq in per_step.items()]
    return metrics, pl.concat(frames)


def _per_query_frame(direction: str, method: str, step: int, query_index: np.ndarray, split: np.ndarray,
                     pq: PerQueryMetrics) -> pl.DataFrame:
    n = len(pq.ap)
    return pl.DataFrame(
        {"direction": [direction] * n, "method": [method] * n, "step": np.full(n, step, dtype=np.int64),
         "query": np.asarray(query_index, dtype=np.int64), "split": split, "ap": pq.ap},
        schema=PER_QUERY_SCHEMA,
    )


def write_per_query(path: Path, frames: Sequence[pl.DataFrame]) -> None:
    """Write the per-query AP table atomically (a temporary sibling moved into place)."""
    table = pl.concat(frames) if frames else pl.DataFrame(schema=PER_QUERY_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        table.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
