"""Prefect tasks: thin wrappers that run one registry stage instance through the shared runner.

The flow loads and validates the params once per run and fingerprints each stage instance once, right before its task
(after the upstream tasks have published), and hands the task the validated config, the instance and that fingerprint.
The cache key is the stage instance's fingerprint (a content digest of params subset, upstream content digests and
code), never a path, a config object or a tensor. The policy only offers a key while the outputs with that fingerprint
are actually published, so a Prefect cache record can never stand in for outputs that DVC (or a user) has since
deleted; in that case the task runs and the runner republishes from the scratch copy or recomputes. Results are the
small JSON summaries only.

Stage tasks of one run may run at once (flows.graph): in worker processes, on Dask workers, or, with thread workers
(`runtime.dask.processes: false`, `threads_per_worker > 1`), in threads of one process. Stage functions share
process-wide state (torch's global RNG, which CZSL and SeMoBridge-T seed; torch's thread count), so a process runs one
stage function at a time; shard tasks, written for threads, are not held back.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CachePolicy

from pipeline_lib.engine.artifacts import is_published
from pipeline_lib.engine.config import Config
from pipeline_lib.engine.runner import run_instance
from pipeline_lib.engine.stages import Stage, StageInstance
from pipeline_lib.engine.summary import headline_rows

log = logging.getLogger(__name__)

_STAGE_RUNNING = threading.Lock()


@contextmanager
def one_stage_per_process() -> Iterator[None]:
    """Hold the process's stage lock while a stage function runs (see the module docstring).

    A function, not the lock itself, is what the task refers to: the task's code travels by value to worker
    processes (cloudpickle), and a lock cannot be pickled.
    """
    with _STAGE_RUNNING:
        yield


@dataclass
class PublishedFingerprint(CachePolicy):
    """Cache key = stage instance + fingerprint, offered only while those outputs are published.

    Only the `fingerprint` argument is hashed into the key (it already covers params, upstream and code). Every other
    task argument must be listed in `exclude`: the config and instance objects are not hashable by Prefect, and the
    root only says where to look for the published outputs. A new argument that is neither fails loudly instead of
    silently not being part of the key.
    """

    key_input: str = "fingerprint"
    exclude: tuple[str, ...] = ("root", "inst", "cfg", "project")

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        unknown = set(inputs) - {self.key_input, *self.exclude}
        if unknown:
            raise ValueError(f"task arguments {sorted(unknown)} are neither the cache key nor excluded from it")
        inst: StageInstance = inputs["inst"]
        fp = inputs[self.key_input]
        if not is_published(Path(inputs["root"]), inst, fp):
            return None
        return f"{inst.id.replace('@', '_')}-{fp}"


def with_processes(cfg: Config, processes: int) -> Config:
    """`cfg` with `runtime.processes` set: runtime never enters a fingerprint or a result, so only the speed changes."""
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"processes": processes})})


def fit_to_process(cfg: Config) -> Config:
    """One process for the stage function inside a daemonic process (a Dask nanny's worker, by default), which cannot
    start the process pools a stage would use for `runtime.processes > 1`."""
    if cfg.runtime.processes > 1 and mp.current_process().daemon:
        log.info("daemonic worker process: runtime.processes=%d ignored, the stage runs in this process",
                 cfg.runtime.processes)
        return with_processes(cfg, 1)
    return cfg


def publish_metrics_artifacts(root: Path, stage: Stage) -> None:
    """A Prefect table artifact per metrics file of the stage, so the UI shows each run's headline numbers."""
    for rel in stage.metrics:
        path = root / rel
        if path.is_file():
            key = re.sub(r"[^a-z0-9-]+", "-", f"{stage.name}-{path.stem}-metrics".lower())
            rows = [{"metric": metric, "value": value} for metric, value in headline_rows(path)]
            create_table_artifact(key=key, table=rows, description=f"Headline metrics of {rel}")


@task(cache_policy=PublishedFingerprint(), result_serializer="json", persist_result=True, retries=0)
def stage_task(root: str, inst: StageInstance, fingerprint: str, cfg: Config,
               project: str | None = None) -> dict[str, Any]:
    """Run (or reuse) one stage instance with the flow's validated config and fingerprint; its status and summary.

    `root` is where the outputs are published (the workspace or the run's results folder), `project` the project
    folder (scratch copies, locks; default `root`).
    """
    with one_stage_per_process():
        result = run_instance(Path(root), inst, fit_to_process(cfg), fp=fingerprint,
                              project=Path(project) if project else None)
        publish_metrics_artifacts(Path(root), inst.stage)
    return {"id": result.id, "status": result.status, "fingerprint": result.fingerprint,
            "seconds": round(result.seconds, 2), "summary": result.summary}
