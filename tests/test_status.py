"""`bridgeflow status` tells the truth: downstream of a stale stage is stale, and overwritten results are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_stages import ALPHA, BETA, FAKE_REGISTRY

from pipeline_lib.engine import stages
from pipeline_lib.engine.config import load_config
from pipeline_lib.engine.runner import run_instance
from pipeline_lib.engine.stages import StageInstance
from pipeline_lib.engine.status import instance_states


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", FAKE_REGISTRY)


def states(root: Path, *overrides: str) -> dict[str, str]:
    return {row.id: row.state for row in instance_states(root, load_config(root, overrides=overrides))}


def test_downstream_of_a_stale_stage_is_stale(smoke_project: Path) -> None:
    root = smoke_project
    assert states(root) == {"alpha": "missing", "beta": "waiting for upstream"}
    cfg = load_config(root)
    for stage in (ALPHA, BETA):
        run_instance(root, StageInstance(stage), cfg)
    assert states(root) == {"alpha": "up to date", "beta": "up to date"}
    # beta's own inputs are unchanged until alpha reruns, but alpha's params moved: beta is behind too
    assert states(root, "data.seed=7") == {"alpha": "stale", "beta": "stale: upstream alpha"}
    assert states(root, "features.batch_size=3") == {"alpha": "up to date", "beta": "stale"}


def test_results_overwritten_by_another_run_are_named(smoke_project: Path) -> None:
    root = smoke_project
    run_instance(root, StageInstance(ALPHA), load_config(root))
    (alpha,) = instance_states(root, load_config(root))[:1]
    assert alpha.state == "up to date" and alpha.foreign_results == ()
    (root / "metrics/alpha.json").write_text('{"value": -1}')  # e.g. a smoke run published over the real results
    (alpha,) = instance_states(root, load_config(root))[:1]
    assert alpha.foreign_results == ("metrics/alpha.json",)
