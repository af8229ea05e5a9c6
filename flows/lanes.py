"""Where the pipeline flow's tasks run: a local pool bounded by `runtime.processes`, or the Dask cluster of
`runtime.dask`.

Local (`runtime.dask` off): the flow process runs one stage task at a time, as a plain `bridgeflow run` always did,
and up to `runtime.processes - 1` more run in worker processes of a Prefect `ProcessPoolTaskRunner`, started on first
need (a chain of stages never starts one). Stage tasks run in processes, never in threads of one process: stage
functions seed torch's global RNG (CZSL, SeMoBridge-T) and set torch's thread count, so two of them in one process
would not reproduce a serial run.

Dask: every stage task and shard task goes to the cluster (`flows.scaleout.task_runner`). When the workers advertise
a `GPU` resource (`dask worker --resources GPU=1`), each task asks for one, so a worker with one GPU runs one task at
a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from flows.graph import Budget, Grant, Slots, Unbounded
from flows.scaleout import ShardBatch, submit_shards, task_runner
from pipeline_lib.engine import stages
from pipeline_lib.engine.config import Config
from pipeline_lib.engine.stages import Stage, StageInstance

GPU = "GPU"  # the Dask worker resource that marks one GPU


class Lanes(Protocol):
    """How the flow submits tasks; `grant` comes from `budget()` through the scheduler (flows.graph)."""

    def budget(self) -> Budget: ...

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: list[Any], grant: Grant) -> Any: ...

    def shards(self, root: Path, inst: StageInstance, fp: str, cfg: Config) -> ShardBatch | None: ...


def use_registry(registry: tuple[Stage, ...]) -> None:
    """Worker-process initializer: plan and run with the flow's registry (the same one, unless a test swapped it)."""
    stages.STAGES = registry


class LocalLanes:
    """The flow process (one stage task at a time) plus `processes - 1` worker processes, started on first need."""

    def __init__(self, processes: int, stack: ExitStack) -> None:
        self.processes = processes
        self._stack = stack
        self._pool: Any = None

    def budget(self) -> Budget:
        return Slots(self.processes)

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: list[Any], grant: Grant) -> Any:
        if grant.in_flow:
            return task.submit(**parameters, wait_for=wait_for)
        return self._worker_pool().submit(task, parameters, wait_for=wait_for)

    def shards(self, root: Path, inst: StageInstance, fp: str, cfg: Config) -> ShardBatch | None:
        return None  # a local run shards inside the stage function (runtime.processes), as `dvc repro` does

    def _worker_pool(self) -> Any:
        if self._pool is None:
            from prefect.task_runners import ProcessPoolTaskRunner

            pool = ProcessPoolTaskRunner(
                max_workers=self.processes - 1, initializer=use_registry, initargs=(stages.STAGES,)
            )
            self._pool = self._stack.enter_context(pool)  # waits for running tasks at exit
        return self._pool


class DaskLanes:
    """Every task on the cluster; one `GPU` resource per task when the workers advertise GPUs."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        workers = runner.client.scheduler_info()["workers"].values()
        self.resources = {GPU: 1} if any(w.get("resources", {}).get(GPU) for w in workers) else None

    def budget(self) -> Budget:
        return Unbounded()

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: list[Any], grant: Grant) -> Any:
        import dask

        with dask.annotate(resources=self.resources) if self.resources else nullcontext():
            return self.runner.submit(task, parameters, wait_for=wait_for)

    def shards(self, root: Path, inst: StageInstance, fp: str, cfg: Config) -> ShardBatch | None:
        shard_grant = Grant(None, False)
        return submit_shards(root, inst, fp, cfg, lambda task, params: self.submit(task, params, [], shard_grant))


@contextmanager
def lanes_for(cfg: Config) -> Iterator[Lanes]:
    """The lanes `cfg.runtime` asks for, shut down in order when the run ends (running tasks finish first)."""
    if cfg.runtime.dask.enabled:
        with task_runner(cfg.runtime.dask) as runner, runner:
            yield DaskLanes(runner)
    else:
        with ExitStack() as stack:
            yield LocalLanes(cfg.runtime.processes, stack)
