"""The Prefect flow that chains the registry's stages as cached tasks (`bridgeflow run`, deployments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.scaleout import run_shards
from pipeline_lib.engine.config import effective_params
from pipeline_lib.engine.events import record_event
from pipeline_lib.engine.preflight import preflight
from pipeline_lib.engine.results import results_root
from pipeline_lib.engine.runner import instance_fingerprint
from pipeline_lib.engine.stages import STAGES, instances, upstream_closure
from tasks.stage_tasks import stage_task


@flow(name="bridgeflow-pipeline", log_prints=False)
def pipeline_flow(
    root: str = ".", stages: list[str] | None = None, profile: str | None = None, overrides: list[str] | None = None,
    publish: bool = False,
) -> list[dict[str, Any]]:
    """Run the named stages (default: all) and everything they need, reusing every published stage.

    params.yaml (+ profile + overrides) is read and validated once here; every stage task gets that config. A run
    whose params differ from params.yaml publishes into its own results folder (`engine.results`) unless `publish`;
    every row says where (`results`).
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    cfg = preflight(root_path, profile, tuple(overrides or ()))  # a bad param fails the flow run with its message
    out = results_root(root_path, cfg, profile, publish)
    if out != root_path:
        logger.info("params differ from params.yaml: results go to %s (the workspace results are untouched)", out)
    params = effective_params(cfg)
    rows: list[dict[str, Any]] = []
    for stage in upstream_closure(stages or [s.name for s in STAGES]):
        for inst in instances(stage, params):
            # after the upstream tasks returned: their manifests (content digests) are published now
            fp = instance_fingerprint(out, inst, cfg, params)
            sharded = run_shards(root_path, inst, fp, cfg)  # on Dask first when runtime.dask asks for it, else None
            state = stage_task.with_options(task_run_name=inst.id)(str(out), inst, fp, cfg, str(root_path),
                                                                   return_state=True)
            result = state.result()
            status = "cached (prefect)" if state.name == "Cached" else result["status"]
            if state.name == "Cached":  # the task body (and with it the runner's own log entry) was skipped
                record_event(out, inst.id, status, fp, 0.0)
            status += f" ({sharded['shards']} shards on Dask, {sharded['seconds']:.1f} s)" if sharded else ""
            rows.append({"stage": inst.id, "status": status, "seconds": result["seconds"], "fingerprint": fp,
                         "results": str(out)})
            logger.info("%s: %s", inst.id, status)
    create_table_artifact(
        key="bridgeflow-run-summary", table=rows, description="Stages of this run: ran, reused or republished."
    )
    return rows
