"""Resumable, block-wise inversion of many samples into a zarr group.

Samples are cut into blocks of `block_size` (= the optimisation batch). Each finished block's parameters, final
features, snapshot features and loss curves are written into arrays chunked one block per chunk (several blocks per
shard), and only then is the block's flag in `done` set (`done` is sharded like the data, one chunk per block). A
killed run therefore resumes after its last finished block, and workers that each own whole shards (runs of
`blocks_per_shard` blocks) can fill one store side by side. Each block's initialisation seed derives from the global
seed and the block index alone, so a resumed or sharded run ends bit-identical (on the CPU) to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor

from pipeline_lib.inversion.optimise import InversionOutput

log = logging.getLogger(__name__)

#: invert_block(targets (B, D) on the target device, seed) -> InversionOutput
BlockInverter = Callable[[Tensor, int], InversionOutput]
Progress = Callable[[Iterable[int], int, str], Iterator[int]]

ARRAYS = ("params", "features", "snapshots", "losses")


@dataclass(frozen=True)
class RunSpec:
    """What identifies a run; a store written for a different spec is discarded rather than mixed in."""

    n: int  # number of samples
    param_shape: tuple[int, int]  # (K, W) per sample
    feature_dim: int  # D
    snapshot_steps: tuple[int, ...]
    steps: int
    block_size: int
    blocks_per_shard: int
    seed: int
    targets_sha256: str
    extra: tuple[tuple[str, Any], ...] = ()  # method settings that change the result (lr, template, ...)

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.block_size)

    def as_attrs(self) -> dict[str, Any]:
        """The spec as it reads back from zarr attrs (JSON: tuples become lists), so stored and new specs compare."""
        return json.loads(json.dumps({
            "n": self.n,
            "param_shape": list(self.param_shape),
            "feature_dim": self.feature_dim,
            "snapshot_steps": list(self.snapshot_steps),
            "steps": self.steps,
            "block_size": self.block_size,
            "blocks_per_shard": self.blocks_per_shard,
            "seed": self.seed,
            "targets_sha256": self.targets_sha256,
            "extra": {k: v for k, v in self.extra},
        }))


def block_seed(seed: int, block: int) -> int:
    """A seed for one block that depends only on the global seed and the block index."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint32)[0])


def targets_digest(targets: np.ndarray) -> str:
    """sha256 of the targets, so a store is reused only for the very same inputs."""
    arr = np.ascontiguousarray(targets, dtype=np.float32)
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def _create(group: zarr.Group, spec: RunSpec) -> None:
    """Create the arrays: one block per chunk along the sample axis, `blocks_per_shard` blocks per shard."""
    b, s = spec.block_size, spec.block_size * spec.blocks_per_shard
    k, w = spec.param_shape
    d, n_snap = spec.feature_dim, len(spec.snapshot_steps)
    layout = {
        "params": ((spec.n, k, w), (b, k, w)),
        "features": ((spec.n, d), (b, d)),
        "snapshots": ((spec.n, n_snap, d), (b, max(n_snap, 1), d)),
        "losses": ((spec.n, spec.steps), (b, spec.steps)),
    }
    for name, (shape, chunks) in layout.items():
        shards = (s, *chunks[1:])
        zarr.create_array(
            store=group.store,
            name=f"{group.path}/{name}" if group.path else name,
            shape=shape,
            chunks=chunks,
            shards=shards,
            dtype="float32",
            fill_value=np.nan,
            overwrite=True,
        )
    zarr.create_array(
        store=group.store,
        name=f"{group.path}/done" if group.path else "done",
        shape=(spec.n_blocks,),
        chunks=(1,),
        shards=(spec.blocks_per_shard,),  # a shard's flags live in one file, written by that shard's only writer
        dtype="bool",
        fill_value=False,
        overwrite=True,
    )
    group.attrs.update({"spec": spec.as_attrs(), "snapshot_steps": list(spec.snapshot_steps)})


def open_run(store_path: Path, group_name: str, spec: RunSpec, create: bool = True) -> zarr.Group:
    """Open the run's group for resuming, or (re)create it when absent or written for a different spec.

    A shard worker passes create=False: metadata has one writer (the coordinator), and a worker that computes another
    spec must fail rather than wipe the blocks other workers are writing.
    """
    if not create and not Path(store_path).exists():
        raise RuntimeError(f"{store_path}/{group_name} is missing: the coordinating process creates it before shards run")
    root = zarr.open_group(store_path, mode="a" if create else "r+")
    if group_name in root:
        group = root[group_name]
        if group.attrs.get("spec") == spec.as_attrs() and all(a in group for a in (*ARRAYS, "done")):
            return group
        if not create:
            raise RuntimeError(f"{store_path}/{group_name} was created for other settings or inputs than this worker's")
        log.warning("%s/%s was written for different settings or inputs; starting it afresh", store_path, group_name)
    if not create:
        raise RuntimeError(f"{store_path}/{group_name} is missing: the coordinating process creates it before shards run")
    group = root.require_group(group_name)
    _create(group, spec)
    return group


def run_blocks(
    store_path: Path,
    group_name: str,
    targets: np.ndarray,
    invert_block: BlockInverter,
    spec: RunSpec,
    *,
    device: torch.device,
    progress: Progress | None = None,
    blocks: Iterable[int] | None = None,
    create: bool = True,
) -> zarr.Group:
    """Invert every not-yet-finished block of `targets` (N, D), or those among `blocks` (a shard worker's share, whole
    zarr shards, with create=False: see open_run), and return the group."""
    if targets.shape != (spec.n, spec.feature_dim):
        raise ValueError(f"targets shape {targets.shape} does not match the run spec ({spec.n}, {spec.feature_dim})")
    group = open_run(store_path, group_name, spec, create)
    done = group["done"][...]
    wanted = range(spec.n_blocks) if blocks is None else sorted(set(blocks))
    todo = [i for i in wanted if not done[i]]
    if blocks is None and len(todo) < spec.n_blocks:
        log.info("%s: resuming, %d of %d blocks already finished", group_name, spec.n_blocks - len(todo), spec.n_blocks)
    blocks: Iterable[int] = progress(todo, len(todo), group_name) if progress else todo
    for block in blocks:
        lo, hi = block * spec.block_size, min((block + 1) * spec.block_size, spec.n)
        out = invert_block(torch.from_numpy(np.asarray(targets[lo:hi], dtype=np.float32)).to(device),
                           block_seed(spec.seed, block))
        group["params"][lo:hi] = out.params.numpy()
        group["features"][lo:hi] = out.features.numpy()
        group["snapshots"][lo:hi] = out.snapshots.numpy()
        group["losses"][lo:hi] = out.losses.numpy()
        group["done"][block] = True  # after the data: a block is finished only once all its arrays are on disk
    return group


def is_complete(group: zarr.Group) -> bool:
    """True when every block of the group has been written."""
    return bool(np.all(group["done"][...]))
