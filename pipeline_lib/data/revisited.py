"""Revisited Oxford / Paris (Radenović et al. 2018, "ROxford5k" / "RParis6k") in their published layout:

    <root>/gnd_<name>.pkl   {"imlist": [database names], "qimlist": [query names], "gnd": [{bbx, easy, hard, junk}]}
    <root>/jpg/<image>.jpg  database and query images (queries are used uncropped: `bbx` is ignored)

Relevance comes only from `gnd` (`load_revisited_ground_truth`). The labels of `load_revisited_dataset` are the Flickr
search term in the image name (`all_souls_000013` -> "all souls"): they say where a photo was searched from, not what it
shows, and must never be used as retrieval relevance.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.data.coop import CoopDataset, split_frame
from pipeline_lib.data.errors import DatasetError
from pipeline_lib.data.safe_pickle import NUMPY_GLOBALS, load_pickle
from pipeline_lib.datasets.relevance import RelevantSets

log = logging.getLogger(__name__)

_SHOW_MISSING = 5


@dataclass(frozen=True, eq=False)
class RevisitedGroundTruth:
    """Per query: easy, hard and junk database indices (compressed rows, one per query, in qimlist order)."""

    easy: RelevantSets
    hard: RelevantSets
    junk: RelevantSets
    n_database: int
    query_names: tuple[str, ...] = ()  # only to name queries in errors

    def __post_init__(self) -> None:
        if not len(self.easy) == len(self.hard) == len(self.junk):
            raise DatasetError(f"easy/hard/junk cover {len(self.easy)}/{len(self.hard)}/{len(self.junk)} queries")
        for kind, csr in (("easy", self.easy), ("hard", self.hard), ("junk", self.junk)):
            bad = np.flatnonzero((csr.index < 0) | (csr.index >= self.n_database))
            if len(bad):
                q = int(np.searchsorted(csr.offsets, bad[0], side="right")) - 1
                raise DatasetError(f"{self._name(q)}: {kind} index {csr.index[bad[0]]} is outside the database "
                                   f"[0, {self.n_database})")
        empty = np.flatnonzero((np.diff(self.easy.offsets) == 0) & (np.diff(self.hard.offsets) == 0))
        if len(empty):
            raise DatasetError(f"{self._name(int(empty[0]))} has no easy or hard database image")

    @property
    def n_queries(self) -> int:
        return len(self.easy)

    def medium(self) -> RelevantSets:
        """Easy + hard per query, as plain relevance for `diagnose.retrieval` (which keeps junk in the ranking: the
        benchmark's own numbers come from `diagnose.revisited`)."""
        return self.easy.union(self.hard)

    def subset(self, rows: np.ndarray) -> RevisitedGroundTruth:
        """The ground truth of the queries `rows` (an index array), in that order: an instance inverts a subset."""
        names = tuple(self.query_names[int(r)] for r in rows) if self.query_names else ()
        return RevisitedGroundTruth(self.easy.subset(rows), self.hard.subset(rows), self.junk.subset(rows),
                                    self.n_database, names)

    def _name(self, q: int) -> str:
        return f"query {q}" + (f" ({self.query_names[q]})" if q < len(self.query_names) else "")


def _indices(value: Any, where: str) -> np.ndarray:
    try:  # a list of Python ints or numpy integer scalars, or an integer array
        arr = np.asarray(value if isinstance(value, list | np.ndarray) else None)
    except ValueError as exc:  # ragged nesting
        raise DatasetError(f"{where}: not a list of indices ({exc})") from exc
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise DatasetError(f"{where}: expected a list of integer database indices, got {str(value)[:80]}")
    return arr.astype(np.int64)


def _read_pickle(root: Path) -> tuple[Path, list[str], list[str], list[dict[str, Any]]]:
    found = sorted(root.glob("gnd_*.pkl"))
    if len(found) != 1:
        raise DatasetError(f"expected exactly one gnd_*.pkl in {root}, found {[p.name for p in found]}")
    raw = load_pickle(found[0], "ground-truth pickle", NUMPY_GLOBALS)
    if not isinstance(raw, dict) or not {"imlist", "qimlist", "gnd"} <= set(raw):
        raise DatasetError(f"{found[0]}: expected a dict with keys imlist, qimlist, gnd")
    imlist, qimlist, gnd = raw["imlist"], raw["qimlist"], raw["gnd"]
    for key, names in (("imlist", imlist), ("qimlist", qimlist)):
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{found[0]}: {key} must be a non-empty list of image names")
    if not isinstance(gnd, list) or len(gnd) != len(qimlist) or not all(isinstance(g, dict) for g in gnd):
        raise DatasetError(f"{found[0]}: gnd must be a list of one dict per query ({len(qimlist)} queries)")
    return found[0], imlist, qimlist, gnd


def load_revisited_ground_truth(root: Path) -> RevisitedGroundTruth:
    """The easy/hard/junk database indices of every query, validated (in range, each query has a positive)."""
    path, imlist, qimlist, gnd = _read_pickle(Path(root))
    rows: dict[str, list[np.ndarray]] = {"easy": [], "hard": [], "junk": []}
    for q, entry in enumerate(gnd):
        for kind, out in rows.items():
            if kind not in entry:
                raise DatasetError(f"{path}: gnd[{q}] ({qimlist[q]}) has no {kind!r} list")
            out.append(_indices(entry[kind], f"{path}: gnd[{q}][{kind!r}] ({qimlist[q]})"))
    easy, hard, junk = (RelevantSets.from_lists(r) for r in rows.values())
    return RevisitedGroundTruth(easy, hard, junk, n_database=len(imlist), query_names=tuple(qimlist))


def load_revisited_dataset(root: Path, check_files: bool = True) -> CoopDataset:
    """Database images as split "train" and queries as split "test", labelled by their Flickr search term."""
    root = Path(root)
    path, imlist, qimlist, _ = _read_pickle(root)
    images = (root / "jpg").resolve()
    terms: dict[str, str] = {}
    for name in imlist + qimlist:
        match = re.fullmatch(r"(.+)_\d+", name)
        if match is None:
            raise DatasetError(f"{path}: image name {name!r} does not end in _<number> after its search term")
        terms[name] = match.group(1).replace("_", " ")
    classnames = sorted(set(terms.values()))
    label = {c: i for i, c in enumerate(classnames)}
    splits = {}
    for split, names in (("train", imlist), ("test", qimlist)):
        paths = [os.path.join(images, f"{n}.jpg") for n in names]
        if check_files:
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise DatasetError(f"{path}: {len(missing)} of {len(paths)} {split} images are missing under "
                                   f"{images}; first: {missing[:_SHOW_MISSING]}")
        splits[split] = split_frame(paths, [label[terms[n]] for n in names], [terms[n] for n in names])
    log.info("loaded %s: %d database images, %d queries, %d search terms", path.name, len(imlist), len(qimlist),
             len(classnames))
    return CoopDataset(root=root, image_dir=images, split_file=path, classnames=classnames, splits=splits)
