"""The inversion stage as shards for a cluster: the coordinating process plans, workers run OTI/OVI blocks.

`plan_shards` (coordinator, once per stage run) creates the OTI and OVI groups in the stage's scratch store (one
metadata writer) and lists their pending blocks as shards of whole zarr shard files (`inversion.blocks_per_shard`
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
from pipeline_lib.inversion.jobs import STORE, InversionJob, inversion_jobs, load_inputs, prepare_model
from pipeline_lib.inversion.runner import open_run, run_blocks


def _jobs(ctx: StageContext) -> tuple[dict[str, InversionJob], Path]:
    """The stage's inversion jobs on the context's device (published backbone and features) and its store path."""
    from pipeline_lib.backbone.load import load_published_backbone

    inputs = load_inputs(ctx.input("features_fewshot"), ctx.input("features_text"))
    backbone = load_published_backbone(ctx.input("backbone"), ctx.device)
    model = prepare_model(backbone.model, ctx.device)
    jobs = inversion_jobs(model, backbone.tokenizer, inputs, ctx.cfg.inversion)
    return {job.name: job for job in jobs}, ctx.output() / STORE


def plan_shards(ctx: StageContext, files_per_shard: int = 1) -> list[Shard]:
    """Create (or resume) the OTI/OVI groups and return their pending blocks as shards of whole zarr shard files,
    largest first (blocks x optimisation steps), so a few workers finish together."""
    jobs, store = _jobs(ctx)
    sized: list[tuple[int, Shard]] = []
    for job in jobs.values():
        pending = open_run(store, job.name, job.spec).pending()
        for shard in split_blocks(job.name, pending, job.spec.blocks_per_shard, files_per_shard):
            sized.append((len(shard.blocks) * job.spec.steps, shard))
    return [shard for _, shard in sorted(sized, key=lambda pair: -pair[0])]


def invert_shard(ctx: StageContext, shard: Shard) -> dict[str, Any]:
    """Optimise the shard's pending blocks into the group the coordinator created; returns what it did."""
    jobs, store = per_thread(f"inversion:{ctx.work}", lambda: _jobs(ctx))
    if shard.group not in jobs:
        raise KeyError(f"shard {shard.name}: no inversion {shard.group!r} (inversions: {sorted(jobs)})")
    job = jobs[shard.group]
    written: list[int] = []

    def invert(targets: Any, seed: int) -> Any:
        written.append(seed)
        return job.invert(targets, seed)

    t0 = time.perf_counter()
    run_blocks(store, job.name, job.targets, invert, job.spec, device=ctx.device, blocks=shard.blocks, create=False)
    return {"shard": shard.name, "blocks_written": len(written), "blocks_skipped": len(shard.blocks) - len(written),
            "seconds": round(time.perf_counter() - t0, 3)}
