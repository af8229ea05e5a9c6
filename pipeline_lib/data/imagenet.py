"""ImageNet in CoOp's layout: class folders, and the CLIP notebook's class names.

    <root>/<image_dir>/train/<wnid>/*.JPEG    the train split
    <root>/<image_dir>/val/<wnid>/*.JPEG      the 50k validation images: the test split, and val = test (spec 1.2)
    <root>/classnames.txt                     "<wnid> <class name>" per line

Labels follow the sorted wnid folders of the train split, as CoOp's loader assigns them; a val folder that is not a
train class, a class without a name, or an empty folder is an error before anything is extracted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl

from pipeline_lib.data.coop import CoopDataset, split_frame
from pipeline_lib.data.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def read_classnames(path: Path) -> dict[str, str]:
    """wnid -> class name from `classnames.txt` (the first space separates them; names may contain spaces)."""
    if not path.is_file():
        raise DatasetError(f"ImageNet class-name file not found: {path}")
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name.strip():
            raise DatasetError(f"{path}:{number}: expected '<wnid> <class name>', got {line!r}")
        names[wnid] = name.strip()
    return names


def _images(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        found = sorted(e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
    if not found:
        raise DatasetError(f"ImageNet class folder {folder} holds no image")
    return found


def load_imagenet_dataset(root: str | Path, image_dir: str = "images", classnames_file: str = "classnames.txt"
                          ) -> CoopDataset:
    """The train and val (= test) splits of an ImageNet folder, as the CoOp loader's dataset container."""
    root = Path(root)
    images = (root / image_dir).resolve()
    names = read_classnames(root / classnames_file)
    splits: dict[str, pl.DataFrame] = {}
    wnids: list[str] = []
    for split, folder in (("train", "train"), ("test", "val")):
        base = images / folder
        if not base.is_dir():
            raise DatasetError(f"ImageNet {split} folder not found: {base}")
        found = sorted(d.name for d in base.iterdir() if d.is_dir())
        if split == "train":
            wnids = found
            missing = [w for w in wnids if w not in names]
            if missing:
                raise DatasetError(f"{root / classnames_file} has no name for classes {missing[:5]}")
        unknown = sorted(set(found) - set(wnids))
        if unknown:
            raise DatasetError(f"{base}: folders {unknown[:5]} are not train classes")
        label = {w: i for i, w in enumerate(wnids)}
        rows = [(path, label[w], names[w]) for w in found for path in _images(base / w)]
        splits[split] = split_frame([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    splits["val"] = splits["test"]  # spec 1.2: ImageNet's val is its test split
    log.info("loaded ImageNet %s: %d classes, train=%d, test=%d", root, len(wnids), len(splits["train"]),
             len(splits["test"]))
    return CoopDataset(root=root, image_dir=images, split_file=root / classnames_file,
                       classnames=[names[w] for w in wnids], splits=splits)
