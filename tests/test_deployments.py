"""Deployments and sweeps on a produced smoke project: a worker run reuses published stages; sweeps keep every point."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, copy_project

pytestmark = pytest.mark.slow  # a Prefect worker process, DVC and Prefect sweeps

BIN = Path(sys.executable).parent
POOL = "bridgeflow-process"
STAGES = ["backbone"]  # data + backbone: the cheapest part of the graph that trains something


def sh(cwd: Path, *args: str, timeout: float = 180) -> str:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    if PREFECT_API_URL.value():  # the session's test server (the harness sets it in-process only)
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed Git + DVC smoke project whose data and backbone stages are published and recorded in dvc.lock.

    The stages run in this process (no per-stage interpreter start) and `dvc commit` records them, as `dvc repro`
    would have.
    """
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.engine.runner import run_stage

    root = copy_project(tmp_path_factory.mktemp("deploy") / "project")
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    cfg = load_config(root)
    for name in ("data", "backbone"):
        run_stage(root, name, cfg)
    for args in (
        ("git", "init", "-q"),
        ("git", "config", "user.email", "tests@bridgeflow.invalid"),
        ("git", "config", "user.name", "bridgeflow tests"),
        ("dvc", "init", "-q"),
        ("dvc", "config", "core.analytics", "false"),
        ("bridgeflow", "check-params", "--out", "artifacts/params_check.txt"),  # what dvc.yaml's first stage writes
        ("dvc", "commit", "-fq", "--with-deps", *STAGES),
        ("git", "add", "-A"),
        ("git", "commit", "-qm", "smoke project with data and backbone"),
    ):
        sh(root, *args)
    return root


def _manifest_summary(results: Path, stage: str) -> dict[str, object]:
    """The summary a stage's published manifest records (bookkeeping such as the backbone's steps lives there)."""
    return json.loads((results / "artifacts" / stage / "manifest.json").read_text())["summary"]


def run_summary(flow_run_id: object) -> list[dict[str, object]]:
    """The `bridgeflow-run-summary` table artifact of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bridgeflow-run-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_worker_run_of_the_deployment_reuses_published_stages(produced: Path, prefect_server: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
    out = sh(produced, "prefect", "--no-prompt", "deploy", "--all")
    assert "bridgeflow-pipeline/full" in out and "bridgeflow-sweep/grid" in out, out
    flow_run = run_deployment(
        "bridgeflow-pipeline/full", parameters={"root": str(produced), "stages": STAGES}, timeout=0
    )
    sh(produced, "prefect", "worker", "start", "--pool", POOL, "--run-once", timeout=240)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_completed(), state
    rows = run_summary(flow_run.id)
    assert [r["stage"] for r in rows] == ["data", "backbone"]
    assert all(str(r["status"]).startswith("cached") for r in rows), rows


def test_a_deployment_run_with_bad_params_fails_with_the_reason(produced: Path, prefect_server: None) -> None:
    """The caller (UI, `prefect flow-run inspect`, run_deployment) reads why: the validation error is the message."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        "bridgeflow-pipeline/full",
        parameters={"root": str(produced), "stages": STAGES, "overrides": ["fewshot.atol=abc"]},
        timeout=0,
    )
    sh(produced, "prefect", "worker", "start", "--pool", POOL, "--run-once", timeout=240)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_failed(), state
    assert "fewshot.atol = 'abc'" in (state.message or ""), state.message


def test_prefect_sweep_keeps_every_point(produced: Path, prefect_server: None) -> None:
    from flows.sweep import sweep_flow

    result = sweep_flow(grid={"backbone.train.steps": [3, 4]}, root=str(produced), stages=STAGES)
    assert [row["backbone.train.steps"] for row in result["rows"]] == ["3", "4"]
    assert {"backbone:zero_shot.shape", "data:images_total"} <= set(result["columns"])
    points = sorted(p for p in Path(result["dir"]).iterdir() if p.is_dir())
    published = [json.loads((p / "point.json").read_text())["stages"][-1]["results"] for p in points]
    kept = [_manifest_summary(Path(folder), "backbone")["steps"] for folder in published]  # each point's own results
    assert kept == [3, 4]
    statuses = [[r["status"] for r in json.loads((p / "point.json").read_text())["stages"]] for p in points]
    # steps=3 differs from params.yaml: its own results folder, data linked from the workspace, backbone computed
    assert statuses[0] == ["republished", "ran"], statuses
    # steps=4 is params.yaml: the workspace's published stages, untouched by the first point
    assert all(s.startswith("cached") for s in statuses[1]), statuses
    assert _manifest_summary(produced, "backbone")["steps"] == 4
    assert (Path(result["dir"]) / "comparison.csv").is_file()


def test_dvc_sweep_keeps_every_experiment(produced: Path) -> None:
    from flows.dvc_sweep import dvc_sweep

    # bins is outside the data + backbone graph: each experiment restores both stages from DVC's cache
    points = [["backbone.diagnose.bins=30"], ["backbone.diagnose.bins=50"]]
    table = dvc_sweep(produced, points, STAGES, csv=True)
    rows = [row for row in csv.DictReader(io.StringIO(table)) if row["typ"].startswith("branch")]
    assert sorted(row["backbone.diagnose.bins"] for row in rows) == ["30", "50"]  # each experiment kept its params
    assert {"final_loss", "zero_shot.shape", "images_total"} <= set(rows[0])
    assert "fingerprint" not in rows[0] and "backbone.train.lr" not in rows[0]  # only the headline columns
    assert "bins: 40" in (produced / "params.yaml").read_text()  # the workspace is left alone
