"""Both runners on the real stages at smoke size: `dvc repro` is incremental, and Prefect reuses DVC's work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # `dvc repro` and `dvc exp run` in subprocesses

BIN = Path(sys.executable).parent
FOUNDATION = ["data", "backbone", "features_fewshot", "diagnose"]  # stage names, as `dvc repro` takes them
IDS = ["data", "backbone", "features_fewshot@shapes", "diagnose"]  # their instances, as DVC and the flow name them
MANIFESTS = ["artifacts/data", "artifacts/backbone", "artifacts/features/fewshot/shapes", "artifacts/diagnose"]


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def init_repo(root: Path) -> None:
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "tests@bridgeflow.invalid")
    sh(root, "git", "config", "user.name", "bridgeflow tests")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "smoke project")


def ran_stages(output: str) -> set[str]:
    """Pipeline stages DVC ran (the params check, which runs whenever params.yaml changes, is left out)."""
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    return ran - {"check_params"}


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import copy_project

    root = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    init_repo(root)
    out = sh(root, "dvc", "repro", *FOUNDATION)
    assert ran_stages(out) == set(IDS)
    return root


def test_second_repro_runs_nothing(dvc_project: Path) -> None:
    out = sh(dvc_project, "dvc", "repro", *FOUNDATION)
    assert ran_stages(out) == set()


def test_param_change_reruns_only_that_stage_and_dependents(dvc_project: Path) -> None:
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["features"]["batch_size"] = params["features"]["batch_size"] + 1
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(dvc_project, "dvc", "repro", *FOUNDATION)
    assert ran_stages(out) == {"features_fewshot@shapes", "diagnose"}
    sh(dvc_project, "git", "add", "-A")
    sh(dvc_project, "git", "commit", "-qm", "batch size")


def _fails(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode != 0, f"{' '.join(args)} should have failed:\n{proc.stdout}\n{proc.stderr}"
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: p["backbone"]["diagnose"].update(binz=p["backbone"]["diagnose"].pop("bins")),
         "backbone.diagnose.binz: unknown key (did you mean backbone.diagnose.bins?)"),
        (lambda p: p["features"].update(batch_size="abc"), "features.batch_size = 'abc'"),
        (lambda p: p["datasets"]["classification"]["shapes"].update(root="no/such/folder"), "no such file or folder"),
        (lambda p: p["backbone"].update(model="ViT-B-61"), "did you mean ViT-B-16"),
    ],
)
def test_bad_params_stop_dvc_repro_before_any_output_is_removed(dvc_project: Path, edit, expected: str) -> None:
    path = dvc_project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = _fails(dvc_project, "dvc", "repro", *FOUNDATION)
    finally:
        path.write_text(original)
    assert expected in out and "Running stage 'data'" not in out, out
    for folder in MANIFESTS:
        assert (dvc_project / folder / "manifest.json").is_file(), folder


def test_bad_exp_run_value_leaves_every_output_in_place(dvc_project: Path) -> None:
    original = (dvc_project / "params.yaml").read_text()
    try:
        out = _fails(dvc_project, "dvc", "exp", "run", "-S", "features.views=abc", *FOUNDATION)
    finally:
        (dvc_project / "params.yaml").write_text(original)
    assert "features.views = 'abc'" in out, out
    for folder in MANIFESTS:
        assert (dvc_project / folder / "manifest.json").is_file(), folder
    assert ran_stages(sh(dvc_project, "dvc", "repro", *FOUNDATION)) == set()  # and nothing is stale afterwards


def test_prefect_flow_reuses_dvc_outputs(dvc_project: Path, prefect_server: None) -> None:
    from flows.pipeline import pipeline_flow

    rows = pipeline_flow(root=str(dvc_project), stages=["diagnose"])
    assert [r["stage"] for r in rows] == IDS
    assert all(r["status"] in ("cached", "cached (prefect)") for r in rows), rows
    # a Prefect run under new params computes; DVC then reuses that work from the scratch copy
    rows = pipeline_flow(root=str(dvc_project), stages=["diagnose"], overrides=["backbone.diagnose.bins=7"])
    assert {r["stage"]: r["status"] for r in rows}["diagnose"] == "ran"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {artifact.key for artifact in client.read_artifacts()}
    assert {"bridgeflow-run-summary", "diagnose-gap-metrics"} <= keys
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["backbone"]["diagnose"]["bins"] = 7
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(dvc_project, "dvc", "repro", "diagnose")
    assert "republished" in out, out
    manifest = json.loads((dvc_project / "artifacts/diagnose/manifest.json").read_text())
    assert manifest["params"]["backbone.diagnose"]["bins"] == 7


def test_override_run_publishes_apart_and_leaves_the_workspace_and_dvc_clean(dvc_project: Path,
                                                                             prefect_server: None) -> None:
    from flows.pipeline import pipeline_flow
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.engine.status import instance_states

    tracked = ["metrics/gap.json", "plots/gap_similarity.csv", "artifacts/diagnose/manifest.json"]
    before = {p: (dvc_project / p).read_bytes() for p in tracked}
    rows = pipeline_flow(root=str(dvc_project), stages=["diagnose"], overrides=["backbone.diagnose.bins=9"])
    results = Path(rows[-1]["results"])
    assert results.parent == dvc_project / ".bridgeflow" / "runs", results
    assert {r["stage"]: r["status"] for r in rows} == {"data": "republished", "backbone": "republished",
                                                       "features_fewshot@shapes": "republished", "diagnose": "ran"}
    assert json.loads((results / "artifacts/diagnose/manifest.json").read_text())["params"]["backbone.diagnose"][
        "bins"] == 9
    assert {p: (dvc_project / p).read_bytes() for p in tracked} == before  # the workspace results are untouched
    assert ran_stages(sh(dvc_project, "dvc", "repro", "--dry", *FOUNDATION)) == set()
    states = {r.id: (r.state, r.foreign_results) for r in instance_states(dvc_project, load_config(dvc_project))
              if r.id in IDS}
    assert set(states.values()) == {("up to date", ())}, states
    # the same params as params.yaml publish into the workspace (nothing to do: all published)
    rows = pipeline_flow(root=str(dvc_project), stages=["diagnose"])
    assert {r["results"] for r in rows} == {str(dvc_project)} and all(r["status"].startswith("cached") for r in rows)


def test_exp_run_with_set_param(dvc_project: Path) -> None:
    out = sh(dvc_project, "dvc", "exp", "run", "-S", "features.views=3", *FOUNDATION)
    assert ran_stages(out) == {"features_fewshot@shapes", "diagnose"}
    assert "Running stage 'backbone'" not in out


def test_exp_run_changing_the_shot_counts_reruns_only_the_new_runs(dvc_project: Path) -> None:
    """Each fewshot_run@D-K-S reads its own shot count's folder of its seed's support: adding a shot count reruns
    that seed's support (same bytes for the old folder), the new run and the report; dropping it again runs only the
    report. One seed keeps the instances few."""
    path = dvc_project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["fewshot"].update(shots=[1], seeds=[1])
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(dvc_project, "dvc", "repro", "fewshot_report")
    assert {"support@shapes-1", "fewshot_run@shapes-1-1", "fewshot_report"} <= ran_stages(out)
    out = sh(dvc_project, "dvc", "exp", "run", "-S", "fewshot.shots=[1,2]", "fewshot_report")
    assert ran_stages(out) == {"support@shapes-1", "fewshot_run@shapes-2-1", "fewshot_report"}
    out = sh(dvc_project, "dvc", "exp", "run", "-S", "fewshot.shots=[1]", "fewshot_report")
    assert ran_stages(out) == {"fewshot_report"}  # the 1-shot support comes back from DVC's run cache
    metrics = json.loads((dvc_project / "metrics/fewshot.json").read_text())
    assert set(metrics["test_acc"]["shapes"]["zero_shot"]) == {"1"}


def test_adding_a_dataset_runs_only_its_instances_and_removing_it_only_the_report(
    dvc_project: Path, prefect_server: None
) -> None:
    """A second classification dataset (the shapes images in another folder, as a user's CoOp dataset would be): DVC
    computes its feature, bridge and run instances and the report, nothing of shapes; the Prefect flow then reuses
    all of it; dropping the dataset again reruns only the report. One (shots, seed) keeps the instances few."""
    from flows.pipeline import pipeline_flow

    path = dvc_project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["fewshot"].update(shots=[1], seeds=[1])
    shapes_only = yaml.safe_dump(params, sort_keys=False)
    path.write_text(shapes_only)
    sh(dvc_project, "dvc", "repro", "fewshot_report")  # shapes up to date
    shutil.copytree(dvc_project / "artifacts/data/fewshot/shapes", dvc_project / "more_shapes")
    datasets = params["datasets"]["classification"]
    datasets["more"] = {**datasets["shapes"], "root": "more_shapes"}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(dvc_project, "dvc", "repro", "fewshot_report")
    added = {"features_fewshot@more", "support@more-1", "fewshot_bridge@more", "fewshot_run@more-1-1"}
    assert ran_stages(out) == {*added, "fewshot_report"}, out
    metrics = json.loads((dvc_project / "metrics/fewshot.json").read_text())
    assert metrics["test_acc"]["more"] == metrics["test_acc"]["shapes"]  # same images, same numbers
    rows = pipeline_flow(root=str(dvc_project), stages=["fewshot_report"])
    assert {r["stage"] for r in rows} >= added and all(r["status"].startswith("cached") for r in rows), rows
    path.write_text(shapes_only)
    assert ran_stages(sh(dvc_project, "dvc", "repro", "fewshot_report")) == {"fewshot_report"}
    assert set(json.loads((dvc_project / "metrics/fewshot.json").read_text())["test_acc"]) == {"shapes"}
