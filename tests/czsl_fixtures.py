"""A tiny dataset in the standard CZSL layout (3 attrs x 3 objs), written exactly as the real releases are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# File order is deliberately not sorted: train labels must follow it.
TRAIN_PAIRS = [("red", "ball"), ("green", "cube"), ("blue", "cone"), ("red", "cube")]
VAL_PAIRS = [("red", "ball"), ("green", "ball"), ("blue", "cube")]  # 1 seen + 2 unseen
TEST_PAIRS = [("green", "cube"), ("red", "cone"), ("blue", "ball")]  # 1 seen + 2 unseen
# (green, cone) is in no pair file: its images are dropped in both worlds.

# (image, attr, obj, set) in metadata order.
METADATA = [
    ("red_ball/0.png", "red", "ball", "train"),
    ("green_cube/0.png", "green", "cube", "train"),
    ("blue_cone/0.png", "blue", "cone", "train"),
    ("red_cube/0.png", "red", "cube", "train"),
    ("green_ball/9.png", "NA", "ball", "train"),  # attr NA -> skipped
    ("red_ball/1.png", "red", "ball", "val"),  # a seen pair in val: routed by `set`
    ("green_ball/0.png", "green", "ball", "val"),
    ("blue_cube/0.png", "blue", "cube", "val"),
    ("green_cube/1.png", "green", "cube", "test"),  # seen pair listed in test_pairs
    ("red_cone/0.png", "red", "cone", "test"),
    ("green_cone/0.png", "green", "cone", "test"),  # pair in no file -> skipped
    ("red_ball/2.png", "red", "ball", "NA"),  # set NA -> skipped
    ("blue_ball/0.png", "blue", "ball", "test"),
    ("blue_ball/1.png", "blue", "ball", "holdout"),  # any other set value -> test
]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{a} {o}\n" for a, o in pairs), encoding="utf-8")


def write_czsl_fixture(root: Path, metadata: list[tuple[str, str, str, str]] | None = None) -> Path:
    """Write the fixture under `root` (pair files, torch.save'd metadata, 4x4 PNGs) and return root."""
    metadata = METADATA if metadata is None else metadata
    split_dir = root / "compositional-split-natural"
    split_dir.mkdir(parents=True, exist_ok=True)
    write_pairs(split_dir / "train_pairs.txt", TRAIN_PAIRS)
    write_pairs(split_dir / "val_pairs.txt", VAL_PAIRS)
    write_pairs(split_dir / "test_pairs.txt", TEST_PAIRS)
    entries = [{"image": img, "attr": a, "obj": o, "set": s} for img, a, o, s in metadata]
    torch.save(entries, root / "metadata_compositional-split-natural.t7")
    rng = np.random.default_rng(0)
    for img, *_ in metadata:
        path = root / "images" / img
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(path)
    return root
