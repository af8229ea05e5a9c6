"""Process-level parallelism inside one stage: safe start method and thread budgets.

DVC runs one stage at a time and the small-tensor parts of a stage (a blend search, a small model's optimisation
steps) gain little from a second thread, so a stage splits independent parts over `runtime.processes` processes
instead of leaving cores idle.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch


def worker_start_method() -> str:
    """fork when it is safe, else forkserver/spawn.

    A process with other threads (a Prefect flow run: its API log and event workers) can fork a child while one of
    them holds a lock, and such children die; forkserver forks them from a clean server process instead.
    """
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


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


def _single_threaded() -> None:
    """Pool initializer: each worker process takes one core."""
    torch.set_num_threads(1)


def run_shards_in_processes(ctx: Any, plan: Callable[[Any, int], list], work: Callable[[Any, Any], dict],
                            processes: int) -> list[dict]:
    """Compute a sharded stage's pending shards (pipeline_lib.shards) on `processes` local worker processes.

    The stage function that follows finds every block done and only assembles, exactly as after a Dask run; shards
    go out in the planner's order (largest first), each worker single-threaded. Returns the workers' summaries.
    """
    shards = plan(ctx, 1)
    if len(shards) < 2:
        return []
    with ProcessPoolExecutor(min(processes, len(shards)), mp_context=process_context(),
                             initializer=_single_threaded) as pool:
        return list(pool.map(work, [ctx] * len(shards), shards))
