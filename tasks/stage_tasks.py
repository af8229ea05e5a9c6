"""Prefect tasks: thin wrappers that run one registry stage instance through the shared runner.

The cache key is the stage instance's fingerprint (a content digest of params subset, upstream fingerprints and code),
never a path or a tensor. The policy only offers a key while the outputs with that fingerprint are actually published,
so a Prefect cache record can never stand in for outputs that DVC (or a user) has since deleted; in that case the task
runs and the runner republishes from the scratch copy or recomputes. Results are the small JSON summaries only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CachePolicy

from pipeline_lib.engine.artifacts import is_published
from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.runner import run_instance
from pipeline_lib.engine.stages import Stage, parse_instance_id
from pipeline_lib.engine.summary import headline_rows


@dataclass
class PublishedFingerprint(CachePolicy):
    """Cache key = stage instance + fingerprint, offered only while those outputs are published."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        root = Path(inputs["root"])
        cfg = load_config(root, inputs.get("profile"), tuple(inputs.get("overrides") or ()))
        inst = parse_instance_id(inputs["instance_id"], effective_params(cfg))
        if not is_published(root, inst, inputs["fingerprint"]):
            return None
        return f"{inst.id.replace('@', '_')}-{inputs['fingerprint']}"


def publish_metrics_artifacts(root: Path, stage: Stage) -> None:
    """A Prefect table artifact per metrics file of the stage, so the UI shows each run's headline numbers."""
    for rel in stage.metrics:
        path = root / rel
        if path.is_file():
            key = re.sub(r"[^a-z0-9-]+", "-", f"{stage.name}-{path.stem}-metrics".lower())
            rows = [{"metric": metric, "value": value} for metric, value in headline_rows(path)]
            create_table_artifact(key=key, table=rows, description=f"Headline metrics of {rel}")


@task(cache_policy=PublishedFingerprint(), result_serializer="json", persist_result=True, retries=0)
def stage_task(
    root: str, instance_id: str, fingerprint: str, profile: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Run (or reuse) one stage instance; returns its status and summary."""
    cfg = load_config(Path(root), profile, tuple(overrides or ()))
    inst = parse_instance_id(instance_id, effective_params(cfg))
    result = run_instance(Path(root), inst, cfg)
    if result.fingerprint != fingerprint:
        raise RuntimeError(
            f"stage {instance_id}: fingerprint changed while the flow ran ({fingerprint} -> {result.fingerprint}); "
            "were params or code edited mid-run?"
        )
    publish_metrics_artifacts(Path(root), inst.stage)
    return {"id": result.id, "status": result.status, "fingerprint": result.fingerprint,
            "seconds": round(result.seconds, 2), "summary": result.summary}
