"""Shared by the benchmark scripts: how a plan benchmark reports its probe, and how every result is printed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plan_parser(doc: str) -> argparse.ArgumentParser:
    """The options of every plan benchmark: --probe (time the architecture on this machine's device) and --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--out", type=Path)
    return parser


def plan_summary(plan, seconds: float) -> dict:  # plan: pipeline_lib.plan.build.Plan
    """The probe's rates (None without `--probe`) and how long planning took, for a plan benchmark's JSON."""
    probe = None if plan.probe is None else {"device": plan.probe.device, **plan.probe.rates}
    return {"probe": probe, "plan_seconds": round(seconds, 1)}


def emit(result: dict, out: Path | None) -> None:
    """Print the benchmark's JSON, and write it to `out` when given."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        out.write_text(text + "\n")

