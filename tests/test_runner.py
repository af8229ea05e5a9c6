"""The runner's contract: fingerprints decide reuse, publishing is all-or-nothing, scratch copies survive deletion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_stages import ALPHA, BETA, FAKE_REGISTRY

from pipeline_lib.engine import stages
from pipeline_lib.engine.artifacts import read_manifest, stage_lock
from pipeline_lib.engine.config import load_config
from pipeline_lib.engine.errors import MissingUpstreamError, StageLockedError
from pipeline_lib.engine.runner import run_instance
from pipeline_lib.engine.stages import Stage, StageInstance


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", FAKE_REGISTRY)


def runs(root: Path, name: str) -> int:
    path = root / f"runs-{name}.txt"
    return int(path.read_text()) if path.exists() else 0


def test_second_run_is_cached_and_param_change_reruns_only_dependents(smoke_project: Path) -> None:
    root = smoke_project
    cfg = load_config(root)
    assert run_instance(root, StageInstance(ALPHA), cfg).status == "ran"
    assert run_instance(root, StageInstance(BETA), cfg).status == "ran"
    assert run_instance(root, StageInstance(ALPHA), cfg).status == "cached"
    assert run_instance(root, StageInstance(BETA), cfg).status == "cached"
    # a param only beta reads: alpha stays cached
    cfg2 = load_config(root, overrides=("features.batch_size=3",))
    assert run_instance(root, StageInstance(ALPHA), cfg2).status == "cached"
    assert run_instance(root, StageInstance(BETA), cfg2).status == "ran"
    # a param alpha reads: alpha reruns, and beta's fingerprint follows alpha's
    cfg3 = load_config(root, overrides=("data.seed=7",))
    assert run_instance(root, StageInstance(ALPHA), cfg3).status == "ran"
    assert run_instance(root, StageInstance(BETA), cfg3).status == "ran"
    assert (root / "artifacts/beta/double.txt").read_text() == "140"
    assert (runs(root, "alpha"), runs(root, "beta")) == (2, 3)


def test_deleted_outputs_are_republished_from_scratch_without_recomputing(smoke_project: Path) -> None:
    root = smoke_project
    cfg = load_config(root)
    first = run_instance(root, StageInstance(ALPHA), cfg)
    import shutil

    shutil.rmtree(root / "artifacts/alpha")
    (root / "metrics/alpha.json").unlink()  # what `dvc repro` does before running a stage
    again = run_instance(root, StageInstance(ALPHA), cfg)
    assert again.status == "republished" and again.fingerprint == first.fingerprint
    assert runs(root, "alpha") == 1
    assert read_manifest(root, StageInstance(ALPHA))["fingerprint"] == first.fingerprint


def test_crash_publishes_nothing_and_keeps_previous_outputs(
    smoke_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = smoke_project
    run_instance(root, StageInstance(ALPHA), load_config(root))
    before = read_manifest(root, StageInstance(ALPHA))
    monkeypatch.setenv("FAKE_STAGE_CRASH", "alpha")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_instance(root, StageInstance(ALPHA), load_config(root, overrides=("data.seed=5",)))
    assert read_manifest(root, StageInstance(ALPHA)) == before
    assert (root / "artifacts/alpha/value.txt").read_text() == str(load_config(root).data.seed * 10)
    monkeypatch.delenv("FAKE_STAGE_CRASH")
    assert run_instance(root, StageInstance(ALPHA), load_config(root, overrides=("data.seed=5",))).status == "ran"
    assert not any(p.name.startswith(".alpha") for p in (root / "artifacts").iterdir())


def test_missing_upstream_is_a_clear_error(smoke_project: Path) -> None:
    with pytest.raises(MissingUpstreamError, match="needs the outputs of alpha"):
        run_instance(smoke_project, StageInstance(BETA), load_config(smoke_project))


def test_concurrent_run_of_the_same_stage_fails_clearly(smoke_project: Path) -> None:
    root = smoke_project
    with stage_lock(root, StageInstance(ALPHA)), pytest.raises(StageLockedError, match="being run by another process"):
        run_instance(root, StageInstance(ALPHA), load_config(root))
    assert not (root / "artifacts/alpha").exists()
    assert os.listdir(root / ".bridgeflow/locks")


def test_upstream_rerun_with_identical_bytes_keeps_downstream(
    smoke_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downstream keys on the upstream's content: a param that changes nothing it writes reruns only the upstream."""
    noisy_alpha = Stage(
        "alpha",
        "fake_stages:run_alpha",
        "test stage",
        params=("data.seed", "data.image_size"),
        outs=("artifacts/alpha",),
        metrics=("metrics/alpha.json",),
    )
    monkeypatch.setattr(stages, "STAGES", (noisy_alpha, BETA))
    root = smoke_project
    cfg = load_config(root)
    run_instance(root, StageInstance(noisy_alpha), cfg)
    assert run_instance(root, StageInstance(BETA), cfg).status == "ran"
    cfg2 = load_config(root, overrides=("data.image_size=48",))
    assert run_instance(root, StageInstance(noisy_alpha), cfg2).status == "ran"
    assert run_instance(root, StageInstance(BETA), cfg2).status == "cached"
    assert (runs(root, "alpha"), runs(root, "beta")) == (2, 1)



def test_the_manifest_says_where_the_numbers_were_computed(smoke_project: Path) -> None:
    """Float results can differ between CPU models and thread counts: each manifest records both."""
    import torch  # a stage that computes has torch loaded; the fake one does not import it itself

    assert run_instance(smoke_project, StageInstance(ALPHA), load_config(smoke_project)).status == "ran"
    machine = read_manifest(smoke_project, StageInstance(ALPHA))["machine"]
    assert machine["cpu"] and machine["cpus"] == os.cpu_count()
    assert machine["torch_threads"] == torch.get_num_threads()
