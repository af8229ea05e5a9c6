"""Benchmark: how many physical copies of each stage output a project keeps on disk. Prints one JSON object.

Each stage output can exist as the published file in the workspace, the scratch copy under `.bridgeflow/work/` (kept
for republishing), a run folder's copy under `.bridgeflow/runs/` and DVC's cache object. Hard links make several of
these one inode; this counts, per area and over all areas together, the apparent size (`st_size`) and the real disk
use (`st_blocks` of each distinct inode, counted once).

    python benchmarks/disk_copies.py --measure /path/to/project      # an existing project, read only
    python benchmarks/disk_copies.py --scratch /tmp/disk-bench        # builds the smoke profile twice (see below)
    python benchmarks/disk_copies.py --scratch DIR --profile default --stages data --out result.json

The build runs `dvc repro` on two fresh copies of this checkout (code, dvc.yaml, the profile's params): "before"
with DVC's default `cache.type` (reflink,copy: what the project used before), "after" with this repo's
`.dvc/config` `[cache]` type; then a forced `dvc repro -f` (DVC deletes the outs, the stages republish from scratch)
to show the layout holds on a rerun.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline_lib.engine.artifacts import SCRATCH_DIR
from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.results import RUNS_DIR
from pipeline_lib.engine.stages import STAGES, instances, stage_names

REPO = Path(__file__).resolve().parents[1]
DVC_DEFAULT_CACHE_TYPE = "reflink,copy"
PROJECT_FILES = ("dvc.yaml", ".dvcignore", ".gitignore")
PROJECT_PACKAGES = ("pipeline_lib", "tasks", "flows")  # DVC tracks the stages' code as deps
MB = 1e6


def workspace_outputs(root: Path) -> list[Path]:
    """Every stage instance's published outputs (outs, metrics, plots), from the registry and the project's params."""
    params = effective_params(load_config(root))
    return sorted({root / out for stage in STAGES for inst in instances(stage, params) for out in inst.outputs()})


Inodes = dict[tuple[int, int], tuple[int, int, int]]


def scan(paths: list[Path]) -> tuple[Inodes, int]:
    """(dev, inode) -> (size, disk bytes, link count) of every regular file under `paths` (links not followed), and
    the number of names found (several names can share an inode)."""
    found: Inodes = {}
    names = 0
    for top in paths:
        walk = [(str(top.parent), [], [top.name])] if top.is_file() else os.walk(top)
        for folder, _, files in walk:
            for name in files:
                st = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(st.st_mode):
                    names += 1
                    found.setdefault((st.st_dev, st.st_ino), (st.st_size, st.st_blocks * 512, st.st_nlink))
    return found, names


def summarise(found: Inodes, names: int) -> dict[str, Any]:
    return {
        "files": names,
        "inodes": len(found),
        "apparent_mb": round(sum(size for size, _, _ in found.values()) / MB, 2),
        "disk_mb": round(sum(disk for _, disk, _ in found.values()) / MB, 2),
    }


def measure(root: Path) -> dict[str, Any]:
    """Apparent size and real disk use per area, of all areas together (each inode once), and the ratio of that total
    to the workspace's own disk use: 3 when scratch, workspace and DVC cache are three copies, 1 when one."""
    areas = {
        "workspace": workspace_outputs(root),
        "scratch": [root / SCRATCH_DIR / "work"],
        "runs": [root / RUNS_DIR],
        "dvc_cache": [root / ".dvc" / "cache"],
    }
    report: dict[str, Any] = {}
    union: Inodes = {}
    names = 0
    for name, paths in areas.items():
        found, count = scan([p for p in paths if p.exists()])
        report[name] = summarise(found, count)
        union.update(found)
        names += count
    report["total"] = summarise(union, names)
    ws_disk = report["workspace"]["disk_mb"]
    report["total_disk_per_workspace_disk"] = round(report["total"]["disk_mb"] / ws_disk, 2) if ws_disk else None
    return report


def sh(cwd: Path, *args: str, log: Path | None = None) -> float:
    """Run a command in `cwd` with this environment's console scripts first on PATH; wall seconds; raise on failure."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed in {cwd} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return round(time.perf_counter() - t0, 1)


def build(dest: Path, profile: str | None) -> Path:
    """A fresh project: this checkout's pipeline code and dvc.yaml, params.yaml with the profile merged in."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "profiles", dest / "profiles")
    for package in PROJECT_PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = effective_params(load_config(REPO, profile))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def repo_cache_type() -> str:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    return config.get("cache", "type", fallback=DVC_DEFAULT_CACHE_TYPE)


def run_variant(dest: Path, profile: str | None, cache_type: str, stages: list[str]) -> dict[str, Any]:
    root = build(dest, profile)
    log = root / "bench.log"
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "bench@bridgeflow.invalid")
    sh(root, "git", "config", "user.name", "bridgeflow bench")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "config", "cache.type", cache_type)
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "bench project")
    repro_s = sh(root, "dvc", "repro", *stages, log=log)
    first = measure(root)
    rerun_s = sh(root, "dvc", "repro", "-f", *stages, log=log)
    return {"cache_type": cache_type, "repro_s": repro_s, "after_repro": first, "forced_repro_s": rerun_s,
            "after_forced_repro": measure(root)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", type=Path, help="measure this existing project and stop (reads only)")
    ap.add_argument("--scratch", type=Path, help="folder for the two built projects (must not exist)")
    ap.add_argument("--profile", default="smoke",
                    help="params profile of the built projects (default: smoke; 'default': params.yaml as it is)")
    ap.add_argument("--stages", nargs="*", default=None, help="dvc repro targets (default: every stage)")
    ap.add_argument("--keep", action="store_true", help="keep the built projects")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    if args.measure:
        result: dict[str, Any] = {"project": str(args.measure.resolve()), **measure(args.measure)}
    else:
        if args.scratch is None or args.scratch.exists():
            raise SystemExit("pass --measure DIR, or --scratch with a folder that does not exist yet")
        stages = args.stages or stage_names()
        profile = None if args.profile == "default" else args.profile
        result = {
            "profile": args.profile,
            "stages": stages,
            "before": run_variant(args.scratch / "before", profile, DVC_DEFAULT_CACHE_TYPE, stages),
            "after": run_variant(args.scratch / "after", profile, repo_cache_type(), stages),
        }
        before, after = (result[k]["after_repro"]["total"]["disk_mb"] for k in ("before", "after"))
        result["disk_saved_mb"] = round(before - after, 2)
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
