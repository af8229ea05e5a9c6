"""Process-level parallelism inside one stage: safe start method and thread budgets.

DVC runs one stage at a time and the small-tensor parts of a stage (a blend search, a small model's optimisation
steps) gain little from a second thread, so a stage splits independent parts over `runtime.processes` processes
instead of leaving cores idle.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch


def worker_start_method(preload: Sequence[str] = ()) -> str:
    """fork when it is safe, else forkserver (with `preload` imported once in the server) or spawn.

    A process with other threads (a Prefect flow run: its API log and event workers; zarr's I/O loop once a store
    was opened) can fork a child while one of them holds a lock, and such children die; forkserver forks them from
    a clean server process instead. Starting a child waits for the server's preload, so `preload` pays off where a
    stage starts children again and again (DataLoader workers per image group, which otherwise import torch each
    time); a one-off child imports what it needs itself, beside the parent's work. Only the call that starts the
    server sets its preload.
    """
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    if "forkserver" in methods:
        mp.set_forkserver_preload(["__main__", *preload])  # __main__ is multiprocessing's default preload
        return "forkserver"
    return "spawn"


def process_context() -> mp.context.BaseContext:
    """The multiprocessing context of worker_start_method()."""
    return mp.get_context(worker_start_method())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to n (at least 1), restoring the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def started_pool(workers: int, initializer: Callable[[], None] | None = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers start now, for a stage to open before it reads a zarr store.

    zarr's I/O threads make fork unsafe (worker_start_method), and a forkserver or spawned child imports torch again
    (~3 s on a 2-core machine) before its first task; a worker forked before the store is opened shares the
    parent's imports. ProcessPoolExecutor forks all its workers at the first submit, so a no-op starts them here.
    """
    with ProcessPoolExecutor(workers, mp_context=process_context(), initializer=initializer) as pool:
        pool.submit(int).result()
        yield pool


def _single_threaded() -> None:
    """Pool initializer: each worker process takes one core."""
    torch.set_num_threads(1)


def run_shards_in_processes(ctx: Any, plan: Callable[[Any, int], list], work: Callable[[Any, Any], dict],
                            processes: int) -> list[dict]:
    """Compute a sharded stage's pending shards (pipeline_lib.engine.shards) on `processes` local worker processes.

    The stage function that follows finds every block done and only assembles, exactly as after a Dask run; shards
    go out in the planner's order (largest first), each worker single-threaded. Returns the workers' summaries.
    """
    with started_pool(processes, _single_threaded) as pool:  # before the planner opens the store
        shards = plan(ctx, 1)
        if len(shards) < 2:
            return []
        return list(pool.map(work, [ctx] * len(shards), shards))
