"""Two tiny stages used to test the runner, fingerprints and publishing without any real computation."""

from __future__ import annotations

import json
import os

from pipeline_lib.engine.context import StageContext


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
