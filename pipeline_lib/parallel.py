"""Process-level parallelism inside one stage: safe start method and thread budgets.

DVC runs one stage at a time and the small-tensor parts of a stage (a blend search, a tiny optimisation) use one
core each, so a stage splits independent parts over `runtime.processes` processes instead of leaving cores idle.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
