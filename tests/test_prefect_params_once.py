"""Under Prefect a flow run reads and validates the params once and fingerprints each stage instance once."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fake_stages import FAKE_REGISTRY

from pipeline_lib.engine import config, runner, stages


class Spy:
    """Counts params reads, validations and fingerprint computations (per instance) in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.validations = 0
        self.fingerprints: Counter[str] = Counter()
        load_params, validate_params, fingerprint = config.load_params, config.validate_params, runner.fingerprint

        def counting_load(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return load_params(*args, **kwargs)

        def counting_validate(*args: Any, **kwargs: Any) -> Any:
            self.validations += 1
            return validate_params(*args, **kwargs)

        def counting_fingerprint(inst: Any, *args: Any, **kwargs: Any) -> str:
            self.fingerprints[inst.id] += 1
            return fingerprint(inst, *args, **kwargs)

        monkeypatch.setattr(config, "load_params", counting_load)  # what every load_config reads the files with
        monkeypatch.setattr(config, "validate_params", counting_validate)
        monkeypatch.setattr(runner, "fingerprint", counting_fingerprint)

    def reset(self) -> None:
        self.reads = self.validations = 0
        self.fingerprints.clear()


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", FAKE_REGISTRY)


def test_one_params_read_and_one_fingerprint_per_instance_per_flow_run(
    smoke_project: Path, fake_registry: None, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline_flow

    spy = Spy(monkeypatch)
    rows = pipeline_flow(root=str(smoke_project), stages=["beta"], overrides=["data.seed=11"])
    assert [(r["stage"], r["status"]) for r in rows] == [("alpha", "ran"), ("beta", "ran")]
    assert (spy.reads, spy.validations) == (1, 1)
    assert spy.fingerprints == {"alpha": 1, "beta": 1}
    results = Path(rows[-1]["results"])  # other params than params.yaml's: the run's own results folder
    assert results.parent == smoke_project / ".bridgeflow" / "runs"
    assert (results / "artifacts/beta/double.txt").read_text() == "220"  # the overrides reached the task

    # the first run offered no cache key (nothing was published yet), so the second run's tasks reach the runner and
    # write cache records; from the third run on, Prefect's records stand in for the tasks
    for expected in ("cached", "cached (prefect)"):
        spy.reset()
        rows = pipeline_flow(root=str(smoke_project), stages=["beta"], overrides=["data.seed=11"])
        assert [r["status"] for r in rows] == [expected, expected]
        assert (spy.reads, spy.validations) == (1, 1)
        assert spy.fingerprints == {"alpha": 1, "beta": 1}

    spy.reset()  # outputs deleted behind Prefect's back: no cache key is offered, the runner recomputes
    for out in ("artifacts/alpha", "artifacts/beta"):
        for path in sorted((results / out).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (results / out).rmdir()
    rows = pipeline_flow(root=str(smoke_project), stages=["beta"], overrides=["data.seed=11"])
    assert [r["status"] for r in rows] == ["republished", "republished"]
    assert (spy.reads, spy.validations) == (1, 1)
    assert spy.fingerprints == {"alpha": 1, "beta": 1}

    # the tasks' persisted results and cache records are the small JSON summaries: no config, no tensors
    results = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    sizes = {p.name: p.stat().st_size for p in results.rglob("*") if p.is_file()}
    assert {"alpha-", "beta-"} <= {name[: name.index("-") + 1] for name in sizes if "-" in name}, sizes
    assert max(sizes.values()) < 16_000, sizes
