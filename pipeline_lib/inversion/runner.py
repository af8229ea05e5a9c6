"""Resumable, block-wise inversion of many samples into a zarr group (an `engine.store.BlockGroup` of chunk blocks).

Samples are cut into blocks of `block_size` (= the optimisation batch). Each finished block's parameters, final
features, snapshot features and loss curves are written into arrays chunked one block per chunk (`blocks_per_shard`
blocks per shard file), and only then is the block flagged done: the store's one resumable-block mechanism. A killed
run therefore resumes after its last finished block, and workers that each own whole shard files (runs of
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
from torch import Tensor

from pipeline_lib.engine.store import ArraySpec, BlockGroup
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
        """The spec as it reads back from zarr attrs (JSON: tuples become lists)."""
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

    def arrays(self) -> list[ArraySpec]:
        """The run's arrays, sample axis first (float32; unwritten rows read NaN)."""
        k, w = self.param_shape
        return [
            ArraySpec("params", (self.n, k, w), "float32"),
            ArraySpec("features", (self.n, self.feature_dim), "float32"),
            ArraySpec("snapshots", (self.n, len(self.snapshot_steps), self.feature_dim), "float32"),
            ArraySpec("losses", (self.n, self.steps), "float32"),
        ]


def block_seed(seed: int, block: int) -> int:
    """A seed for one block that depends only on the global seed and the block index."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint32)[0])


def targets_digest(targets: np.ndarray) -> str:
    """sha256 of the targets, so a store is reused only for the very same inputs."""
    arr = np.ascontiguousarray(targets, dtype=np.float32)
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def open_run(store_path: Path, group_name: str, spec: RunSpec, create: bool = True) -> BlockGroup:
    """Open the run's group for resuming, or (re)create it when absent or written for a different spec.

    A shard worker passes create=False: metadata has one writer (the coordinator), and a worker that computes another
    spec must fail rather than wipe the blocks other workers are writing (BlockGroup.resume).
    """
    layout = (Path(store_path), group_name, spec.arrays(), spec.block_size, spec.block_size * spec.blocks_per_shard)
    options: dict[str, Any] = {"plan": {"spec": spec.as_attrs()}, "blocks": "chunk", "fill_value": np.nan}
    if not create:
        return BlockGroup.resume(*layout, **options)
    return BlockGroup.create_or_resume(
        *layout, **options, attrs={"spec": spec.as_attrs(), "snapshot_steps": list(spec.snapshot_steps)}
    )


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
) -> BlockGroup:
    """Invert every not-yet-finished block of `targets` (N, D), or those among `blocks` (a shard worker's share, whole
    zarr shard files, with create=False: see open_run), and return the group."""
    if targets.shape != (spec.n, spec.feature_dim):
        raise ValueError(f"targets shape {targets.shape} does not match the run spec ({spec.n}, {spec.feature_dim})")
    bg = open_run(store_path, group_name, spec, create)
    pending = bg.pending()
    if blocks is not None:
        wanted = sorted({int(b) for b in blocks})
        for block in wanted:
            bg.rows(block)  # an IndexError naming the range for a block the group does not have
        pending = [b for b in pending if b in set(wanted)]
    todo = pending
    if blocks is None and len(todo) < bg.n_blocks:
        log.info("%s: resuming, %d of %d blocks already finished", group_name, bg.n_blocks - len(todo), bg.n_blocks)
    for block in progress(todo, len(todo), group_name) if progress else todo:
        lo, hi = bg.rows(block)
        out = invert_block(torch.from_numpy(np.asarray(targets[lo:hi], dtype=np.float32)).to(device),
                           block_seed(spec.seed, block))
        bg.write_block(block, {"params": out.params.numpy(), "features": out.features.numpy(),
                               "snapshots": out.snapshots.numpy(), "losses": out.losses.numpy()})
    return bg
