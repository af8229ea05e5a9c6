"""Zarr v3 feature stores: sharded along samples, written in resumable whole-shard blocks, read lazily.

Why the layout is what it is:
- Arrays are chunked along the sample axis (the read unit) and packed into shards (the write unit, one file), so a
  store is tens of files rather than thousands (DVC hashing time grows with the file count).
- A *block* is one shard of every array in a group. Exactly one writer writes a block, because concurrent writes
  into one shard silently lose data, and a block is marked done (one `_done` chunk per block) only after all its
  arrays are written. A killed extraction therefore redoes at most the blocks it was in the middle of.
- A group may instead be written in *chunk blocks* (`blocks="chunk"`, e.g. inversion: one optimisation batch per
  block): a block is then one chunk of every array, several blocks share a shard file, the `_done` flags are sharded
  the same way, and one writer must own all the blocks of a shard file (`engine.shards.split_blocks`).
- Metadata (group/array creation, attrs) is written by the coordinating process only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from pipeline_lib.engine.errors import StoreError

log = logging.getLogger(__name__)

DONE = "_done"  # per-group bool array, one chunk per block
PLAN_ATTR = "block_plan"  # group attr: digest of the array specs + chunking the group was created for


@dataclass(frozen=True)
class ArraySpec:
    """One array of a block group; the first axis is the sample axis shared by the group."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not self.shape:
            raise ValueError(f"array {self.name!r}: a block array needs a sample axis, got shape ()")


MAX_BLOCK_BYTES = 256 * 2**20  # a block is held in memory before it is written; bounds e.g. ViT-B/16 patch tokens


def chunk_layout(
    n_rows: int, rows_per_chunk: int, rows_per_shard: int, row_bytes: int = 0, max_block_bytes: int = MAX_BLOCK_BYTES
) -> tuple[int, int]:
    """(chunk rows, shard rows) for n_rows samples: the configured sizes, shrunk for small arrays and so that one
    block (a shard of every array, `row_bytes` per row in all) stays under `max_block_bytes`."""
    if rows_per_chunk < 1 or rows_per_shard < rows_per_chunk or rows_per_shard % rows_per_chunk:
        raise ValueError(
            f"rows_per_chunk={rows_per_chunk}, rows_per_shard={rows_per_shard}: expected chunk >= 1 and the shard a "
            "multiple of the chunk"
        )
    fit = max(1, max_block_bytes // row_bytes) if row_bytes > 0 else rows_per_shard  # rows per block within budget
    chunk = max(1, min(rows_per_chunk, n_rows, fit))
    per_shard = min(rows_per_shard // chunk, fit // chunk, math.ceil(max(n_rows, 1) / chunk))
    return chunk, chunk * max(1, per_shard)


BlockUnit = Literal["shard", "chunk"]


def _plan_digest(
    specs: list[ArraySpec], chunk: int, shard: int, extra: Mapping[str, Any], blocks: BlockUnit, fill_value: Any
) -> str:
    payload: dict[str, Any] = {
        "arrays": [[s.name, list(s.shape), s.dtype] for s in specs],
        "chunk": chunk,
        "shard": shard,
        "extra": dict(extra),
    }
    if blocks != "shard" or fill_value != 0:  # only then: the feature stores' digests stay what they were
        payload.update(blocks=blocks, fill_value=str(fill_value))
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class _Layout:
    n: int  # rows
    chunk: int  # rows per chunk
    shard: int  # rows per shard file
    block: int  # rows per block: a shard, or a chunk (blocks="chunk")
    digest: str


def _layout(
    group_path: str,
    specs: list[ArraySpec],
    rows_per_chunk: int,
    rows_per_shard: int,
    plan: Mapping[str, Any] | None,
    blocks: BlockUnit,
    fill_value: Any,
) -> _Layout:
    """Rows, chunk/shard/block rows and plan digest of a block group.

    Shard blocks take chunk_layout's sizes (shrunk for small arrays and the memory budget); chunk blocks take the
    caller's sizes as given, because their boundaries are the caller's (an optimisation batch and its seed).
    """
    n_rows = {s.shape[0] for s in specs}
    if len(n_rows) != 1:
        raise ValueError(
            f"group {group_path!r}: arrays disagree on the sample count: {[(s.name, s.shape) for s in specs]}"
        )
    n = n_rows.pop()
    if blocks == "chunk":
        if rows_per_chunk < 1 or rows_per_shard < rows_per_chunk or rows_per_shard % rows_per_chunk:
            raise ValueError(
                f"rows_per_chunk={rows_per_chunk}, rows_per_shard={rows_per_shard}: expected chunk >= 1 and the "
                "shard a multiple of the chunk"
            )
        chunk, shard, block = rows_per_chunk, rows_per_shard, rows_per_chunk
    else:
        row_bytes = sum(int(np.prod(s.shape[1:], dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in specs)
        chunk, shard = chunk_layout(n, rows_per_chunk, rows_per_shard, row_bytes)
        block = shard
    return _Layout(n, chunk, shard, block, _plan_digest(specs, chunk, shard, plan or {}, blocks, fill_value))


class BlockGroup:
    """A zarr group of arrays sharing a sample axis, written block by block (a block is one shard of each array, or
    one chunk of each: see the module notes)."""

    def __init__(self, group: zarr.Group, n_rows: int, block_rows: int) -> None:
        self.group = group
        self.n_rows = n_rows
        self.block_rows = block_rows
        self.n_blocks = math.ceil(n_rows / block_rows) if n_rows else 0

    @classmethod
    def create_or_resume(
        cls,
        root: Path,
        group_path: str,
        specs: list[ArraySpec],
        rows_per_chunk: int,
        rows_per_shard: int,
        plan: Mapping[str, Any] | None = None,
        *,
        blocks: BlockUnit = "shard",
        fill_value: Any = 0,
        attrs: Mapping[str, Any] | None = None,
    ) -> BlockGroup:
        """Open `root/group_path` for block writes, resuming when it was created for the same specs and plan.

        `plan` holds whatever else decides the content (e.g. model fingerprint, split list digest): a group created
        for another plan is deleted and recreated, so stale blocks are never mixed into a new store. `blocks` is the
        unit written and flagged done (see the module notes); `fill_value` is what unwritten rows read as (NaN makes
        them stand out); `attrs` are written into a newly created group, before the plan that completes it.
        """
        lay = _layout(group_path, specs, rows_per_chunk, rows_per_shard, plan, blocks, fill_value)
        root_group = zarr.open_group(str(root), mode="a")
        if group_path in root_group:
            existing = root_group[group_path]
            if isinstance(existing, zarr.Group) and existing.attrs.get(PLAN_ATTR) == lay.digest:
                bg = cls(existing, lay.n, lay.block)
                log.info("resuming %s/%s: %d of %d blocks done", root, group_path, bg.n_done(), bg.n_blocks)
                return bg
            log.info("recreating %s/%s: it was built for another plan", root, group_path)
            shutil.rmtree(Path(root) / group_path)
        group = root_group.create_group(group_path)
        for s in specs:
            group.create_array(
                s.name,
                shape=s.shape,
                chunks=(lay.chunk, *s.shape[1:]),
                shards=(lay.shard, *s.shape[1:]),
                dtype=s.dtype,
                fill_value=fill_value,
            )
        n_blocks = math.ceil(lay.n / lay.block) if lay.n else 0
        # chunk blocks: a shard file's flags share one file, written only by the writer of that shard's blocks
        done_shards: dict[str, Any] = {"shards": (lay.shard // lay.block,)} if blocks == "chunk" else {}
        group.create_array(DONE, shape=(n_blocks,), chunks=(1,), dtype="bool", fill_value=False, **done_shards)
        if attrs:
            group.attrs.update(dict(attrs))
        group.attrs[PLAN_ATTR] = lay.digest  # written last: a group without it is rebuilt from scratch
        return cls(group, lay.n, lay.block)

    @classmethod
    def resume(
        cls,
        root: Path,
        group_path: str,
        specs: list[ArraySpec],
        rows_per_chunk: int,
        rows_per_shard: int,
        plan: Mapping[str, Any] | None = None,
        *,
        blocks: BlockUnit = "shard",
        fill_value: Any = 0,
    ) -> BlockGroup:
        """Open a group the coordinating process created (see create_or_resume), never creating or deleting one.

        What a shard worker uses: metadata changes belong to one process, and a worker that computes another plan
        (other device, params or weights) must fail rather than wipe the blocks other workers are writing.
        """
        lay = _layout(group_path, specs, rows_per_chunk, rows_per_shard, plan, blocks, fill_value)
        existing = zarr.open_group(str(root), mode="r+").get(group_path) if Path(root).exists() else None
        if not isinstance(existing, zarr.Group) or existing.attrs.get(PLAN_ATTR) != lay.digest:
            found = "is missing" if existing is None else "was created for another plan"
            raise RuntimeError(
                f"{root}/{group_path} {found}: the coordinating process must create it with the same params, "
                "backbone and device kind (runtime.device) as this worker"
            )
        return cls(existing, lay.n, lay.block)

    def rows(self, block: int) -> tuple[int, int]:
        """[start, stop) sample rows of a block."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} out of range [0, {self.n_blocks})")
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.n_rows)

    def done_mask(self) -> np.ndarray:
        return np.asarray(array_at(self.group, DONE)[:], dtype=bool)

    def n_done(self) -> int:
        return int(self.done_mask().sum())

    def pending(self) -> list[int]:
        """Blocks still to write, in order."""
        return [int(b) for b in np.flatnonzero(~self.done_mask())]

    @property
    def complete(self) -> bool:
        return self.n_blocks == 0 or bool(self.done_mask().all())

    def write_block(self, block: int, data: Mapping[str, np.ndarray]) -> None:
        """Write every array's rows of `block`, then mark it done (so a crash in between only repeats this block)."""
        start, stop = self.rows(block)
        names = {k for k in self.group.array_keys() if k != DONE}
        if set(data) != names:
            raise ValueError(f"block {block}: got arrays {sorted(data)}, the group holds {sorted(names)}")
        for name, values in data.items():
            arr = array_at(self.group, name)
            expected = (stop - start, *arr.shape[1:])
            if tuple(values.shape) != expected:
                raise ValueError(f"block {block} array {name!r}: shape {tuple(values.shape)}, expected {expected}")
            arr[start:stop] = np.asarray(values, dtype=arr.dtype)
        array_at(self.group, DONE)[block] = True


def array_at(group: zarr.Group, name: str) -> zarr.Array:
    """The array `name` of a group; a clear error when that path holds a group instead."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store_path}: {name!r} is a group, not an array")
    return node


def write_whole(group: zarr.Group, name: str, data: np.ndarray, attrs: Mapping[str, Any] | None = None) -> zarr.Array:
    """Write a small array (text features, projection matrix) in one chunk; idempotent, so it needs no resume."""
    data = np.asarray(data, order="C")  # (ascontiguousarray would turn a scalar into shape (1,))
    arr = group.create_array(
        name, shape=data.shape, chunks=data.shape if data.ndim else (), dtype=data.dtype, fill_value=0, overwrite=True
    )
    arr[...] = data
    if attrs:
        arr.attrs.update(dict(attrs))
    return arr


def provenance(**extra: Any) -> dict[str, Any]:
    """Library versions and caller facts for store attrs (no timestamps, so reruns write identical metadata)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "torch": torch.__version__,
    }
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except ImportError:  # provenance must not fail on a missing optional library
        pass
    info.update(extra)
    return info


# ---------------------------------------------------------------------------------------------------- reading


def open_store(path: Path | str) -> zarr.Group:
    """Open a feature store read-only; a clear error when it is missing."""
    p = Path(path)
    if not (p / "zarr.json").exists():
        raise FileNotFoundError(f"no zarr v3 store at {p} (expected {p / 'zarr.json'}); has the features stage run?")
    return zarr.open_group(str(p), mode="r")


def repair_hint(path: Path | str) -> str:
    """How to rebuild a damaged store: rerun the stage instance whose output folder holds it, with --force."""
    from pipeline_lib.engine.stages import STAGES

    folder = Path(path).resolve().parent.as_posix()
    for stage in STAGES:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(stage.manifest_dir))
        found = re.search(f"(^|/){pattern}$", folder)
        if found:
            item = "-".join(found.group(var) for var, _ in stage.matrix)
            return f"re-extract the store with `bridgeflow stage {stage.name}{'@' + item if item else ''} --force`"
    return "re-extract the store with `bridgeflow stage <the stage that wrote it> --force`"


def _check_group_complete(store: zarr.Group, path: Path | str, name: str) -> None:
    parent = name.rsplit("/", 1)[0] if "/" in name else ""
    group = store[parent] if parent else store
    if isinstance(group, zarr.Group) and DONE in group:
        done = np.asarray(array_at(group, DONE)[:], dtype=bool)
        if not done.all():
            raise StoreError(
                f"{path}: array {name!r}: its group is half written ({int(done.sum())} of {done.size} blocks "
                f"done); {repair_hint(path)}"
            )


def _check_no_empty_chunk_files(path: Path | str, name: str) -> None:
    """zarr reads an empty shard file as fill values, so a chunk file truncated to nothing would read as zeros.

    zarr never writes an empty chunk file itself (a chunk equal to the fill value is left out instead), so one that
    exists means a damaged copy.
    """
    empty = sorted(str(p) for p in (Path(path) / name).rglob("*") if p.is_file() and p.stat().st_size == 0)
    if empty:
        raise StoreError(
            f"{path}: array {name!r} has an empty chunk file ({empty[0]}); the store is damaged: {repair_hint(path)}"
        )


def lazy_array(path: Path | str, name: str) -> zarr.Array:
    """A lazily read array (slicing reads only the chunks touched); fails for a half-written group."""
    store = open_store(path)
    if name not in store:
        raise KeyError(f"{path}: no array {name!r}")
    _check_group_complete(store, path, name)
    _check_no_empty_chunk_files(path, name)
    return array_at(store, name)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def read_array(path: Path | str, name: str, shape: Sequence[int | None] | None = None) -> np.ndarray:
    """Read a whole array into memory (e.g. read_array(p, "train/image", (None, 512)) -> (N, 512)).

    `shape` is what the caller expects (None: any length on that axis). A mismatch, or a chunk that zarr cannot
    decode (truncated file, failed checksum), is a StoreError naming the store and array instead of a codec or
    matmul traceback further down.
    """
    arr = lazy_array(path, name)
    if shape is not None and (
        len(arr.shape) != len(shape)
        or any(want is not None and want != got for want, got in zip(shape, arr.shape, strict=True))
    ):
        raise StoreError(
            f"{path}: array {name!r} has shape {tuple(arr.shape)}, expected {_shape_text(shape)} to match the store's "
            f"other arrays; {repair_hint(path)}"
        )
    try:
        return np.asarray(arr[...])
    except (ValueError, RuntimeError) as err:  # what zarr and its codecs raise for a truncated or corrupt chunk
        raise StoreError(
            f"{path}: array {name!r} cannot be read ({err}): one of its chunk files is truncated or corrupt; "
            + repair_hint(path)
        ) from err


def file_count(path: Path | str) -> int:
    """Number of files in a store (what DVC hashes)."""
    return sum(1 for f in Path(path).rglob("*") if f.is_file())
