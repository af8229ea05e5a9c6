"""Benchmark: the whole default pipeline (`./run.sh`) from a fresh clone, then a no-op rerun. Prints one JSON object.

The clone gets its own `.venv` (`make install`, timed separately: the targets are "after install"), starts with no
outputs and an empty DVC cache, exactly as a user's first run. Stage seconds come from the clone's stage events.

    python benchmarks/pipeline.py --scratch /tmp/bridgeflow-bench      # clones HEAD of this checkout there
    python benchmarks/pipeline.py --scratch DIR --keep                  # leave the clone for inspection

A failed step stops the benchmark and keeps the clone, with its logs (install.log, run.log, rerun.log).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from pipeline_lib.engine.events import read_events

REPO = Path(__file__).resolve().parents[1]
TARGET_FULL_S = 30 * 60  # the whole default run, 5 seeds per trained comparison included
TARGET_NOOP_S = 10.0


def timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children); output goes to `log`; raises on failure."""
    before = os.times()
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; see {log}")
    return round(wall, 1), round((after.children_user - before.children_user)
                                 + (after.children_system - before.children_system), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", type=Path, required=True, help="folder for the clone (must not exist)")
    ap.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = ap.parse_args()
    if args.scratch.exists():
        raise SystemExit(f"{args.scratch} exists: choose a new folder (the benchmark needs a fresh clone)")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(args.scratch)], check=True)
    project = args.scratch
    # A failed command leaves the clone (and the log its message names) in place.
    install_s, _ = timed(["make", "--no-print-directory", "install"], project, project / "install.log")
    full_s, full_cpu = timed(["./run.sh"], project, project / "run.log")
    stages = {e["id"]: e["seconds"] for e in read_events(project) if e["status"] == "ran"}
    noop_s, _ = timed(["./run.sh"], project, project / "rerun.log")
    reran = [e["id"] for e in read_events(project) if e["status"] == "ran" and e["id"] not in stages]
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "install_s": install_s,
        "full_run_s": full_s,
        "full_run_cpu_s": full_cpu,
        "full_run_cores_busy": round(full_cpu / full_s, 2),
        "stage_seconds": stages,
        "stage_seconds_total": round(sum(stages.values()), 1),
        "noop_rerun_s": noop_s,
        "noop_rerun_ran": reran,
        "targets": {"full_run_s": TARGET_FULL_S, "noop_rerun_s": TARGET_NOOP_S},
        "meets_targets": full_s < TARGET_FULL_S and noop_s < TARGET_NOOP_S and not reran,
    }, indent=2))


if __name__ == "__main__":
    main()
