"""CUB-200-2011 in its release layout (Cross the Gap ranks all its images against each other, spec 3.1):

    <root>/images.txt              "<image id> <relpath>"  (relpaths under <root>/<image_dir>)
    <root>/image_class_labels.txt  "<image id> <class id>" (class ids from 1)
    <root>/classes.txt             "<class id> <nnn>.<Class_Name>", e.g. "1 001.Black_footed_Albatross"
    <root>/train_test_split.txt    "<image id> <1 = train | 0 = test>"
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline_lib.data.coop import CoopDataset, require_files, split_frame
from pipeline_lib.data.errors import DatasetError

log = logging.getLogger(__name__)

LISTS = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")


def _pairs(path: Path) -> dict[str, str]:
    """A "<id> <value>" listing as {id: value} (values may contain spaces)."""
    if not path.is_file():
        raise DatasetError(f"CUB-200-2011 listing not found: {path} (expected {', '.join(LISTS)} in the root)")
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            key, _, value = line.strip().partition(" ")
            if not value:
                raise DatasetError(f"{path}:{number}: {line!r}; expected '<id> <value>'")
            out[key] = value.strip()
    return out


def class_name(raw: str) -> str:
    """"001.Black_footed_Albatross" -> "Black footed Albatross" (the prompt's class name)."""
    return raw.split(".", 1)[-1].replace("_", " ")


def load_cub_dataset(root: str | Path, image_dir: str = "images", check_files: bool = True) -> CoopDataset:
    """CUB's train and test splits (images in images.txt order), labels = class id - 1."""
    root = Path(root)
    images = (root / image_dir).resolve()
    relpaths, labels, classes, is_train = (_pairs(root / name) for name in LISTS)
    classnames = [class_name(classes[str(c)]) for c in range(1, len(classes) + 1) if str(c) in classes]
    if len(classnames) != len(classes):
        raise DatasetError(f"{root / 'classes.txt'}: class ids must be 1..{len(classes)} without gaps")
    rows: dict[str, tuple[list[str], list[int], list[str]]] = {"train": ([], [], []), "test": ([], [], [])}
    for image_id, relpath in relpaths.items():
        if image_id not in labels or is_train.get(image_id) not in ("0", "1"):
            raise DatasetError(f"CUB image {image_id} ({relpath}) lacks its class label or its train/test flag")
        label = int(labels[image_id]) - 1
        if not 0 <= label < len(classnames):
            raise DatasetError(f"{root / 'image_class_labels.txt'}: image {image_id} has class {label + 1}, outside "
                               f"1..{len(classnames)}")
        paths, split_labels, names = rows["train" if is_train[image_id] == "1" else "test"]
        paths.append(str(images / relpath))
        split_labels.append(label)
        names.append(classnames[label])
    if check_files:
        for split, (paths, _, _) in rows.items():
            require_files(paths, root / "images.txt", split)
    splits = {split: split_frame(*cols) for split, cols in rows.items()}
    log.info("loaded CUB-200-2011 %s: %d classes, %s", root, len(classnames),
             ", ".join(f"{n}={len(df)}" for n, df in splits.items()))
    return CoopDataset(root=root, image_dir=images, split_file=root / "images.txt", classnames=classnames,
                       splits=splits)
