"""The DVC sweep: one `dvc exp run -S ...` experiment per grid point, then `dvc exp show` of the headline columns.

Each experiment runs in its own temporary copy of the repo (`--temp`, or the run queue when several run at once)
and keeps its params and metrics in its own Git ref, so points never clobber each other or the workspace; DVC's
cache restores the stages a point shares with the committed baseline instead of recomputing them. Experiments see
only what Git tracks: commit first. Stage commands call the stage functions directly, so no experiment starts a
Prefect server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline_lib.engine.params import ParamsError
from pipeline_lib.engine.sweep import headline_column_regex, validate_points


def _dvc(root: Path, *args: str) -> str:
    """Run a dvc command in `root` (the venv's dvc, then PATH's); a failure raises with its output."""
    exe = shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        raise ParamsError("dvc is not installed in this environment; install the project's dependencies")
    # dvc.yaml's commands call `bridgeflow`, installed beside this interpreter
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([exe, *args], cwd=root, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def exp_show_args(stages: Sequence[str] | None, swept_keys: Sequence[str], csv: bool = False) -> list[str]:
    """`dvc exp show` restricted to the experiment names, the swept params and the stages' headline metrics.

    Markdown by default: unlike the rich table it is never cut to the terminal's width.
    """
    names = ["Experiment", "Created"] + (["rev", "typ"] if csv else [])  # the table views merge rev/typ into Experiment
    keep = "(?:" + "|".join(names) + r")\Z|" + headline_column_regex(stages, swept_keys)
    return ["exp", "show", "--no-pager", "--hide-queued", "--drop", ".*", "--keep", keep, "--csv" if csv else "--md"]


def exp_run_commands(points: Sequence[Sequence[str]], stages: Sequence[str] | None, jobs: int) -> list[list[str]]:
    """The dvc commands that run every point: one `exp run --temp` each, or a queue drained by `jobs` workers."""
    if jobs < 1:
        raise ParamsError(f"--jobs {jobs}: expected at least 1")
    per_point = [[arg for o in point for arg in ("-S", o)] + list(stages or ()) for point in points]
    if jobs == 1:  # synchronous and serial, with no background queue worker to wait for (~10 s less per point)
        return [["exp", "run", "--temp", *args] for args in per_point]
    # = `dvc queue start --jobs N` + waiting for the queue to drain
    return [["exp", "run", "--queue", *args] for args in per_point] + [["exp", "run", "--run-all", "--jobs", str(jobs)]]


def dvc_sweep(root: Path, points: Sequence[Sequence[str]], stages: Sequence[str] | None = None, jobs: int = 1,
              csv: bool = False) -> str:
    """Run every point as a DVC experiment (one at a time unless `jobs` > 1); return the comparison table."""
    if not (root / ".dvc").is_dir():
        raise ParamsError(f"{root} is not a DVC project (run `git init && dvc init` and commit first)")
    validate_points(root, None, points)
    for command in exp_run_commands(points, stages, jobs):
        _dvc(root, *command)
    swept = list(dict.fromkeys(o.split("=", 1)[0] for point in points for o in point))
    return _dvc(root, *exp_show_args(stages, swept, csv=csv))
