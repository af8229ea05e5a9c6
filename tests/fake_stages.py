"""Two tiny stages used to test the runner, fingerprints, status and publishing without any real computation.

Tests swap the registry for `FAKE_REGISTRY` (alpha, then beta reading alpha) with `monkeypatch`.
"""

from __future__ import annotations

import json
import os

from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.stages import Stage


def _count(ctx: StageContext, name: str) -> None:
    counter = ctx.root / f"runs-{name}.txt"
    counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))


def run_alpha(ctx: StageContext) -> dict:
    _count(ctx, "alpha")
    out = ctx.output()
    (out / "value.txt").write_text(str(ctx.cfg.data.seed * 10))
    if os.environ.get("FAKE_STAGE_CRASH") == "alpha":
        raise RuntimeError("simulated crash after a partial write")
    ctx.metrics().write_text(json.dumps({"value": ctx.cfg.data.seed * 10}))
    return {"value": ctx.cfg.data.seed * 10}


def run_beta(ctx: StageContext) -> dict:
    _count(ctx, "beta")
    value = int((ctx.input("alpha") / "value.txt").read_text())
    out = ctx.output()
    (out / "double.txt").write_text(str(2 * value))
    return {"double": 2 * value}


ALPHA = Stage("alpha", "fake_stages:run_alpha", "test stage", params=("data.seed",), outs=("artifacts/alpha",),
              metrics=("metrics/alpha.json",))
BETA = Stage("beta", "fake_stages:run_beta", "test stage", params=("features.batch_size",), deps=("alpha",),
             outs=("artifacts/beta",))
FAKE_REGISTRY = (ALPHA, BETA)
