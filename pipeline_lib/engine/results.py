"""Where a run publishes: the workspace (what `dvc.lock` describes) or the run's own results folder.

A run whose effective params equal params.yaml's publishes into the workspace (`artifacts/`, `metrics/`, `plots/`,
`reports/`), exactly as `dvc repro` does. Any other run (a profile, `-S` overrides, deployment overrides, a sweep
point) publishes into `.bridgeflow/runs/<name>/`, named after its profile and a digest of its effective params, so a
toy run can never overwrite the real results and `dvc status` stays clean. The runtime section never counts (it
never changes a result). Asking to publish into the workspace anyway is explicit (`bridgeflow run --publish`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pipeline_lib.engine.artifacts import SCRATCH_DIR
from pipeline_lib.engine.config import Config, effective_params
from pipeline_lib.engine.params import load_params

RUNS_DIR = f"{SCRATCH_DIR}/runs"


def result_params(cfg: Config) -> dict[str, Any]:
    """The params that can change a result (every section but runtime)."""
    return {k: v for k, v in effective_params(cfg).items() if k != "runtime"}


def run_name(cfg: Config, profile: str | None) -> str:
    """`<profile or 'run'>-<8 hex of the effective params>`: the same params always land in the same folder."""
    digest = hashlib.sha256(json.dumps(result_params(cfg), sort_keys=True).encode()).hexdigest()[:8]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", profile or "run")
    return f"{label}-{digest}"


def results_root(root: Path, cfg: Config, profile: str | None = None, publish: bool = False) -> Path:
    """The workspace when `cfg` is what params.yaml says (or `publish`), else the run's own folder under RUNS_DIR.

    params.yaml lists every key (`bridgeflow check-params` requires it), so its raw values are compared as they are.
    """
    workspace = {k: v for k, v in load_params(root).items() if k != "runtime"}
    if publish or result_params(cfg) == workspace:
        return root
    return root / RUNS_DIR / run_name(cfg, profile)
