"""FGVC-Aircraft in its own layout (CoOp reads it this way, not through a split json):

    <root>/images/<image id>.jpg
    <root>/variants.txt                          one class name per line: label = line number (from 0)
    <root>/images_variant_{train,val,test}.txt   "<image id> <variant name>" per line (names may contain spaces)
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline_lib.data.coop import CoopDataset, require_files, split_frame
from pipeline_lib.data.errors import DatasetError

log = logging.getLogger(__name__)


def load_fgvc_dataset(root: str | Path, image_dir: str = "images", check_files: bool = True) -> CoopDataset:
    """The train, val and test splits of FGVC-Aircraft, as the CoOp loader's dataset container."""
    root = Path(root)
    images = (root / image_dir).resolve()
    variants_file = root / "variants.txt"
    if not variants_file.is_file():
        raise DatasetError(f"FGVC-Aircraft class list not found: {variants_file}")
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    label = {name: i for i, name in enumerate(classnames)}
    splits: dict[str, pl.DataFrame] = {}
    for split in ("train", "val", "test"):
        listing = root / f"images_variant_{split}.txt"
        if not listing.is_file():
            raise DatasetError(f"FGVC-Aircraft split list not found: {listing}")
        paths, labels, names = [], [], []
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label:
                raise DatasetError(f"{listing}:{number}: variant {variant!r} is not in {variants_file}")
            paths.append(str(images / f"{image_id}.jpg"))
            labels.append(label[variant])
            names.append(variant)
        if check_files:
            require_files(paths, listing, split)
        splits[split] = split_frame(paths, labels, names)
    log.info("loaded FGVC-Aircraft %s: %d classes, %s", root, len(classnames),
             ", ".join(f"{n}={len(df)}" for n, df in splits.items()))
    return CoopDataset(root=root, image_dir=images, split_file=variants_file, classnames=classnames, splits=splits)
