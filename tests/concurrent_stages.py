"""Three tiny stages for the concurrency tests: `base`, two independent `leaf@<seed>` instances reading it (one per
`fewshot.seeds` value of the smoke profile), and `join` reading both.

Tests swap the registry for `REGISTRY` (monkeypatch in the test process; `InstallRegistry` on Dask worker processes;
the local pool's worker processes get the flow's registry themselves). With `FAKE_RENDEZVOUS` naming a folder, each
leaf leaves a marker there and waits until `PARTNERS` markers exist, so a test proves that two instances ran at once
by marker files instead of sleeps; a leaf that waits in vain fails after `RENDEZVOUS_TIMEOUT` seconds. Every leaf
writes its start and end time to `timings/<id>.json` under the results root, beside (not in) its outputs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from pipeline_lib.engine import stages
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.stages import Stage

RENDEZVOUS = "FAKE_RENDEZVOUS"
PARTNERS = 2
RENDEZVOUS_TIMEOUT = 90.0
TIMINGS = "timings"


def run_base(ctx: StageContext) -> dict:
    (ctx.output() / "value.txt").write_text(str(ctx.cfg.data.seed))
    return {"value": ctx.cfg.data.seed}


def run_leaf(ctx: StageContext) -> dict:
    started = time.time()
    partners = _rendezvous(ctx.inst.id)
    value = int((ctx.input("base") / "value.txt").read_text()) * 100 + int(ctx.item["seed"])
    (ctx.output() / "value.txt").write_text(str(value))
    timing = {"start": started, "end": time.time(), "partners": partners, "pid": os.getpid()}
    path = ctx.root / TIMINGS / f"{ctx.inst.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timing))
    return {"value": value}


def run_join(ctx: StageContext) -> dict:
    values = [int((ctx.input_instance("leaf", seed=seed) / "value.txt").read_text()) for seed in ctx.cfg.fewshot.seeds]
    (ctx.output() / "total.txt").write_text(str(sum(values)))
    return {"total": sum(values), "leaves": len(values)}


def _rendezvous(name: str) -> int:
    """Leave a marker and wait for PARTNERS markers (no-op without FAKE_RENDEZVOUS); how many were seen."""
    folder = os.environ.get(RENDEZVOUS)
    if not folder:
        return 0
    (Path(folder) / name).write_text("")
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
    while (seen := len(list(Path(folder).iterdir()))) < PARTNERS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} waited {RENDEZVOUS_TIMEOUT:.0f} s for {PARTNERS - 1} other instance(s) to run "
                               f"at the same time and saw {seen - 1}: the instances ran one after another")
        time.sleep(0.05)
    return seen


BASE = Stage("base", "concurrent_stages:run_base", "test stage", params=("data.seed",), outs=("artifacts/base",))
LEAF = Stage("leaf", "concurrent_stages:run_leaf", "test stage", params=("features.batch_size",), deps=("base",),
             outs=("artifacts/leaf/s{seed}",), matrix=(("seed", "fewshot.seeds"),))
JOIN = Stage("join", "concurrent_stages:run_join", "test stage", params=(), deps=("leaf",), outs=("artifacts/join",))
REGISTRY = (BASE, LEAF, JOIN)


class InstallRegistry(WorkerPlugin):
    """Dask worker plugin: the worker process plans and runs with REGISTRY, like the test process."""

    name = "concurrent-stages-registry"

    def setup(self, worker: Any) -> None:
        stages.STAGES = REGISTRY
