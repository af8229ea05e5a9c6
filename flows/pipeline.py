"""The Prefect flow that runs the registry's stage instances as cached tasks (`bridgeflow run`, deployments).

Independent instances run at once (flows.graph): each one starts when the instances it reads are published, on the
lanes `runtime` asks for (flows.lanes: a local pool bounded by `runtime.processes`, or a Dask cluster).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.graph import Grant, Job, Node, instance_graph, run_graph
from flows.lanes import Lanes, lanes_for
from pipeline_lib.engine.config import Config, effective_params
from pipeline_lib.engine.events import record_event
from pipeline_lib.engine.preflight import preflight
from pipeline_lib.engine.results import results_root
from pipeline_lib.engine.runner import instance_fingerprint
from pipeline_lib.engine.stages import stage_names
from tasks.stage_tasks import stage_task, with_processes


@dataclass
class InstanceJobs:
    """Builds each instance's job for `run_graph`: fingerprint, shards (on Dask), stage task, summary row."""

    out: Path  # where outputs are published (the workspace or the run's results folder)
    project: Path  # the project folder (scratch copies, locks, shards' stores)
    cfg: Config
    lanes: Lanes
    log: Any  # the flow run's logger
    params: dict[str, Any] = field(init=False)
    futures: dict[str, Any] = field(init=False, default_factory=dict)  # each instance's stage task future, by id

    def __post_init__(self) -> None:
        self.params = effective_params(self.cfg)

    def job(self, node: Node, grant: Grant) -> Job[dict[str, Any]]:
        inst = node.inst
        # run_graph starts a job once its upstream jobs returned: their manifests (content digests) are published now
        fp = instance_fingerprint(self.out, inst, self.cfg, self.params)
        batch = self.lanes.shards(self.project, inst, fp, self.cfg)  # Dask only: the stage's blocks as shard tasks
        sharded = None
        if batch is not None:
            try:
                yield batch.futures
                sharded = batch.summary()
            finally:
                batch.close()  # the stage task takes the stage lock next
        cfg = self.cfg if grant.processes is None else with_processes(self.cfg, grant.processes)
        parameters = {"root": str(self.out), "inst": inst, "fingerprint": fp, "cfg": cfg, "project": str(self.project)}
        wait_for = [self.futures[up] for up in node.upstream] + (batch.futures if batch else [])
        future = self.lanes.submit(stage_task.with_options(task_run_name=inst.id), parameters, wait_for, grant)
        self.futures[inst.id] = future
        yield [future]
        future.wait()
        state = future.state
        result = future.result()
        cached = state.name == "Cached"
        status = "cached (prefect)" if cached else result["status"]
        if cached:  # the task body (and with it the runner's own log entry) was skipped
            record_event(self.out, inst.id, status, fp, 0.0)
        status += f" ({sharded['shards']} shards on Dask, {sharded['seconds']:.1f} s)" if sharded else ""
        self.log.info("%s: %s", inst.id, status)
        return {"stage": inst.id, "status": status, "seconds": result["seconds"], "fingerprint": fp,
                "results": str(self.out)}


def run_instances(nodes: list[Node], jobs: InstanceJobs) -> list[dict[str, Any]]:
    """Every node through `jobs` on its lanes' budget; the summary rows in pipeline order, however they finished."""
    rows = run_graph(nodes, jobs.job, jobs.lanes.budget())
    return [rows[node.id] for node in nodes]


@flow(name="bridgeflow-pipeline", log_prints=False)
def pipeline_flow(
    root: str = ".", stages: list[str] | None = None, profile: str | None = None, overrides: list[str] | None = None,
    publish: bool = False,
) -> list[dict[str, Any]]:
    """Run the named stages (default: all) and everything they need, reusing every published stage.

    params.yaml (+ profile + overrides) is read and validated once here; every stage task gets that config. A run
    whose params differ from params.yaml publishes into its own results folder (`engine.results`) unless `publish`;
    every row says where (`results`). Independent instances run at once; rows come in pipeline order.
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    cfg = preflight(root_path, profile, tuple(overrides or ()))  # a bad param fails the flow run with its message
    out = results_root(root_path, cfg, profile, publish)
    if out != root_path:
        logger.info("params differ from params.yaml: results go to %s (the workspace results are untouched)", out)
    nodes = instance_graph(stages or stage_names(), effective_params(cfg))
    with lanes_for(cfg) as lanes:
        rows = run_instances(nodes, InstanceJobs(out, root_path, cfg, lanes, logger))
    create_table_artifact(
        key="bridgeflow-run-summary", table=rows, description="Stages of this run: ran, reused or republished."
    )
    return rows
