"""The features stage as shards for a cluster: the coordinating process plans, workers extract image blocks.

`plan_shards` (coordinator, once per stage run) creates every image group's arrays in the stage's scratch store, so
metadata has a single writer, and lists the pending blocks as shards. `extract_shard` (any worker that sees the same
project root) extracts one shard's blocks into that store. A block is one zarr shard file of every array of its group,
with its own done flag written after its data, so shards never share a file; each worker also leaves a record per
block (rows, forwards, seconds) in the scratch folder. The stage function that runs afterwards finds every image block
done; it writes the (cheap) text side, counts the shards' work from the block records into its metrics and publishes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from typing import Any

from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.shards import Shard, per_thread, split_blocks
from pipeline_lib.features.extract import stats_dict
from pipeline_lib.features.groups import ExtractionRun, ImageGroup
from pipeline_lib.features.stage import extraction_run, image_groups

log = logging.getLogger(__name__)


def plan_shards(ctx: StageContext, files_per_shard: int = 1) -> list[Shard]:
    """Create (or resume) every image group and return its pending blocks, `files_per_shard` blocks per shard."""
    run = extraction_run(ctx, num_workers=0)
    shards: list[Shard] = []
    for g in image_groups(run, ctx):
        shards += split_blocks(g.key, run.open_group(g).pending(), 1, files_per_shard)
    return shards


def loader_workers(requested: int) -> int:
    """DataLoader workers a task may start: none inside a daemonic process (a Dask nanny's worker by default), which
    may not have children."""
    if requested and mp.current_process().daemon:
        log.info("daemonic worker process: decoding images in the task itself (runtime.num_workers ignored)")
        return 0
    return requested


def _worker_state(ctx: StageContext) -> tuple[ExtractionRun, dict[str, ImageGroup]]:
    def build() -> tuple[ExtractionRun, dict[str, ImageGroup]]:
        run = extraction_run(ctx, num_workers=loader_workers(ctx.cfg.runtime.num_workers))
        return run, {g.key: g for g in image_groups(run, ctx)}

    return per_thread(f"{ctx.inst.id}:{ctx.work}", build)


def extract_shard(ctx: StageContext, shard: Shard) -> dict[str, Any]:
    """Extract the shard's pending blocks into the group the coordinator created; returns what it did."""
    run, groups = _worker_state(ctx)
    if shard.group not in groups:
        raise KeyError(f"shard {shard.name}: no image group {shard.group!r} (groups: {sorted(groups)})")
    g = groups[shard.group]
    stats = stats_dict(run.extract(g, run.open_group(g, create=False), shard.blocks))
    return {"shard": shard.name, **{k: stats[k] for k in ("blocks_written", "blocks_skipped", "forwards", "seconds")}}
