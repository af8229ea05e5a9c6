"""Pure functions behind `bridgeflow czsl-eval` and the pair-order listing, so any model's scores can be scored.

    bridgeflow czsl-eval --root DATASET --split val|test --world closed|open --scores FILE.npy
                         [--feasibility FEAS.npy --threshold T]

FILE.npy: float32 (N, P), memory-mapped, or float64 (read as a float32 copy); rows in the split's metadata order
(images kept by the loader), columns in `pair_order(root, world)` (closed: sorted union of the pair files; open:
attrs x objs, attr-major). Scores are used as given (no re-normalisation). FEAS.npy: float32/64 (A * O,) over the
open-world pair order. With --feasibility and no --threshold on the val split, the threshold is calibrated on those
val scores (spec 2.5.2) and returned, to be passed to the test run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline_lib.czsl.data import WORLDS, Pair, load_czsl_dataset, read_pair_splits
from pipeline_lib.czsl.evaluator import DEFAULT_CHUNK_SIZE, ScoreBlocks, evaluate_split
from pipeline_lib.czsl.feasibility import (
    FILTER_VARIANTS,
    Feasibility,
    FilterVariant,
    calibrate_on_val,
    feasibility_filter,
)

log = logging.getLogger(__name__)


def pair_order(root: Path, world: str) -> list[Pair]:
    """The score-matrix column order of a dataset root in a world (reads only the pair files)."""
    if world not in WORLDS:
        raise ValueError(f"world={world!r}; expected one of {WORLDS}")
    return read_pair_splits(Path(root)).pairs(world)  # type: ignore[arg-type]


def split_rows(root: Path, world: str) -> dict[str, int]:
    """Rows of each evaluated split's score matrix (the images its metadata keeps), e.g. {"val": 6, "test": 8}."""
    ds = load_czsl_dataset(Path(root), world, check_images=False)  # type: ignore[arg-type]
    return {split: ds.split(split).height for split in ("val", "test")}


def evaluate_scores_file(
    root: Path,
    split: str,
    world: str,
    scores_path: Path,
    feasibility_path: Path | None = None,
    threshold: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    filter_variant: FilterVariant = "multiply",
    top_k: int = 1,
    device: torch.device | str | None = None,
    check_sizes: bool = True,
) -> dict:
    """Score a saved (N, P) matrix with the standard evaluator; returns a JSON-serialisable dict.

    Keys: seen, unseen, hm, auc, attr_acc, obj_acc, best_bias (fractions, as `CzslMetrics.summary()`), plus
    split, world, n_samples, n_pairs, n_seen, n_unseen, and with feasibility: threshold, threshold_source
    ("given" or "calibrated_on_val"), filter, feasibility.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r}; expected 'val' or 'test'")
    if world not in WORLDS:
        raise ValueError(f"world={world!r}; expected one of {WORLDS}")
    if filter_variant not in FILTER_VARIANTS:
        raise ValueError(f"filter_variant={filter_variant!r}; expected one of {FILTER_VARIANTS}")
    if feasibility_path is None and threshold is not None:
        raise ValueError("a threshold was given without --feasibility; expected both or neither")
    if feasibility_path is not None and world != "open":
        raise ValueError(f"feasibility filtering applies to the open world only; got world={world!r}")
    ds = load_czsl_dataset(Path(root), world, check_images=False, check_sizes=check_sizes)  # type: ignore[arg-type]
    n, p = ds.split(split).height, len(ds.pairs)
    scores = _load_matrix(Path(scores_path), (n, p), f"{split} scores ({world} world: {n} images x {p} pairs)")
    out: dict = {}
    kwargs = {"chunk_size": chunk_size, "top_k": top_k, "device": device}
    if feasibility_path is None:
        metrics = evaluate_split(scores, ds, split, **kwargs)
    else:
        feas_np = _load_matrix(Path(feasibility_path), (p,), "feasibility vector (open-world pair order)")
        feas = Feasibility(
            scores=torch.from_numpy(np.array(feas_np, dtype=np.float32)),
            seen_mask=ds.seen_mask,
            source=f"file:{Path(feasibility_path).name}",
        )
        nonzero_seen = int((feas.scores[ds.seen_mask] != 0).sum())
        if nonzero_seen:
            log.warning(
                "%d seen pairs have non-zero feasibility in %s; the references zero them",
                nonzero_seen,
                feasibility_path,
            )
        if threshold is None:
            if split != "val":
                raise ValueError(
                    "no --threshold given for the test split: run `bridgeflow czsl-eval --split val --world open "
                    "--feasibility FEAS.npy --scores VAL_SCORES.npy` and pass the threshold it prints as --threshold"
                )
            cal = calibrate_on_val(scores, ds, feas, variant=filter_variant, **kwargs)
            metrics, threshold, how = cal.val_metrics, cal.threshold, "calibrated_on_val"
        else:
            transform = feasibility_filter(feas.scores, ds.seen_mask, float(threshold), filter_variant)
            metrics = evaluate_split(scores, ds, split, column_transform=transform, **kwargs)
            how = "given"
        out.update(threshold=float(threshold), threshold_source=how, filter=filter_variant, feasibility=feas.source)
    result = {
        **metrics.summary(),
        "split": split,
        "world": world,
        "n_samples": n,
        "n_pairs": p,
        "n_seen": metrics.n_seen,
        "n_unseen": metrics.n_unseen,
        **out,
    }
    return result


def _load_matrix(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray | ScoreBlocks:
    """A float32/64 .npy of an exact shape, checked: a score matrix as `ScoreBlocks` (rows read from the file as the
    evaluator asks, so memory stays bounded at C-GQA's open world: benchmarks/czsl_scale.py), a vector as float32."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{what}: {path} is not a plain .npy array ({exc})") from exc
    if arr.dtype not in (np.float32, np.float64):
        raise ValueError(f"{what}: {path} has dtype {arr.dtype}; expected float32 or float64 (float16 cannot hold "
                         "the evaluator's -1e10 mask)")
    if tuple(arr.shape) != shape:
        want = " x ".join(map(str, shape))
        raise ValueError(f"{what}: {path} has shape {' x '.join(map(str, arr.shape))}; expected {want}")
    if len(shape) == 2:
        return ScoreBlocks.from_npy(path)
    return np.asarray(arr, dtype=np.float32)
