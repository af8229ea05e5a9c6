"""A run's plan: every stage instance it needs, with its work, estimated time and disk, and the totals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_lib.engine.config import Config, effective_params
from pipeline_lib.engine.stages import instances, stage_names, upstream_closure
from pipeline_lib.plan.estimate import PlanInputs, as_row, estimate
from pipeline_lib.plan.probe import Probe, architecture, probe


@dataclass(frozen=True)
class Plan:
    rows: list[dict[str, Any]]  # per instance: instance, work {kind: amount}, seconds (or None), disk_bytes, note
    probe: Probe | None

    def totals(self) -> dict[str, Any]:
        work: dict[str, int] = {}
        for row in self.rows:
            for kind, amount in row["work"].items():
                work[kind] = work.get(kind, 0) + amount
        timed = [row["seconds"] for row in self.rows if row["seconds"] is not None]
        return {"instances": len(self.rows), "work": work, "seconds": sum(timed) if timed else None,
                "disk_bytes": sum(row["disk_bytes"] for row in self.rows)}

    def as_dict(self) -> dict[str, Any]:
        measured = None if self.probe is None else {"device": self.probe.device, "batch": self.probe.batch,
                                                     "samples_per_s": self.probe.rates}
        return {"probe": measured, "instances": self.rows, "totals": self.totals()}


def build_plan(root: Path, cfg: Config, stages: list[str] | None = None, with_probe: bool = True) -> Plan:
    """Estimate every instance the named stages (default: all) need under `cfg`; nothing is computed or written."""
    params = effective_params(cfg)
    inputs = PlanInputs(root, cfg, architecture(cfg))
    measured = probe(cfg) if with_probe else None
    rates = measured.rates if measured else None
    rows = [as_row(inst, estimate(inputs, inst), rates)
            for stage in upstream_closure(stages or stage_names()) for inst in instances(stage, params)]
    return Plan(rows, measured)
