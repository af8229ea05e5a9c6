"""The inversion stages (`oti`, `ovi`) as shards for a cluster: the coordinating process plans, workers run blocks.

`plan_shards` (coordinator, once per instance run) creates the instance's OTI or OVI group in its scratch store (one
metadata writer) and lists the pending blocks as shards of whole zarr shard files (`inversion.blocks_per_shard`
blocks each). `invert_shard` (any worker that sees the same project root) optimises one shard's blocks. Each block's
seed depends on the global seed and its index only, so the store equals a single-process run's; the stage function
that runs afterwards finds every block done and only evaluates retrieval and publishes. The registry names both
functions (`Stage.shards`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.shards import Shard, per_thread, split_blocks
from pipeline_lib.inversion.jobs import (
    STORE,
    InversionJob,
    instance_config,
    instance_job,
    load_instance_inputs,
    prepare_model,
)
from pipeline_lib.inversion.runner import open_run, run_blocks


def _job(ctx: StageContext) -> tuple[InversionJob, Path]:
    """The instance's inversion job on the context's device (published backbone and features) and its store path."""
    from pipeline_lib.backbone.load import load_published_backbone

    inputs = load_instance_inputs(ctx)
    backbone = load_published_backbone(ctx.input("backbone"), ctx.device)
    model = prepare_model(backbone.model, ctx.device)
    return instance_job(model, backbone.tokenizer, inputs, instance_config(ctx)), ctx.output() / STORE


def plan_shards(ctx: StageContext, files_per_shard: int = 1) -> list[Shard]:
    """Create (or resume) the instance's group and return its pending blocks as shards of whole zarr shard files."""
    job, store = _job(ctx)
    pending = open_run(store, job.name, job.spec).pending()
    return split_blocks(job.name, pending, job.spec.blocks_per_shard, files_per_shard)


def invert_shard(ctx: StageContext, shard: Shard) -> dict[str, Any]:
    """Optimise the shard's pending blocks into the group the coordinator created; returns what it did."""
    job, store = per_thread(f"{ctx.inst.id}:{ctx.work}", lambda: _job(ctx))
    if shard.group != job.name:
        raise KeyError(f"shard {shard.name}: no inversion {shard.group!r} in {ctx.inst.id} (its inversion: {job.name})")
    written: list[int] = []

    def invert(targets: Any, seed: int) -> Any:
        written.append(seed)
        return job.invert(targets, seed)

    t0 = time.perf_counter()
    run_blocks(store, job.name, job.targets, invert, job.spec, device=ctx.device, blocks=shard.blocks, create=False)
    return {"shard": shard.name, "blocks_written": len(written), "blocks_skipped": len(shard.blocks) - len(written),
            "seconds": round(time.perf_counter() - t0, 3)}
