"""A tiny labelled corpus for backbone tests: colour is the only visible factor, so a few steps learn it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipeline_lib.backbone.pretrain import Corpus

RGB = {"red": (220, 30, 30), "blue": (30, 60, 230)}
SHAPES = ["circle", "square", "star"]
# A few pretraining steps on the tiny corpus: enough to exercise evaluation, checkpoints and logging.
SMALL_TRAIN = {
    "steps": 4,
    "warmup_steps": 1,
    "eval_images": 16,
    "log_every": 1,
    "eval_every": 2,
    "checkpoint_every": 2,
    "holdout_fraction": 0.25,
}


def make_corpus(n_groups: int = 8, n_single: int = 16, seed: int = 0) -> Corpus:
    """Solid-colour 32 px images; groups of 3 share every label but shape (like the world's contrast groups)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        base = {"colour": str(rng.choice(list(RGB))), "pattern": "solid", "size": str(rng.choice(["medium", "large"]))}
        rows += [{**base, "shape": s, "group": g} for s in SHAPES]
    for _ in range(n_single):
        rows.append(
            {
                "colour": str(rng.choice(list(RGB))),
                "pattern": str(rng.choice(["solid", "striped"])),
                "size": "large",
                "shape": str(rng.choice(SHAPES)),
                "group": -1,
            }
        )
    images = np.stack([np.broadcast_to(np.array(RGB[r["colour"]], np.uint8), (32, 32, 3)) for r in rows])
    noise = rng.integers(0, 20, images.shape).astype(np.uint8)
    return Corpus(images=(images + noise).astype(np.uint8), labels=pl.DataFrame(rows))


def write_corpus(data_dir: Path, corpus: Corpus) -> Path:
    """Lay the corpus out as the data stage does (artifacts/data/pretrain/images.npy + labels.parquet)."""
    folder = data_dir / "pretrain"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", corpus.images)
    corpus.labels.write_parquet(folder / "labels.parquet")
    return folder
