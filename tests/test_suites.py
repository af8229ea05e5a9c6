"""Paper suites end to end on replicas of the real datasets' layouts: the SeMoBridge profile's 11 datasets (ImageNet
folders, FGVC-Aircraft lists, nine CoOp split files) through `bridgeflow run` and DVC, with a randomly initialised
real architecture. Wiring and caching are checked, never accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_project
from replicas import write_semobridge_datasets

from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.stages import upstream_closure
from pipeline_lib.engine.summary import reproduction_lines

pytestmark = pytest.mark.slow  # a Prefect run over 47 stage instances, then DVC

BIN = Path(sys.executable).parent
#: The suite at smoke size: a small real architecture without weights, one sample, a handful of steps.
SMOKE = ("backbone.model=ViT-S-32", "backbone.pretrained=null", "fewshot.shots=[1]", "fewshot.seeds=[1]",
         "fewshot.search.n_trials=3", "fewshot.training.steps=3", "fewshot.training.warmup_steps=1",
         "features.batch_size=16")


def sh(cwd: Path, *args: str) -> str:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "CI": "true", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def semobridge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("suite") / "project", profile=None)
    write_semobridge_datasets(root / "data")
    params = effective_params(load_config(REPO, "semobridge", SMOKE))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_semobridge_suite_runs_on_the_replicas_with_prefect_then_dvc(semobridge: Path, prefect_server: None) -> None:
    from flows.pipeline import pipeline_flow

    names = list(load_config(semobridge).datasets.classification)
    assert len(names) == 11 and "shapes" not in names  # the profile's datasets replace params.yaml's
    rows = pipeline_flow(root=str(semobridge), stages=["fewshot_report"])
    status = {r["stage"]: r["status"] for r in rows}
    expected = {f"{stage}@{name}{item}" for name in names
                for stage, item in (("features_fewshot", ""), ("support", "-1-1"), ("fewshot_bridge", ""),
                                    ("fewshot_run", "-1-1"))}
    assert expected | {"data", "backbone", "fewshot_report"} == set(status)
    assert all(s.startswith("ran") for s in status.values()), status
    metrics = json.loads((semobridge / "metrics/fewshot.json").read_text())["test_acc"]
    assert set(metrics) == set(names)
    fewshot = json.loads((semobridge / "artifacts/features/fewshot/imagenet/manifest.json").read_text())
    assert set(fewshot["summary"]["fewshot"]) >= {"test"} and "val" not in fewshot["summary"]["fewshot"]  # val = test
    assert "train" not in fewshot["summary"]["fewshot"]  # train_features: false
    dtd = json.loads((semobridge / "artifacts/features/support/dtd/k1-s1/manifest.json").read_text())
    assert dtd["summary"]["support"]["train"]["forwards"] == 2 * 11  # DTD's 1-shot recipe: 10 copies per image
    text = "\n".join(reproduction_lines(semobridge))
    assert "imagenet" in text and "fgvc_aircraft" in text  # produced (nothing matches a random-init backbone)

    # DVC takes the same graph: it records what the flow published (stage by stage in pipeline order, so each
    # stage's .gitignore entries exist before the folders that hold them are hashed as the next stage's deps), finds
    # nothing to do, and runs a stage of it itself
    for command in (("git", "init", "-q"), ("dvc", "init", "-q"), ("dvc", "repro", "check_params")):
        sh(semobridge, *command)
    for stage in upstream_closure(["fewshot_report"]):
        sh(semobridge, "dvc", "commit", "-f", stage.name)
    assert "Running stage" not in sh(semobridge, "dvc", "repro", "fewshot_report")
    out = sh(semobridge, "dvc", "repro", "-s", "-f", "fewshot_run@imagenet-1-1")
    # DVC removed its outputs first; the runner republishes them from the finished scratch copy
    assert "Running stage 'fewshot_run@imagenet-1-1'" in out and "republished" in out, out
    assert "changed" not in sh(semobridge, "dvc", "status", "fewshot_report")
