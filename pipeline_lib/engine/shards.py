"""Shards: the unit of work a scale-out worker gets, a run of blocks of one resumable zarr group.

Why shards look like this: concurrent writes into one zarr shard file silently lose data, so a shard always covers
whole shard files (one writer per file), and each block's done flag is written after its data, so a worker that dies
mid-shard leaves only unfinished blocks behind for a rerun. Which groups exist and how blocks map to files is the
stages' business (the registry's `Stage.shards` names each sharded stage's planner and worker, e.g.
`pipeline_lib.inversion.shards`); this module only cuts and names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Blocks of one group (e.g. "fewshot.zarr/train" or "oti") that one task computes."""

    group: str
    blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError(f"shard of {self.group!r} has no blocks")

    @property
    def name(self) -> str:
        return f"{self.group}[{self.blocks[0]}-{self.blocks[-1]}]"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for task parameters."""
        return {"group": self.group, "blocks": list(self.blocks)}


def split_blocks(group: str, pending: Iterable[int], blocks_per_file: int, files_per_shard: int) -> list[Shard]:
    """The pending blocks of `group` cut into shards of `files_per_shard` zarr shard files each.

    Block b lives in file b // blocks_per_file; a file with any pending block goes whole to one shard, never split.
    """
    if blocks_per_file < 1 or files_per_shard < 1:
        raise ValueError(f"blocks_per_file={blocks_per_file}, files_per_shard={files_per_shard}: expected >= 1")
    by_file: dict[int, list[int]] = {}
    for block in sorted({int(b) for b in pending}):
        by_file.setdefault(block // blocks_per_file, []).append(block)
    files = list(by_file.values())
    return [
        Shard(group, tuple(b for blocks in files[i : i + files_per_shard] for b in blocks))
        for i in range(0, len(files), files_per_shard)
    ]


_local = threading.local()


def per_thread(key: str, build: Callable[[], T]) -> T:
    """`build()` once per thread and key (the last key only), so a worker's tasks of one stage run share a loaded
    model while threads never share one (feature hooks and autograd state are per model)."""
    cached = getattr(_local, "cached", None)
    if cached is None or cached[0] != key:
        _local.cached = None  # free the previous value before building the next
        _local.cached = (key, build())
    return _local.cached[1]
