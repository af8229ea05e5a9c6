"""CoOp-format few-shot datasets: `<root>/<split_file>` lists [relpath, label, classname] per split, images under
`<root>/<image_dir>/<relpath>` (e.g. oxford_pets/split_zhou_OxfordPets.json with oxford_pets/images).

Everything is checked once at load time (file present, entries well-formed, labels 0..C-1 with one class name each,
every image present), so a bad dataset fails before any feature is extracted.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline_lib.data.errors import DatasetError

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
_SCHEMA = {"path": pl.String, "label": pl.Int64, "classname": pl.String}


def split_frame(paths: list[str], labels: list[int], classnames: list[str]) -> pl.DataFrame:
    """One split's rows as every classification loader returns them: absolute path, label, class name."""
    return pl.DataFrame({"path": paths, "label": labels, "classname": classnames}, schema=_SCHEMA)
_SHOW_MISSING = 5  # how many missing files an error lists


def require_files(paths: list[str], listing: Path, what: str) -> None:
    """Fail before any extraction when images a listing names are missing; the error shows the first few."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{listing}: {len(missing)} of {len(paths)} {what} images are missing; "
                           f"first: {missing[:_SHOW_MISSING]}")


@dataclass(frozen=True)
class CoopDataset:
    """A loaded CoOp split file: class names in label order and one table per split (absolute image paths)."""

    root: Path
    image_dir: Path
    split_file: Path
    classnames: list[str]
    splits: dict[str, pl.DataFrame] = field(repr=False)

    def split(self, name: str) -> pl.DataFrame:
        """Rows of one split: path (absolute str), label (i64), classname (str), in split-file order."""
        if name not in self.splits:
            raise DatasetError(f"split {name!r} not in {self.split_file}; it has {sorted(self.splits)}")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def _parse_entries(name: str, entries: Any, split_file: Path) -> list[tuple[str, int, str]]:
    if not isinstance(entries, list):
        raise DatasetError(f"{split_file}: split {name!r} must be a list of [relpath, label, classname]")
    rows = []
    for i, entry in enumerate(entries):
        ok = (
            isinstance(entry, list | tuple)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and isinstance(entry[2], str)
        )
        if not ok:
            raise DatasetError(
                f"{split_file}: {name}[{i}] = {entry!r}; expected [relpath: str, label: int, classname: str]"
            )
        rows.append((entry[0], entry[1], entry[2]))
    return rows


def _classnames(rows_by_split: dict[str, list[tuple[str, int, str]]], split_file: Path) -> list[str]:
    """Label -> class name over all splits; labels must be exactly 0..C-1, each with one name."""
    names: dict[int, str] = {}
    for split, rows in rows_by_split.items():
        for relpath, label, classname in rows:
            if label < 0:
                raise DatasetError(f"{split_file}: {split} entry {relpath!r} has negative label {label}")
            known = names.setdefault(label, classname)
            if known != classname:
                raise DatasetError(
                    f"{split_file}: label {label} is named both {known!r} and {classname!r} "
                    f"(at {split} entry {relpath!r}); each label needs exactly one class name"
                )
    if not names:
        raise DatasetError(f"{split_file}: no entries in any split")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise DatasetError(
            f"{split_file}: labels must be 0..C-1 without gaps; {len(missing)} missing, first {missing[:_SHOW_MISSING]}"
        )
    by_name: dict[str, int] = {}
    for label, classname in sorted(names.items()):
        if classname in by_name:
            raise DatasetError(
                f"{split_file}: class name {classname!r} has two labels, {by_name[classname]} and {label}"
            )
        by_name[classname] = label
    return [names[label] for label in range(len(names))]


def load_coop_dataset(
    root: str | Path, split_file: str, image_dir: str = "images", check_files: bool = True
) -> CoopDataset:
    """Load and validate a CoOp-format dataset.

    root: the dataset folder; split_file and image_dir are relative to it (absolute paths are taken as they are).
    check_files: verify that every listed image exists (one stat per file; the error lists the first missing ones).
    """
    root = Path(root)
    split_path = root / split_file
    images = root / image_dir
    if not split_path.is_file():
        raise DatasetError(f"CoOp split file not found: {split_path} (dataset root {root})")
    if not images.is_dir():
        raise DatasetError(f"CoOp image folder not found: {images} (dataset root {root}, image_dir={image_dir!r})")
    try:
        raw = json.loads(split_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read CoOp split file {split_path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{split_path}: expected a JSON object with keys {list(SPLIT_NAMES)}")
    unknown = sorted(set(raw) - set(SPLIT_NAMES))
    if unknown or "train" not in raw or "test" not in raw:
        raise DatasetError(
            f"{split_path}: has splits {sorted(raw)}; expected 'train' and 'test' (and optionally 'val'), "
            f"nothing else{f' (unknown: {unknown})' if unknown else ''}"
        )
    rows_by_split = {name: _parse_entries(name, raw[name], split_path) for name in SPLIT_NAMES if name in raw}
    classnames = _classnames(rows_by_split, split_path)

    splits: dict[str, pl.DataFrame] = {}
    image_root = images.resolve()
    for name, rows in rows_by_split.items():
        paths = [os.path.join(image_root, relpath) for relpath, _, _ in rows]
        if check_files:
            require_files(paths, split_path, name)
        splits[name] = split_frame(paths, [r[1] for r in rows], [r[2] for r in rows])
    logger.info(
        "loaded CoOp dataset %s: %d classes, %s",
        root,
        len(classnames),
        ", ".join(f"{n}={len(df)}" for n, df in splits.items()),
    )
    return CoopDataset(root=root, image_dir=image_root, split_file=split_path, classnames=classnames, splits=splits)
