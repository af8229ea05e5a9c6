"""The `data` stage: write the shapes world into its output folder and its counts into its metrics file."""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from pathlib import Path
from typing import Any

from pipeline_lib.data.world import write_shapes_world
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_json

logger = logging.getLogger(__name__)


def tree_digest(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every file under folder, in sorted order.

    Equal digests mean byte-identical datasets: the metric that shows same params + seed => same data.
    """
    outer = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(path.relative_to(folder).as_posix().encode() + b"\0" + inner.digest())
    return outer.hexdigest()


def _cpu_seconds() -> tuple[float, float]:
    """CPU time of this process and of its finished children (wall time misleads on a shared machine)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def run_data(ctx: StageContext) -> dict[str, Any]:
    """Generate every dataset. The metrics hold the sizes a reader compares; every count, the content digest and the
    timings go in the returned summary (the stage manifest)."""
    cfg = ctx.cfg.data
    out_dir = ctx.output()
    if not cfg.generate:  # a run on real datasets and a real backbone (preflight checks nothing reads the world)
        write_json(ctx.metrics(), {})
        logger.info("data: data.generate is false, no shapes world written")
        return {"generated": False}
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    workers = max(1, ctx.cfg.runtime.num_workers)
    summary = write_shapes_world(cfg, out_dir, progress=ctx.progress, workers=workers)
    digest = tree_digest(out_dir)
    cpu1 = _cpu_seconds()
    summary["cpu_seconds"] = {"main": round(cpu1[0] - cpu0[0], 2), "workers": round(cpu1[1] - cpu0[1], 2)}
    summary["seconds"]["digest"] = round(time.perf_counter() - wall0 - summary["seconds"]["total"], 3)
    czsl = summary["czsl"]
    metrics = {
        "images_total": summary["images_total"],
        "fewshot_test_images": summary["fewshot"]["test"],
        "czsl_compositions": czsl["attrs"] * czsl["objs"],
        "czsl_unseen_test_pairs": czsl["test_pairs"]["unseen"],
        "retrieval_queries": summary["retrieval"]["queries"],
    }
    write_json(ctx.metrics(), metrics)
    summary["content_sha256"] = digest
    logger.info(
        "data: %d images in %.1f s wall, CPU %.1f s main + %.1f s workers (%d workers)",
        summary["images_total"],
        summary["seconds"]["total"],
        summary["cpu_seconds"]["main"],
        summary["cpu_seconds"]["workers"],
        workers,
    )
    return summary
