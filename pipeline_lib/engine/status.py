"""What `bridgeflow status` reports: is each stage instance's published output the one current params and code give?

A stage is "stale" when its own fingerprint changed, and "stale: upstream X" when its own outputs still match but an
upstream instance is stale or missing: rerunning the upstream may change what this stage reads. Metrics and plot files
are checked too: the manifest records their digests at publish time, so results that another run (a profile, an
override) wrote over the published ones are reported instead of being read as this run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_lib.engine import stages
from pipeline_lib.engine.artifacts import is_published, read_manifest
from pipeline_lib.engine.config import Config, effective_params
from pipeline_lib.engine.errors import MissingUpstreamError
from pipeline_lib.engine.runner import instance_fingerprint, result_digests
from pipeline_lib.engine.stages import StageInstance, get_stage, instances

UP_TO_DATE = "up to date"


@dataclass(frozen=True)
class InstanceState:
    """One row of the status table."""

    id: str
    state: str  # up to date | stale | stale: upstream X | missing | waiting for upstream
    published_fingerprint: str | None
    foreign_results: tuple[str, ...] = ()  # metrics/plots files that differ from what this instance published

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.id,
            "state": self.state,
            "published_fingerprint": self.published_fingerprint,
            "foreign_results": list(self.foreign_results),
        }


def _own_state(root: Path, inst: StageInstance, cfg: Config, params: dict[str, Any]) -> str:
    try:
        fp = instance_fingerprint(root, inst, cfg, params)
    except MissingUpstreamError:
        return "waiting for upstream"
    if is_published(root, inst, fp):
        return UP_TO_DATE
    return "stale" if read_manifest(root, inst) else "missing"


def foreign_results(root: Path, inst: StageInstance, manifest: dict[str, Any]) -> tuple[str, ...]:
    """Result files whose bytes differ from the digests the instance's manifest recorded (none recorded: none)."""
    recorded: dict[str, str] = manifest.get("results") or {}
    current = result_digests(root, inst)
    return tuple(sorted(p for p, digest in recorded.items() if current.get(p) != digest))


def instance_states(root: Path, cfg: Config) -> list[InstanceState]:
    """Every instance of every stage, in pipeline order, with its state."""
    params = effective_params(cfg)
    states: dict[str, str] = {}
    rows = []
    for stage in stages.STAGES:  # read at call time: tests swap the registry
        for inst in instances(stage, params):
            state = _own_state(root, inst, cfg, params)
            if state == UP_TO_DATE:
                ups = [up.id for dep in stage.deps for up in instances(get_stage(dep), params)]
                behind = [u for u in ups if states.get(u) != UP_TO_DATE]
                if behind:
                    more = f" (+{len(behind) - 1} more)" if len(behind) > 1 else ""
                    state = f"stale: upstream {behind[0]}{more}"
            states[inst.id] = state
            manifest = read_manifest(root, inst) or {}
            foreign = foreign_results(root, inst, manifest) if manifest else ()
            rows.append(InstanceState(inst.id, state, manifest.get("fingerprint"), foreign))
    return rows
