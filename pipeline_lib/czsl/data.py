"""Loader for the standard CZSL on-disk layout (MIT-States, UT-Zappos, C-GQA and the synthetic shapes benchmark).

Layout under a dataset root (spec 1.1):
    <root>/compositional-split-natural/{train,val,test}_pairs.txt   one "attr obj" per line, file order matters
    <root>/metadata_compositional-split-natural.t7                  torch-saved list of {image, attr, obj, set}
    <root>/images/<image>                                            image paths relative to images/

The algorithm follows spec 1.2, the one shared by the reference CZSL code bases:
- attrs / objs: sorted sets over the three pair files; closed-world pairs: sorted union of the three files;
  open-world pairs: attrs x objs in attr-major order (index = a_idx * |O| + o_idx, the feasibility-vector order).
- Metadata entries are dropped when attr == 'NA', set == 'NA', or (attr, obj) is in none of the three pair files.
  This "czsl rule" is applied in the open world too, *before* the pair list becomes attrs x objs, so both worlds
  see the same images (some later code bases switch first and keep those images; we do not).
- Entries are routed by their `set` field ('train', 'val', anything else -> 'test'), never by pair membership,
  because test_pairs.txt also lists seen pairs.
- Train labels are indices into train_pairs in *file order* (training logits are over train_pairs in that order);
  val/test labels are indices into the world's `pairs`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import polars as pl
import torch

from pipeline_lib.czsl.sizes import EXPECTED_SIZES, ExpectedSizes

log = logging.getLogger(__name__)

World = Literal["closed", "open"]
Split = Literal["train", "val", "test"]
Pair = tuple[str, str]

SPLIT_DIR = "compositional-split-natural"
METADATA_FILE = "metadata_compositional-split-natural.t7"
IMAGE_DIR = "images"
SPLITS: tuple[str, ...] = ("train", "val", "test")
WORLDS: tuple[str, ...] = ("closed", "open")
METADATA_KEYS: tuple[str, ...] = ("image", "attr", "obj", "set")


def clean_name(name: str) -> str:
    """Prompt text of an attr/obj name (spec 1.2.6): '.' -> ' ' and lowercase ("Shoes.Flats" -> "shoes flats").

    Underscores are kept as they are (C-GQA names such as "traffic_light").
    """
    return name.replace(".", " ").lower()


def read_pairs_file(path: Path) -> list[Pair]:
    """Pairs of one split file in file order. Blank lines are skipped; any other line must be exactly "attr obj"."""
    if not path.is_file():
        raise FileNotFoundError(f"CZSL pair file not found: {path} (expected <root>/{SPLIT_DIR}/<split>_pairs.txt)")
    pairs: list[Pair] = []
    first_line: dict[Pair, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'attr obj' (2 whitespace-separated fields), found {line!r}")
        pair = (parts[0], parts[1])
        if pair in first_line:
            raise ValueError(f"{path}:{lineno}: pair {pair} repeats line {first_line[pair]}; expected unique pairs")
        first_line[pair] = lineno
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"CZSL pair file {path} lists no pairs")
    return pairs


@dataclass(frozen=True)
class PairSplits:
    """The three pair files (file order) and the vocabularies and pair lists derived from them (spec 1.2 steps 1-2)."""

    train_pairs: list[Pair]
    val_pairs: list[Pair]
    test_pairs: list[Pair]

    @cached_property
    def attrs(self) -> list[str]:
        return sorted({a for a, _ in itertools.chain(self.train_pairs, self.val_pairs, self.test_pairs)})

    @cached_property
    def objs(self) -> list[str]:
        return sorted({o for _, o in itertools.chain(self.train_pairs, self.val_pairs, self.test_pairs)})

    @cached_property
    def closed_pairs(self) -> list[Pair]:
        """Sorted union of the three files (tuples sort by attr, then obj)."""
        return sorted(set(self.train_pairs) | set(self.val_pairs) | set(self.test_pairs))

    @cached_property
    def open_pairs(self) -> list[Pair]:
        """attrs x objs, attr-major: index = a_idx * |O| + o_idx (also the feasibility-vector order)."""
        return [(a, o) for a in self.attrs for o in self.objs]

    def pairs(self, world: World) -> list[Pair]:
        """The candidate pair list (column order of every score matrix) of a world."""
        if world == "closed":
            return self.closed_pairs
        if world == "open":
            return self.open_pairs
        raise ValueError(f"world={world!r}; expected one of {WORLDS}")


def read_pair_splits(root: Path) -> PairSplits:
    """Parse <root>/compositional-split-natural/{train,val,test}_pairs.txt."""
    root = Path(root)
    split_dir = root / SPLIT_DIR
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"CZSL split folder not found: {split_dir} (is {root} a dataset root in the CZSL layout?)"
        )
    return PairSplits(*(read_pairs_file(split_dir / f"{s}_pairs.txt") for s in SPLITS))


def load_metadata(path: Path) -> list[dict[str, str]]:
    """The per-image metadata list, loaded with `torch.load(weights_only=True)` (it holds only strings)."""
    if not path.is_file():
        raise FileNotFoundError(f"CZSL metadata not found: {path} (expected <root>/{METADATA_FILE})")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: re-raised with the file name and what was expected
        raise ValueError(
            f"could not load CZSL metadata {path} with torch.load(weights_only=True): {exc}. Expected a torch-saved "
            f"list of dicts with string keys {METADATA_KEYS}; files that need arbitrary unpickling are refused"
        ) from exc
    if not isinstance(data, list):
        raise TypeError(f"CZSL metadata {path} holds a {type(data).__name__}; expected a list of dicts")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise TypeError(f"CZSL metadata {path} entry {i} is a {type(entry).__name__}; expected a dict")
        missing = [k for k in METADATA_KEYS if k not in entry]
        if missing:
            raise ValueError(f"CZSL metadata {path} entry {i} lacks keys {missing}; found keys {sorted(entry)}")
        bad = {k: entry[k] for k in METADATA_KEYS if not isinstance(entry[k], str)}
        if bad:
            raise TypeError(f"CZSL metadata {path} entry {i} has non-string values {bad}; expected strings")
    return data


@dataclass(frozen=True)
class CzslDataset:
    """One CZSL benchmark in one world.

    Every list is fixed by the pair files, so two loads of the same root give identical indices. Split frames have
    one row per kept image in metadata order, with columns:
      path (absolute image path), image (relative to images/), attr, obj (raw names), attr_idx, obj_idx (into
      attrs/objs), pair_idx (train: index in train_pairs, file order; val/test: index in `pairs`),
      world_pair_idx (index in `pairs` for every split), seen (pair in train_pairs).
    """

    name: str
    root: Path
    world: World
    attrs: list[str]
    objs: list[str]
    pairs: list[Pair]  # the world's candidate pairs: score-matrix column order
    closed_pairs: list[Pair]
    train_pairs: list[Pair]  # file order
    val_pairs: list[Pair]  # file order, seen and unseen
    test_pairs: list[Pair]  # file order, seen and unseen
    seen_mask: torch.Tensor  # (P,) bool: pairs[p] in train_pairs
    splits: dict[str, pl.DataFrame]
    skipped: dict[str, int] = field(default_factory=dict)  # metadata entries dropped, by reason

    @cached_property
    def attr2idx(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.attrs)}

    @cached_property
    def obj2idx(self) -> dict[str, int]:
        return {o: i for i, o in enumerate(self.objs)}

    @cached_property
    def pair2idx(self) -> dict[Pair, int]:
        return {p: i for i, p in enumerate(self.pairs)}

    @cached_property
    def train_pair2idx(self) -> dict[Pair, int]:
        return {p: i for i, p in enumerate(self.train_pairs)}

    def split(self, name: str) -> pl.DataFrame:
        """The rows of one split ('train', 'val' or 'test')."""
        if name not in self.splits:
            raise KeyError(f"split={name!r}; expected one of {SPLITS}")
        return self.splits[name]

    def phase_pairs(self, split: str) -> list[Pair]:
        """The pair file of a split (file order)."""
        return {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[_check_split(split)]

    def pair_attr_idx(self) -> torch.Tensor:
        """(P,) int64: attr index of every candidate pair."""
        return torch.tensor([self.attr2idx[a] for a, _ in self.pairs], dtype=torch.long)

    def pair_obj_idx(self) -> torch.Tensor:
        """(P,) int64: obj index of every candidate pair."""
        return torch.tensor([self.obj2idx[o] for _, o in self.pairs], dtype=torch.long)

    def closed_mask(self, split: str) -> torch.Tensor:
        """(P,) bool: the evaluator's candidate set (spec 2.2).

        Open world: every pair. Closed world: pairs of the phase's file plus the train pairs, so val-only unseen
        pairs are never predicted in the test phase (and test-only ones never in the val phase).
        """
        if self.world == "open":
            return torch.ones(len(self.pairs), dtype=torch.bool)
        allowed = set(self.phase_pairs(split)) | set(self.train_pairs)
        return torch.tensor([p in allowed for p in self.pairs], dtype=torch.bool)

    def labels(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(attr_idx, obj_idx, world_pair_idx) of a split as (N,) int64 tensors, in row order."""
        df = self.split(split)
        return tuple(torch.from_numpy(df[c].to_numpy().copy()) for c in ("attr_idx", "obj_idx", "world_pair_idx"))

    @property
    def attr_texts(self) -> list[str]:
        """Cleaned attr names for prompts (spec 1.2.6)."""
        return [clean_name(a) for a in self.attrs]

    @property
    def obj_texts(self) -> list[str]:
        """Cleaned obj names for prompts (spec 1.2.6)."""
        return [clean_name(o) for o in self.objs]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    return split


def dataset_name(root: Path) -> str:
    """Canonical benchmark name from a root folder name ('MIT_States' -> 'mit-states')."""
    return Path(root).resolve().name.lower().replace("_", "-")


def load_czsl_dataset(
    root: Path,
    world: World = "closed",
    *,
    name: str | None = None,
    check_sizes: bool = True,
    check_images: bool = True,
) -> CzslDataset:
    """Load a dataset root in the standard CZSL layout (spec 1.2).

    name: benchmark name used for the size check; defaults to the root folder name. When it is one of
    EXPECTED_SIZES and check_sizes is set, the counts of spec 1.3 are asserted.
    check_images: fail if any kept image file is missing (one stat per image; cheap next to training).
    """
    root = Path(root).resolve()
    if world not in WORLDS:
        raise ValueError(f"world={world!r}; expected one of {WORLDS}")
    name = name if name is not None else dataset_name(root)
    ps = read_pair_splits(root)
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise FileNotFoundError(f"CZSL image folder not found: {image_dir}")
    metadata = load_metadata(root / METADATA_FILE)

    attr2idx = {a: i for i, a in enumerate(ps.attrs)}
    obj2idx = {o: i for i, o in enumerate(ps.objs)}
    union = set(ps.closed_pairs)
    train_set = set(ps.train_pairs)
    pairs = ps.pairs(world)
    pair2idx = {p: i for i, p in enumerate(pairs)}
    train_pair2idx = {p: i for i, p in enumerate(ps.train_pairs)}

    rows: dict[str, list[tuple]] = {s: [] for s in SPLITS}
    skipped = {"attr_na": 0, "set_na": 0, "pair_not_listed": 0}
    for entry in metadata:
        attr, obj, set_name = entry["attr"], entry["obj"], entry["set"]
        # Spec 1.2.3, in the reference order: NA attr, unlisted pair, NA set.
        if attr == "NA":
            skipped["attr_na"] += 1
            continue
        if (attr, obj) not in union:
            skipped["pair_not_listed"] += 1
            continue
        if set_name == "NA":
            skipped["set_na"] += 1
            continue
        split = set_name if set_name in ("train", "val") else "test"
        pair = (attr, obj)
        if split == "train" and pair not in train_pair2idx:
            raise ValueError(
                f"metadata image {entry['image']!r} has set='train' but pair {pair} is not in train_pairs.txt"
            )
        world_idx = pair2idx[pair]
        label = train_pair2idx[pair] if split == "train" else world_idx
        rows[split].append(
            (
                str(image_dir / entry["image"]),
                entry["image"],
                attr,
                obj,
                attr2idx[attr],
                obj2idx[obj],
                label,
                world_idx,
                pair in train_set,
            )
        )

    splits = {s: _frame(rows[s]) for s in SPLITS}
    if check_images:
        _check_images_exist(splits)
    seen_mask = torch.tensor([p in train_set for p in pairs], dtype=torch.bool)
    ds = CzslDataset(
        name=name,
        root=root,
        world=world,
        attrs=ps.attrs,
        objs=ps.objs,
        pairs=pairs,
        closed_pairs=ps.closed_pairs,
        train_pairs=ps.train_pairs,
        val_pairs=ps.val_pairs,
        test_pairs=ps.test_pairs,
        seen_mask=seen_mask,
        splits=splits,
        skipped=skipped,
    )
    log.info(
        "CZSL %s (%s world): %d attrs, %d objs, %d pairs; images train/val/test %d/%d/%d; skipped %s",
        name,
        world,
        len(ps.attrs),
        len(ps.objs),
        len(pairs),
        *(splits[s].height for s in SPLITS),
        skipped,
    )
    if check_sizes and name in EXPECTED_SIZES:
        check_split_sizes(ds, EXPECTED_SIZES[name])
    return ds


_SCHEMA = {
    "path": pl.Utf8,
    "image": pl.Utf8,
    "attr": pl.Utf8,
    "obj": pl.Utf8,
    "attr_idx": pl.Int64,
    "obj_idx": pl.Int64,
    "pair_idx": pl.Int64,
    "world_pair_idx": pl.Int64,
    "seen": pl.Boolean,
}


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_SCHEMA, orient="row")


def _check_images_exist(splits: dict[str, pl.DataFrame]) -> None:
    missing = [p for s in SPLITS for p in splits[s]["path"].to_list() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} CZSL images listed in the metadata are missing, e.g. {missing[:3]}")


def split_pair_counts(ds: CzslDataset, split: str) -> tuple[int, int]:
    """(seen, unseen) pair counts of a split's pair file."""
    train = set(ds.train_pairs)
    pairs = ds.phase_pairs(split)
    seen = sum(p in train for p in pairs)
    return seen, len(pairs) - seen


def check_split_sizes(ds: CzslDataset, expected: ExpectedSizes) -> None:
    """Assert the published sizes (spec 1.3); the message lists every mismatch as expected vs found."""
    found = {
        "n_attrs": len(ds.attrs),
        "n_objs": len(ds.objs),
        "train_pairs": len(ds.train_pairs),
        "train_images": ds.split("train").height,
        "val_pairs": split_pair_counts(ds, "val"),
        "val_images": ds.split("val").height,
        "test_pairs": split_pair_counts(ds, "test"),
        "test_images": ds.split("test").height,
    }
    errors = []
    for key, got in found.items():
        want = getattr(expected, key)
        same = sorted(got) == sorted(want) if key == "val_pairs" and expected.val_pairs_unordered else got == want
        if not same:
            errors.append(f"{key}: expected {want}, found {got}")
    if errors:
        raise ValueError(
            f"CZSL dataset {ds.name!r} at {ds.root} does not match the published sizes (spec 1.3): "
            + "; ".join(errors)
            + ". Pass check_sizes=False to load it anyway."
        )
