"""A stage's code is its function's import closure: editing a module makes exactly the stages that import it stale.

The fast tests check the static closure itself. The slow test edits modules in a copy of a finished smoke project and
asks both DVC (`dvc status`, from dvc.yaml's deps) and bridgeflow (`bridgeflow status`, from the fingerprints) which
stages are stale: a hand-kept code list that misses a module fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SmokePipeline

from pipeline_lib.engine.closure import code_paths, direct_imports, import_closure
from pipeline_lib.engine.stages import STAGES, get_stage

BIN = Path(sys.executable).parent
FEWSHOT = {"fewshot_bridge", "fewshot_run", "fewshot_report"}
FEATURES = {"features_fewshot", "support", "features_czsl"}  # the image-feature stages (sharded)

#: module edited -> the stages whose code it is (directly; downstream stages key on upstream content instead)
EXPECTED_STALE: dict[str, set[str]] = {
    "pipeline_lib/data/world.py": {"data"},
    "pipeline_lib/backbone/pretrain.py": {"backbone"},
    "pipeline_lib/features/extract.py": FEATURES | {"features_text"},
    "pipeline_lib/features/shards.py": FEATURES,  # runs only on Dask workers: named by the registry's shards
    "pipeline_lib/diagnose/gap.py": {"diagnose"},
    "pipeline_lib/fewshot/train.py": FEWSHOT,
    "pipeline_lib/optim/adamw.py": {"backbone"} | FEWSHOT,
    "pipeline_lib/inversion/oti.py": {"oti", "ovi"},  # one stage module serves both directions
    "pipeline_lib/czsl/vac.py": {"czsl"},
    "pipeline_lib/report/page.py": {"report"},
    "pipeline_lib/engine/sweep.py": set(),  # engine code no stage imports
}


def test_closure_follows_lazy_imports_and_parent_packages() -> None:
    closure = import_closure("pipeline_lib.backbone.stage")
    assert "pipeline_lib.backbone" in closure and "pipeline_lib" in closure  # parents run their __init__
    assert "pipeline_lib.optim.adamw" in closure  # imported by pretrain, two hops away
    # an import inside a function counts: the registry imports its error type only when a lookup fails
    assert "pipeline_lib.engine.errors" in direct_imports("pipeline_lib.engine.stages")


def test_wiring_is_not_code_registry_and_undeclared_param_sections_are_left_out() -> None:
    backbone, czsl, report = (set(code_paths(get_stage(n))) for n in ("backbone", "czsl", "report"))
    assert "pipeline_lib/engine/stages.py" not in backbone | czsl | report  # adding a stage reruns nothing
    assert "pipeline_lib/czsl/config.py" in czsl and "pipeline_lib/czsl/config.py" not in backbone
    assert "pipeline_lib/backbone/config.py" in backbone and "pipeline_lib/engine/config.py" in backbone
    assert not {p for p in report if p.endswith("/config.py") and p != "pipeline_lib/engine/config.py"}
    # a module a stage's own code imports still counts, whichever package it lives in
    assert "pipeline_lib/data/captions.py" in backbone
    # a stage that reads another's outputs imports only their file names: editing the method reruns just the method
    claims = set(code_paths(get_stage("claims")))
    assert "pipeline_lib/czsl/outputs.py" in claims and not claims & {m for m in EXPECTED_STALE if m.count("/") > 1}


def test_every_stage_lists_its_closure_as_dvc_deps() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        deps = set(dvc[stage.name]["deps"])
        missing = set(code_paths(stage)) - deps
        assert not missing, f"{stage.name}: {sorted(missing)}"
        assert f"{stage.func.partition(':')[0].replace('.', '/')}.py" in deps


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dvc_stale(root: Path) -> set[str]:
    return {name.split("@")[0] for name in json.loads(_run(root, "dvc", "status", "--json"))}


def _bridgeflow_stale(root: Path) -> set[str]:
    """Stages stale by their own fingerprint (downstream ones say "stale: upstream X", which DVC leaves to repro)."""
    rows = json.loads(_run(root, "bridgeflow", "status", "--json"))
    assert all(r["state"] == "up to date" or r["state"].startswith("stale") for r in rows), rows
    return {r["stage"].split("@")[0] for r in rows if r["state"] == "stale"}


@pytest.fixture(scope="module")
def recorded_project(smoke_pipeline: SmokePipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the finished smoke project, under Git and with every stage recorded in dvc.lock."""
    root = tmp_path_factory.mktemp("closure") / "project"
    shutil.copytree(smoke_pipeline.root, root, symlinks=True)
    for args in (("git", "init", "-q"), ("dvc", "init", "-q"),
                 ("bridgeflow", "check-params", "--out", "artifacts/params_check.txt"), ("dvc", "commit", "-f", "-q")):
        _run(root, *args)
    assert _dvc_stale(root) == set() and _bridgeflow_stale(root) == set()
    return root


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(EXPECTED_STALE))
def test_editing_a_module_makes_exactly_its_stages_stale(recorded_project: Path, module: str) -> None:
    path = recorded_project / module
    original = path.read_bytes()
    path.write_bytes(original + b"\n# an edit\n")
    try:
        assert _dvc_stale(recorded_project) == EXPECTED_STALE[module]
        assert _bridgeflow_stale(recorded_project) == EXPECTED_STALE[module]
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_a_hand_kept_list_that_misses_a_module_is_caught(recorded_project: Path) -> None:
    """The negative control: with a module dropped from a stage's deps, DVC misses the edit that fingerprints catch."""
    module, stage = "pipeline_lib/diagnose/gap.py", "diagnose"
    dvc_yaml = recorded_project / "dvc.yaml"
    rendered = dvc_yaml.read_text()
    document = yaml.safe_load(rendered)
    document["stages"][stage]["deps"].remove(module)  # what a drifted hand-kept list looks like
    dvc_yaml.write_text(yaml.safe_dump(document, sort_keys=False))
    path = recorded_project / module
    original = path.read_bytes()
    try:
        _run(recorded_project, "dvc", "commit", "-f", "-q", stage)
        path.write_bytes(original + b"\n# an edit\n")
        assert _dvc_stale(recorded_project) == set()  # DVC: "up to date", the stale result goes unnoticed...
        assert _bridgeflow_stale(recorded_project) == {stage}  # ...which the derived closure does not allow
    finally:
        path.write_bytes(original)
        dvc_yaml.write_text(rendered)
        _run(recorded_project, "dvc", "commit", "-f", "-q", stage)
