"""Sharing results through a DVC remote: a fresh clone pulls a teammate's stages and has nothing to recompute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dvc_prefect import FOUNDATION, IDS, init_repo, ran_stages, sh


def status_states(output: str) -> dict[str, str]:
    """`bridgeflow status --json` -> {instance id: state}."""
    return {row["stage"]: row["state"] for row in json.loads(output)}


@pytest.mark.slow
def test_fresh_clone_pulls_results_and_recomputes_nothing(tmp_path: Path) -> None:
    from conftest import copy_project

    origin = copy_project(tmp_path / "origin")
    init_repo(origin)
    out = sh(origin, "dvc", "repro", *FOUNDATION)
    assert ran_stages(out) == set(IDS)
    remote = tmp_path / "remote"
    remote.mkdir()
    sh(origin, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(origin, "git", "add", "-A")
    sh(origin, "git", "commit", "-qm", "foundation stages and the team remote")
    sh(origin, "dvc", "push")
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push stored nothing in the remote"

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "artifacts/backbone").exists()  # results come from the remote, not from git
    sh(clone, "dvc", "pull", *FOUNDATION)  # only these stages were pushed (a plain `dvc pull` wants every stage)
    assert (clone / "artifacts/backbone/manifest.json").is_file()

    out = sh(clone, "dvc", "repro", *FOUNDATION)
    assert "Running stage" not in out, out
    assert not (clone / ".bridgeflow/work").exists()  # no stage command ran, not even to find itself cached
    states = status_states(sh(clone, "bridgeflow", "status", "--json"))
    assert {stage: states.get(stage) for stage in IDS} == dict.fromkeys(IDS, "up to date"), states
    assert sh(clone, "git", "status", "--porcelain").strip() == ""  # dvc.lock and metrics unchanged
