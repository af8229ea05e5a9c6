"""This run's measured rows, read from the full tables the stages publish (the metrics files keep only headlines).

- few-shot: the report's tables (`fewshot.outputs.REPORT_TABLES`: per dataset, mean / std / n per method and shots,
  the bridge, the CoOp name the dataset is published under);
- CZSL: each czsl instance's manifest summary (its dataset; means over seeds per row and world, the mean RMG, the seed
  count);
- retrieval: the inversion stage's `outputs.RETRIEVAL` (mAP of each method over the test queries).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline_lib.engine.artifacts import MANIFEST
from pipeline_lib.engine.stages import get_stage, path_pattern
from pipeline_lib.fewshot.outputs import REPORT_TABLES
from pipeline_lib.inversion.outputs import RETRIEVAL
from pipeline_lib.reproduction.compare import MeasuredRow
from pipeline_lib.reproduction.measured import measured_rows, run_identity


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run_params(root: Path) -> dict[str, Any]:
    """The params the published results were computed with (each manifest records its stage's sections), so a
    results folder without params.yaml, or a workspace whose params.yaml changed since, is named correctly."""
    params: dict[str, Any] = {}
    for name in ("backbone", "features_text", "inversion"):
        recorded = (_json(root / get_stage(name).manifest_dir / MANIFEST) or {}).get("params", {})
        for key, value in recorded.items():  # dotted keys: the parts of a section the stage declares
            *groups, leaf = key.split(".")
            node = params
            for group in groups:
                node = node.setdefault(group, {})
            node[leaf] = value
    return params


def published_rows(root: Path) -> list[MeasuredRow]:
    """Measured rows of the results published under `root`; stages not published give no rows."""
    folder = {name: root / get_stage(name).manifest_dir for name in ("fewshot_report", "inversion")}
    fewshot = _json(folder["fewshot_report"] / REPORT_TABLES)
    prompts = {name: str(t.get("prompts", name)) for name, t in (fewshot or {}).get("datasets", {}).items()}
    czsl_manifests = sorted(root.glob(path_pattern(get_stage("czsl").manifest_dir) + "/" + MANIFEST))
    return measured_rows(
        run_identity(run_params(root), prompts),
        fewshot=fewshot,
        czsl=[summary for path in czsl_manifests if (summary := (_json(path) or {}).get("summary"))],
        inversion=_json(folder["inversion"] / RETRIEVAL),
    )
