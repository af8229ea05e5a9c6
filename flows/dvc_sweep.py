"""The DVC sweep: one `dvc exp run -S ...` experiment per grid point, then the comparison of those experiments.

Each experiment runs in its own temporary copy of the repo (`--temp`, or the run queue when several run at once)
and keeps its params and metrics in its own Git ref, so points never clobber each other or the workspace; DVC's
cache restores the stages a point shares with the committed baseline instead of recomputing them. Experiments see
only what Git tracks: commit first. Stage commands call the stage functions directly, so no experiment starts a
Prefect server.

Each point's experiment is named `<sweep>-<index>` (`sweep-<time>-<id>-000`, ...), so the comparison reads exactly
this sweep's experiments from `dvc exp show --json`, in grid order, whatever else the repo holds. Progress is one
line per point as it starts and as it finishes, with its elapsed seconds; queued points (`jobs` > 1) are followed by
polling `dvc queue status`, so their times are accurate to `QUEUE_POLL_S`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline_lib.engine.params import ParamsError
from pipeline_lib.engine.sweep import (
    TABLE_WIDTH,
    compare_points,
    headline_column_regex,
    metric_cells,
    metrics_paths,
    render_comparison,
    validate_points,
)

QUEUE_POLL_S = 10.0  # seconds between `dvc queue status` polls while queued points run (each poll costs ~2 s CPU)
FINISHED = {"Success": "finished", "Failed": "FAILED"}  # `dvc queue status` states of a point that has ended


def _dvc_env() -> tuple[str, dict[str, str]]:
    """The dvc executable (the venv's, then PATH's) and an environment where dvc.yaml's `bridgeflow` resolves."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    exe = shutil.which("dvc", path=path)
    if exe is None:
        raise ParamsError("dvc is not installed in this environment; install the project's dependencies")
    return exe, {**os.environ, "PATH": path}


def _dvc(root: Path, *args: str) -> str:
    """Run a dvc command in `root`; a failure raises with its output."""
    exe, env = _dvc_env()
    proc = subprocess.run([exe, *args], cwd=root, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def exp_names(count: int) -> list[str]:
    """Experiment names for one sweep's points: unique per sweep, sortable by start time, valid Git ref names."""
    sweep = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    return [f"{sweep}-{index:03d}" for index in range(count)]


def exp_show_args(keep: str) -> list[str]:
    """`dvc exp show --csv` of the experiment names and the columns that `keep` matches (a regex)."""
    names = ["Experiment", "Created", "rev", "typ"]  # the table views merge rev/typ into Experiment
    keep = "(?:" + "|".join(names) + r")\Z|" + keep
    return ["exp", "show", "--no-pager", "--hide-queued", "--drop", ".*", "--keep", keep, "--csv"]


def exp_run_commands(
    points: Sequence[Sequence[str]], stages: Sequence[str] | None, jobs: int, names: Sequence[str] | None = None
) -> list[list[str]]:
    """The dvc commands that run every point: one `exp run --temp` each, or a queue drained by `jobs` workers."""
    if jobs < 1:
        raise ParamsError(f"--jobs {jobs}: expected at least 1")
    named = [["--name", name] for name in names] if names is not None else [[] for _ in points]
    if len(named) != len(points):
        raise ValueError(f"{len(named)} experiment names for {len(points)} points")
    per_point = [
        [*name, *(arg for o in point for arg in ("-S", o)), *(stages or ())]
        for name, point in zip(named, points, strict=True)
    ]
    if jobs == 1:  # synchronous and serial, with no background queue worker to wait for (~10 s less per point)
        return [["exp", "run", "--temp", *args] for args in per_point]
    # = `dvc queue start --jobs N` + waiting for the queue to drain
    return [["exp", "run", "--queue", *args] for args in per_point] + [["exp", "run", "--run-all", "--jobs", str(jobs)]]


def queue_states(status: str, names: Sequence[str]) -> dict[str, str]:
    """The state (`Queued`, `Running`, `Success`, `Failed`) of each named experiment in `dvc queue status` output.

    Its table has one line per task: `<task id>  <name>  <created>  <status>`; the created time has spaces.
    """
    wanted = set(names)
    states: dict[str, str] = {}
    for line in status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in wanted:
            states[words[1]] = words[-1]
    return states


class PointProgress:
    """One line per point when it starts and when it ends: `[i/n] started|finished|FAILED <overrides> ...`.

    Polled points (`update`) that start and end between two polls are reported at once, their time as an upper
    bound (`in <=N s`).
    """

    def __init__(self, points: Sequence[Sequence[str]], say: Callable[[str], None]) -> None:
        self.points = points
        self.say = say
        self.t0 = self.polled = time.monotonic()
        self.started: dict[int, float] = {}
        self.unseen: set[int] = set()  # started and ended between two polls
        self.ended: set[int] = set()

    def _line(self, index: int, event: str, detail: str) -> None:
        point = " ".join(self.points[index])
        self.say(f"[{index + 1}/{len(self.points)}] {event:<8} {point}  {detail}")

    def start(self, index: int) -> None:
        if index not in self.started:
            self.started[index] = time.monotonic()
            self._line(index, "started", f"(sweep at {self.started[index] - self.t0:.0f} s)")

    def end(self, index: int, event: str = "finished") -> None:
        if index in self.ended:
            return
        self.ended.add(index)
        now = time.monotonic()
        took = f"<={now - self.started[index]:.1f}" if index in self.unseen else f"{now - self.started[index]:.1f}"
        self._line(index, event, f"in {took} s (sweep at {now - self.t0:.0f} s)")

    def update(self, states: Mapping[int, str]) -> None:
        """Report what changed since the last poll (`states`: point index -> `dvc queue status` state)."""
        for index, state in sorted(states.items()):
            if state == "Running":
                self.start(index)
            elif state in FINISHED:
                if index not in self.started:
                    self.start(index)
                    self.started[index] = self.polled  # it ran after the previous poll at the earliest
                    self.unseen.add(index)
                self.end(index, FINISHED[state])
        self.polled = time.monotonic()


def _run_serially(root: Path, commands: Sequence[Sequence[str]], progress: PointProgress) -> None:
    for index, command in enumerate(commands):
        progress.start(index)
        try:
            _dvc(root, *command)
        except RuntimeError:
            progress.end(index, "FAILED")
            raise
        progress.end(index)


def _run_queued(root: Path, commands: Sequence[Sequence[str]], names: Sequence[str], progress: PointProgress) -> None:
    """Queue every point, then drain the queue (`exp run --run-all`), polling `dvc queue status` meanwhile."""
    for command in commands[:-1]:
        _dvc(root, *command)
    progress.say(f"queued {len(names)} experiments ({names[0]} ...); `dvc queue status` / `dvc queue logs NAME`")
    index_of = {name: index for index, name in enumerate(names)}

    def poll() -> None:
        try:
            states = queue_states(_dvc(root, "queue", "status"), names)
        except RuntimeError as err:  # progress only: the run's own exit status decides success
            progress.say(f"(dvc queue status failed: {str(err).splitlines()[0]})")
            return
        progress.update({index_of[name]: state for name, state in states.items()})

    exe, env = _dvc_env()
    with tempfile.TemporaryFile(mode="w+") as log:  # a file, not a pipe: a long log never blocks the run
        proc = subprocess.Popen(
            [exe, *commands[-1]], cwd=root, stdout=log, stderr=subprocess.STDOUT, text=True, env=env
        )
        while True:
            try:
                proc.wait(timeout=QUEUE_POLL_S)
                break
            except subprocess.TimeoutExpired:
                poll()
        poll()
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"dvc {' '.join(commands[-1])} failed (exit {proc.returncode}):\n{log.read()}")


def experiment_metrics(doc: Any, names: Sequence[str], paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`{experiment name: {metrics file stem: parsed JSON}}` of the named experiments in `dvc exp show --json`.

    `paths` are the metrics files to read (repo-relative); a file an experiment lacks is left out. A named experiment
    that is missing, or that DVC reports an error for, is an error naming it.
    """
    found: dict[str, dict[str, Any]] = {}
    for baseline in doc if isinstance(doc, list) else []:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") in names and not rev.get("error"):
                    metrics = (rev.get("data") or {}).get("metrics") or {}
                    found[rev["name"]] = {
                        Path(path).stem: metrics[path]["data"] for path in paths if "data" in metrics.get(path, {})
                    }
    missing = [name for name in names if name not in found]
    if missing:
        raise RuntimeError(
            f"dvc exp show has no results for experiment(s) {', '.join(missing)}: they failed or did not run "
            "(`dvc queue logs NAME` shows a queued one's log)"
        )
    return found


def dvc_sweep(
    root: Path,
    points: Sequence[Sequence[str]],
    stages: Sequence[str] | None = None,
    jobs: int = 1,
    csv: bool = False,
    only_changed: bool = True,
    width: int = TABLE_WIDTH,
    say: Callable[[str], None] = print,
) -> str:
    """Run every point as a DVC experiment (one at a time unless `jobs` > 1), reporting progress through `say`.

    Returns the comparison of this sweep's experiments: by default `render_comparison`'s text table (a column per
    point, a row per metric); with `csv`, DVC's own `dvc exp show --csv` reduced to the swept params and the metrics.
    """
    if not (root / ".dvc").is_dir():
        raise ParamsError(f"{root} is not a DVC project (run `git init && dvc init` and commit first)")
    validate_points(root, None, points)
    names = exp_names(len(points))
    commands = exp_run_commands(points, stages, jobs, names)
    progress = PointProgress(points, say)
    if jobs == 1:
        _run_serially(root, commands, progress)
    else:
        _run_queued(root, commands, names, progress)
    found = experiment_metrics(json.loads(_dvc(root, "exp", "show", "--json")), names, metrics_paths(stages))
    swept = list(dict.fromkeys(o.split("=", 1)[0] for point in points for o in point))
    if csv:
        metric_keys = {key.split(":", 1)[1] for metrics in found.values() for key in metric_cells(metrics)}
        return _dvc(root, *exp_show_args(headline_column_regex(swept, sorted(metric_keys))))
    columns, rows = compare_points(
        [(point, found[name]) for point, name in zip(points, names, strict=True)], only_changed
    )
    return render_comparison(columns, rows, swept, width)
