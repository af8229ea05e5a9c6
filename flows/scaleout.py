"""Scale-out of the sharded stages on a Dask cluster, as Prefect tasks on a DaskTaskRunner.

Which stages are sharded, and by which planner and worker functions, is the registry's `Stage.shards`
(`pipeline_lib.engine.stages`: today features and inversion).

When `runtime.dask` names a scheduler address or asks for a local cluster, the pipeline flow calls `run_shards` before
the stage task of a sharded stage. It plans the shards in the flow process (which creates the stage's zarr arrays in
its fingerprint-keyed scratch folder: one metadata writer), runs one task per shard in a sub-flow on a DaskTaskRunner
(each writes whole zarr shard files and a done flag per block after its data), and returns. The stage task that
follows runs the unchanged stage function, which finds every block done and only assembles, evaluates and publishes,
so results equal a single-process run. A crashed worker or an interrupted flow leaves finished blocks in the scratch
store; the next run resumes from them.

Workers must see the project root at the same path as the flow process (shared filesystem), and import this
project's code (the same checkout or installed package).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline_lib.engine.artifacts import is_complete_in_scratch, is_published, scratch_dir, stage_lock
from pipeline_lib.engine.config import Config, DaskConfig, effective_params, validate_params
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.runner import load_function
from pipeline_lib.engine.shards import Shard
from pipeline_lib.engine.stages import Shards, StageInstance, parse_instance_id


def _shards(inst: StageInstance) -> Shards:
    """The registry's shard functions of a stage instance (an error naming the stage when it has none)."""
    if inst.stage.shards is None:
        raise ValueError(f"stage {inst.stage.name!r} declares no shards in the registry (Stage.shards)")
    return inst.stage.shards


@contextmanager
def task_runner(dask: DaskConfig) -> Iterator[Any]:
    """A DaskTaskRunner on the scheduler at `dask.address`, else on a temporary LocalCluster that is shut down in order.

    Tasks on workers report to the Prefect API. Local worker processes get the flow's API URL (without it each would
    start an ephemeral server of its own on the shared PREFECT_HOME); remote workers need a server they can reach.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings
    from prefect_dask import DaskTaskRunner

    if dask.address is not None:
        if get_current_settings().api.url is None:
            raise RuntimeError(
                f"runtime.dask.address={dask.address!r}: workers need a Prefect server they can reach; start one "
                "(`prefect server start --host 0.0.0.0`) and set PREFECT_API_URL on the flow and worker machines"
            )
        yield DaskTaskRunner(address=dask.address)
        return
    from distributed import LocalCluster

    cluster: dict[str, Any] = {
        "n_workers": dask.local_workers,
        "threads_per_worker": dask.threads_per_worker,
        "processes": dask.processes,
        "dashboard_address": None,
    }
    if dask.processes:
        cluster["env"] = {"PREFECT_API_URL": str(get_client(sync_client=True).api_url)}
    local = LocalCluster(**cluster)
    try:
        yield DaskTaskRunner(address=local.scheduler_address)  # the flow's client connects and closes; we own the rest
    finally:
        _close_local_cluster(local)


def _close_local_cluster(cluster: Any) -> None:
    """Workers first, then the scheduler: each worker is retired (it deregisters and closes while the scheduler still
    answers), so no worker's last heartbeat or stream message meets a closed comm (a CommClosedError traceback)."""
    from distributed import Client

    try:
        with Client(cluster, set_as_default=False) as client:
            client.retire_workers(close_workers=True)
    finally:
        cluster.close()


def stage_context(root: Path, inst: StageInstance, cfg: Config, fp: str) -> StageContext:
    """The context the stage function gets in run_instance: same scratch folder, so shards fill the stage's store."""
    return StageContext(cfg=cfg, root=root, work=scratch_dir(root, inst, fp), inst=inst)


@task(cache_policy=NO_CACHE, persist_result=False)
def shard_task(root: str, instance_id: str, fingerprint: str, params: dict[str, Any], shard: dict[str, Any]) -> dict:
    """Compute one shard of a stage instance into its scratch store (resumable: finished blocks are skipped)."""
    cfg = validate_params(params, "the flow's params")
    inst = parse_instance_id(instance_id, params)
    ctx = stage_context(Path(root), inst, cfg, fingerprint)
    worker = load_function(_shards(inst).worker)
    return worker(ctx, Shard(shard["group"], tuple(shard["blocks"])))


@flow(name="bridgeflow-shards")
def shards_flow(
    root: str, instance_id: str, fingerprint: str, params: dict[str, Any], shards: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One task per shard on the flow's task runner; fails when any shard fails (the finished ones stay done)."""
    futures = [
        shard_task.with_options(task_run_name=f"{instance_id}:{Shard(s['group'], tuple(s['blocks'])).name}").submit(
            root, instance_id, fingerprint, params, s
        )
        for s in shards
    ]
    return [f.result() for f in futures]


def run_shards(root: Path, inst: StageInstance, fp: str, cfg: Config) -> dict[str, Any] | None:
    """Compute a sharded stage's blocks on Dask before its stage task runs; None when there is nothing to shard
    (Dask off, not a sharded stage, already published or complete in scratch)."""
    dask = cfg.runtime.dask
    if not dask.enabled or inst.stage.shards is None:
        return None
    t0 = time.perf_counter()
    with stage_lock(root, inst):  # the stage task takes the lock again after the shards
        work = scratch_dir(root, inst, fp)
        if is_published(root, inst, fp) or is_complete_in_scratch(work, fp):
            return None
        work.mkdir(parents=True, exist_ok=True)
        planner = load_function(_shards(inst).planner)
        shards = planner(stage_context(root, inst, cfg, fp), dask.shards_per_task)
        get_run_logger().info("%s: %d shards on Dask (%s)", inst.id, len(shards), dask.address or "local cluster")
        results: list[dict[str, Any]] = []
        if shards:
            with task_runner(dask) as runner:
                results = shards_flow.with_options(task_runner=runner, flow_run_name=f"{inst.id}-shards")(
                    str(root), inst.id, fp, effective_params(cfg), [s.as_dict() for s in shards]
                )
    return {
        "shards": len(shards),
        "blocks_written": sum(r["blocks_written"] for r in results),
        "seconds": round(time.perf_counter() - t0, 2),
        "results": results,
    }
