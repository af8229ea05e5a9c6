"""Shared test setup: offline, quiet tools; one Prefect test server per session; a tiny project folder factory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pipeline_lib.engine.config import Config
    from pipeline_lib.engine.context import StageContext

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # read before the default below hides it
os.environ.setdefault("CI", "true")  # no progress bars in test output
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors: one thread is faster and deterministic across machines


@pytest.fixture(autouse=True)
def _log_handlers_write_to_this_tests_stderr() -> None:
    """Logging handlers built during an earlier test (Prefect's console handler) keep that test's captured stream,
    which pytest has closed since; a record logged now (distributed's shutdown messages) would print a "Logging
    error" traceback instead. Point such handlers at the current stderr."""
    import logging
    import sys

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for handler in (h for logger in loggers for h in logger.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # not setStream: it would flush the closed stream first
        console = getattr(handler, "console", None)  # Prefect's handler prints through a rich Console
        if console is not None and getattr(console.file, "closed", False):
            console.file = sys.stderr


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server for the whole session (starting one costs ~15 s here); never nest harnesses."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(home / "results")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def stage_context(
    root: Path, stage: str, cfg: Config | None = None, work: Path | None = None, **item: Any
) -> StageContext:
    """The real context of one registry stage instance: inputs published under `root`, outputs into `work`.

    Every test that calls a stage function directly builds its context here, so tests exercise the same path
    resolution (`ctx.input`, `ctx.output`, `ctx.metrics`, `ctx.plot`) as the runner.
    """
    from pipeline_lib.engine.config import Config
    from pipeline_lib.engine.context import StageContext
    from pipeline_lib.engine.stages import StageInstance, get_stage

    return StageContext(
        cfg=cfg or Config(), root=root, work=work or root / "work", inst=StageInstance(get_stage(stage), item)
    )


def copy_project(dest: Path, profile: str | None = "smoke") -> Path:
    """A fresh project folder with the repo's pipeline files and params (the smoke profile merged in)."""
    import yaml

    from pipeline_lib.engine.config import effective_params, load_config

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "profiles", dest / "profiles", dirs_exist_ok=True)
    for package in ("pipeline_lib", "tasks", "flows"):  # DVC tracks the stages' code as deps
        shutil.copytree(
            REPO / package, dest / package, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    params = effective_params(load_config(REPO, profile))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


@pytest.fixture
def smoke_project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@dataclass(frozen=True)
class SmokePipeline:
    """A smoke project after one pass over every stage, and what that pass did to each stage instance."""

    root: Path
    first_pass: dict[str, str]  # instance id -> ran / cached / republished


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory: pytest.TempPathFactory) -> SmokePipeline:
    """The whole pipeline run once per session, shared by the tests that read a finished project."""
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.engine.runner import run_stage
    from pipeline_lib.engine.stages import STAGES

    root = copy_project(tmp_path_factory.mktemp("smoke-pipeline") / "project")
    cfg = load_config(root)
    first_pass = {r.id: r.status for stage in STAGES for r in run_stage(root, stage.name, cfg)}
    return SmokePipeline(root, first_pass)
