"""Bad input fails early with a message naming the problem, and nothing is published as complete."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import copy_project
from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.engine.config import load_config
from pipeline_lib.engine.runner import run_stage


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("bad-input") / "project")
    cfg = load_config(root)
    run_stage(root, "data", cfg)
    run_stage(root, "backbone", cfg)
    return root


def bridgeflow(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--root", str(root)])
    return result.exit_code, " ".join(result.output.split())


def test_params_typo_is_named_and_nothing_runs(project: Path) -> None:
    code, out = bridgeflow(project, "stage", "features", "-S", "features.batchsize=4")
    assert code == 2 and "features.batchsize" in out and "no such key" in out
    assert not (project / "artifacts/features").exists()


def test_bad_param_value_names_key_value_and_rule(project: Path) -> None:
    code, out = bridgeflow(project, "stage", "features", "-S", "features.batch_size=0")
    assert code == 2 and "features.batch_size = 0" in out and "greater than" in out


def test_missing_dataset_folder(project: Path, tmp_path: Path) -> None:
    code, out = bridgeflow(project, "stage", "features_fewshot@shapes", "-S",
                           f"datasets.classification.shapes.root={tmp_path / 'nope'}")
    assert code == 2 and str(tmp_path / "nope") in out
    assert not (project / "artifacts/features").exists()


def test_corrupt_image_is_named(project: Path, tmp_path: Path) -> None:
    broken = tmp_path / "shapes"
    shutil.copytree(project / "artifacts/data/fewshot/shapes", broken)
    victim = min((broken / "images").rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated PNG
    code, out = bridgeflow(project, "stage", "features_fewshot@shapes", "-S",
                           f"datasets.classification.shapes.root={broken}")
    assert code == 2 and victim.name in out, out
    assert not (project / "artifacts/features").exists()


def test_unknown_backbone(project: Path) -> None:
    before = (project / "artifacts/backbone/manifest.json").read_text()
    code, out = bridgeflow(project, "stage", "backbone", "-S", "backbone.model=NotAModel-B-99")
    assert code == 2 and "NotAModel-B-99" in out
    assert (project / "artifacts/backbone/manifest.json").read_text() == before


def test_unknown_stage(project: Path) -> None:
    code, out = bridgeflow(project, "stage", "nonsense")
    assert code == 2 and "unknown stage 'nonsense'" in out
