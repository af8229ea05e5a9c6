"""This run's measured rows, read from the full tables the stages publish (the metrics files keep only headlines).

- few-shot: the report's tables (`fewshot.outputs.REPORT_TABLES`: per dataset, mean / std / n per method and shots,
  the bridge, the CoOp name the dataset is published under);
- CZSL: each czsl instance's manifest summary (its dataset; means over seeds per row and world, the mean RMG, the seed
  count);
- retrieval: each oti / ovi instance's `outputs.RETRIEVAL` (mAP of each method over the test queries).
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
from pipeline_lib.reproduction.measured import DEFAULT_TEXT_DATASET, measured_rows, run_identity
from pipeline_lib.reproduction.published import dataset_id


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run_params(root: Path) -> dict[str, Any]:
    """The params the published results were computed with (the backbone stage's manifest records its keys), so a
    results folder without params.yaml, or a workspace whose params.yaml changed since, is named correctly."""
    params: dict[str, Any] = {}
    recorded = (_json(root / get_stage("backbone").manifest_dir / MANIFEST) or {}).get("params", {})
    for key, value in recorded.items():  # dotted keys: the parts of a section the stage declares
        *groups, leaf = key.split(".")
        node = params
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return params


def _manifests(root: Path, stage: str) -> list[tuple[Path, dict[str, Any]]]:
    """(output folder, manifest) of a matrix stage's published instances, in name order."""
    paths = sorted(root.glob(path_pattern(get_stage(stage).manifest_dir) + "/" + MANIFEST))
    return [(path.parent, doc) for path in paths if (doc := _json(path))]


def _retrieval(root: Path, prompts: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(dataset id, retrieval table) of every published OTI and OVI instance: an image dataset by its CoOp name, a
    text dataset by its entry's name (the data stage's captions when its path is null)."""
    found = []
    for stage, key, lists in (("oti", "image_dataset", "image_retrieval"), ("ovi", "text_dataset", "text_retrieval")):
        for folder, manifest in _manifests(root, stage):
            name, table = str(manifest.get("item", {}).get(key, "")), _json(folder / RETRIEVAL)
            if table is None:
                continue
            if stage == "oti":
                found.append((dataset_id(prompts.get(name, name)), table))
            else:
                entry = manifest.get("params", {}).get(f"datasets.{lists}.{name}") or {}
                found.append((dataset_id(name) if entry.get("path") else DEFAULT_TEXT_DATASET, table))
    return found


def published_rows(root: Path) -> list[MeasuredRow]:
    """Measured rows of the results published under `root`; stages not published give no rows."""
    fewshot = _json(root / get_stage("fewshot_report").manifest_dir / REPORT_TABLES)
    prompts = {name: str(t.get("prompts", name)) for name, t in (fewshot or {}).get("datasets", {}).items()}
    return measured_rows(
        run_identity(run_params(root)),
        fewshot=fewshot,
        czsl=[summary for _, manifest in _manifests(root, "czsl") if (summary := manifest.get("summary"))],
        retrieval=_retrieval(root, prompts),
    )
