"""Stanford Online Products in its release layout (Cross the Gap ranks its test images against each other):

    <root>/Ebay_train.txt, <root>/Ebay_test.txt   header "image_id class_id super_class_id path", then one row per
                                                  image, e.g. "1 1 1 bicycle_final/111085122871_0.JPG"
    <root>/<image_dir>/<path>

A class is one product (1..22634 over both files, 11318 in train and 11316 in test); its name for prompts is the
product's super-category and id ("bicycle 1"), since products have no names of their own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline_lib.data.coop import CoopDataset, require_files, split_frame
from pipeline_lib.data.errors import DatasetError

log = logging.getLogger(__name__)

HEADER = ["image_id", "class_id", "super_class_id", "path"]


def _rows(listing: Path) -> list[tuple[int, str]]:
    """(class id, relpath) per image of one Ebay_*.txt file."""
    if not listing.is_file():
        raise DatasetError(f"Stanford Online Products listing not found: {listing}")
    lines = [line.split() for line in listing.read_text().splitlines() if line.strip()]
    if not lines or lines[0] != HEADER:
        raise DatasetError(f"{listing}: first line {lines[0] if lines else None}; expected {' '.join(HEADER)}")
    out = []
    for number, cols in enumerate(lines[1:], 2):
        if len(cols) != 4 or not cols[1].isdigit():
            raise DatasetError(f"{listing}:{number}: {' '.join(cols)!r}; expected {' '.join(HEADER)}")
        out.append((int(cols[1]), cols[3]))
    return out


def load_sop_dataset(root: str | Path, image_dir: str = "", check_files: bool = True) -> CoopDataset:
    """SOP's train and test splits, labels = class id - 1 (contiguous over both files)."""
    root = Path(root)
    images = (root / image_dir).resolve()
    listed = {split: _rows(root / f"Ebay_{split}.txt") for split in ("train", "test")}
    names: dict[int, str] = {}
    for rows in listed.values():
        for class_id, relpath in rows:
            names.setdefault(class_id, f"{relpath.split('/', 1)[0].removesuffix('_final')} {class_id}")
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetError(f"{root}: SOP class ids must be 1..{len(names)} without gaps over Ebay_train.txt and "
                           "Ebay_test.txt")
    classnames = [names[c] for c in range(1, len(names) + 1)]
    splits = {}
    for split, rows in listed.items():
        paths = [str(images / relpath) for _, relpath in rows]
        if check_files:
            require_files(paths, root / f"Ebay_{split}.txt", split)
        splits[split] = split_frame(paths, [c - 1 for c, _ in rows], [names[c] for c, _ in rows])
    log.info("loaded Stanford Online Products %s: %d classes, %s", root, len(classnames),
             ", ".join(f"{n}={len(df)}" for n, df in splits.items()))
    return CoopDataset(root=root, image_dir=images, split_file=root / "Ebay_test.txt", classnames=classnames,
                       splits=splits)
