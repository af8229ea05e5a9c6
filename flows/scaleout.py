"""Scale-out of the sharded stages on a Dask cluster, as Prefect tasks on a DaskTaskRunner.

Which stages are sharded, and by which planner and worker functions, is the registry's `Stage.shards`
(`pipeline_lib.engine.stages`: today feature extraction, OTI and OVI).

When `runtime.dask` names a scheduler address or asks for a local cluster, the pipeline flow runs all its tasks on
that cluster (`flows.lanes`), and for a sharded stage calls `submit_shards` once the stage's upstream instances are
published. It plans the shards in the flow process (which creates the stage's zarr arrays in its fingerprint-keyed
scratch folder: one metadata writer) and submits one task per shard (each writes whole zarr shard files and a done
flag per block after its data); other instances keep running meanwhile. When every shard is done, the stage task runs
the unchanged stage function, which finds every block done and only assembles, evaluates and publishes, so results
equal a single-process run. A crashed worker or an interrupted flow leaves finished blocks in the scratch store; the
next run resumes from them.

Workers must see the project root at the same path as the flow process (shared filesystem), and import this
project's code (the same checkout or installed package).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from prefect import get_run_logger, task
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


@dataclass
class ShardBatch:
    """The shard tasks of one sharded instance, in flight; holds the instance's stage lock until closed."""

    inst: StageInstance
    futures: list[Any]
    started: float
    lock: ExitStack

    def summary(self) -> dict[str, Any]:
        """The shards' summaries once all are done; the first failed shard's error (the finished ones stay done)."""
        results = [future.result() for future in self.futures]
        return {
            "shards": len(self.futures),
            "blocks_written": sum(r["blocks_written"] for r in results),
            "seconds": round(time.perf_counter() - self.started, 2),
            "results": results,
        }

    def close(self) -> None:
        self.lock.close()


def submit_shards(
    root: Path, inst: StageInstance, fp: str, cfg: Config, submit: Callable[[Any, dict[str, Any]], Any]
) -> ShardBatch | None:
    """Plan a sharded instance's pending blocks here (under its stage lock) and `submit` one task per shard.

    None when there is nothing to shard: Dask off, not a sharded stage, already published or complete in scratch.
    The caller waits for the batch's futures, reads `summary()` and closes the batch (releasing the lock) before it
    submits the stage task, which takes the lock again and finds every block done.
    """
    dask = cfg.runtime.dask
    if not dask.enabled or inst.stage.shards is None:
        return None
    started = time.perf_counter()
    lock = ExitStack()
    lock.enter_context(stage_lock(root, inst))
    try:
        work = scratch_dir(root, inst, fp)
        if is_published(root, inst, fp) or is_complete_in_scratch(work, fp):
            lock.close()
            return None
        work.mkdir(parents=True, exist_ok=True)
        planner = load_function(_shards(inst).planner)
        shards = cast(list[Shard], planner(stage_context(root, inst, cfg, fp), dask.shards_per_task))
        get_run_logger().info("%s: %d shards on Dask (%s)", inst.id, len(shards), dask.address or "local cluster")
        params = effective_params(cfg)
        futures = [
            submit(shard_task.with_options(task_run_name=f"{inst.id}:{shard.name}"),
                   {"root": str(root), "instance_id": inst.id, "fingerprint": fp, "params": params,
                    "shard": shard.as_dict()})
            for shard in shards
        ]
    except BaseException:
        lock.close()
        raise
    return ShardBatch(inst, futures, started, lock)
