"""The stage-instance graph of a run, and the scheduler that starts each instance as soon as its upstream instances end.

An instance waits for exactly the instances its fingerprint reads: the instances of each stage in its `deps` that agree
with it on their shared matrix variables (`engine.stages.upstream_instances`). So `fewshot_run@shapes-4-2` waits for
`features_fewshot@shapes` and `fewshot_bridge@shapes` only, every dataset's few-shot runs, `oti`, `ovi` and `czsl` run
side by side, and `fewshot_report` starts when the last few-shot run ends.

The scheduler knows nothing about Prefect: an instance is a *job*, a generator that yields the futures it waits for
(shard tasks, then its stage task) and returns its summary row. It runs in the flow's thread, so everything a job does
between two yields (fingerprinting, planning shards) happens in the flow process, one job at a time, exactly when the
upstream outputs are published. A *budget* says how many instances may run at once and with how many processes each.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pipeline_lib.engine.params import ParamsError
from pipeline_lib.engine.stages import (
    StageInstance,
    bound_variables,
    get_stage,
    instances,
    upstream_closure,
    upstream_instances,
)

T = TypeVar("T")


class Waitable(Protocol):
    """What the scheduler needs of a future (Prefect's, or a plain concurrent one in tests)."""

    def add_done_callback(self, fn: Callable[[Any], Any], /) -> None: ...


#: An instance's work: yields lists of futures to wait for, returns its result once the last list is done.
Job = Generator[Sequence[Waitable], None, T]


@dataclass(frozen=True)
class Node:
    """One stage instance of a run and the ids of the instances it waits for (what its fingerprint reads)."""

    inst: StageInstance
    upstream: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.inst.id


def instance_graph(names: list[str], params: dict[str, Any]) -> list[Node]:
    """Every instance the named stages need, in pipeline (registry) order, each with its upstream instance ids.

    Raises ParamsError, before anything runs, when an instance reads a pinned dataset the params do not list (a
    suite without classification datasets run in full, where only its own stages can run)."""
    nodes: list[Node] = []
    unlisted: list[str] = []
    for stage in upstream_closure(names):
        for inst in instances(stage, params):
            nodes.append(Node(inst, tuple(up.id for up in upstream_instances(inst, params))))
            unlisted += unlisted_inputs(inst, params)
    if unlisted:
        raise ParamsError("these stages read datasets the params do not list:\n  " + "\n  ".join(unlisted)
                          + "\nlist them, or run only the stages that do not read them (`--stage NAME`)")
    return nodes


def unlisted_inputs(inst: StageInstance, params: dict[str, Any]) -> list[str]:
    """What an instance reads through a pin that params do not list: a dep with the pinned variable in its matrix but
    no instance of the pinned value (`diagnose` when `datasets.classification` is empty). Such an instance cannot
    run; a run names these before it starts anything. Optional deps are left out."""
    bound, keys = bound_variables(inst, params), dict(inst.stage.pins)
    problems = []
    for dep in (d for d in inst.stage.deps if d not in inst.stage.optional):
        up = get_stage(dep)
        pinned = [(var, key) for var, key in up.matrix if var in keys]
        if pinned and not any(all(u.item[var] == bound[var] for var, _ in pinned) for u in instances(up, params)):
            problems += [f"{inst.id} reads {dep}@{bound[var]} ({keys[var]} = {bound[var]!r}), which {key} does not "
                         "list" for var, key in pinned]
    return problems


@dataclass(frozen=True)
class Grant:
    """What a started instance may use."""

    processes: int | None  # runtime.processes for its stage function (None: as configured)
    in_flow: bool  # run its stage task in the flow process (the local pool's first lane), else on a worker


class Budget(Protocol):
    def take(self, ready: int) -> Grant | None:
        """A grant for the next of `ready` instances that could start now, or None to wait for a running one."""
        ...

    def give_back(self, grant: Grant) -> None: ...


class Slots:
    """A local run's budget: `total` process slots (`runtime.processes`); each running instance holds at least one.

    An instance gets an equal share of the free slots among the instances ready now (at least one) and may use that
    many processes itself (`runtime.processes` in its config), so the stage tasks and the pools they start (few-shot
    searches, OTI/OVI blocks) keep about `total` processes busy. One instance at a time runs in the flow process.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a local run needs at least one process slot, got {total}")
        self.free = total
        self.flow_busy = False

    def take(self, ready: int) -> Grant | None:
        if self.free == 0:
            return None
        share = max(1, self.free // max(1, ready))
        self.free -= share
        in_flow = not self.flow_busy
        self.flow_busy = self.flow_busy or in_flow
        return Grant(share, in_flow)

    def give_back(self, grant: Grant) -> None:
        self.free += grant.processes or 0
        if grant.in_flow:
            self.flow_busy = False


class Unbounded:
    """A cluster's budget: every ready instance starts at once; the cluster queues them for free workers."""

    def take(self, ready: int) -> Grant | None:
        return Grant(None, False)

    def give_back(self, grant: Grant) -> None:
        pass


def _putter(finished: queue.SimpleQueue[str], node_id: str) -> Callable[[Any], None]:
    """A done-callback that reports `node_id` to the scheduler's queue (from whatever thread completes the future)."""
    return lambda _future: finished.put(node_id)


def run_graph(nodes: Sequence[Node], start: Callable[[Node, Grant], Job[T]], budget: Budget) -> dict[str, T]:
    """Start each node's job once all its upstream jobs returned (in pipeline order, as the budget allows).

    Returns each job's result by node id. When a job raises, no further node starts; the running ones finish (their
    outputs are published) and the first error is raised.
    """
    known = {n.id for n in nodes}
    for node in nodes:
        missing = [u for u in node.upstream if u not in known]
        if missing:
            raise ValueError(f"{node.id} waits for {missing}, which are not part of this run")
    results: dict[str, T] = {}
    waiting = list(nodes)
    running: dict[str, tuple[Job[T], Grant]] = {}
    outstanding: dict[str, int] = {}
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()  # one entry per finished future, by node id
    errors: list[BaseException] = []

    def advance(node_id: str) -> None:
        """Resume a job until it waits for futures that are not all done yet, or returns, or fails."""
        job, grant = running[node_id]
        try:
            futures = next(job)
        except StopIteration as stop:
            results[node_id] = stop.value
        except Exception as err:  # raised once the running jobs have finished
            errors.append(err)
        else:
            if not futures:
                advance(node_id)
                return
            outstanding[node_id] = len(futures)
            for future in futures:  # a future that is already done calls back at once
                future.add_done_callback(_putter(finished, node_id))
            return
        del running[node_id]
        budget.give_back(grant)

    try:
        while waiting or running:
            if not errors:
                ready = [n for n in waiting if all(u in results for u in n.upstream)]
                for i, node in enumerate(ready):
                    grant = budget.take(len(ready) - i)
                    if grant is None:
                        break
                    waiting.remove(node)
                    running[node.id] = (start(node, grant), grant)
                    advance(node.id)
            if not running:
                if waiting and not errors:
                    raise RuntimeError(f"no instance can start: {[n.id for n in waiting]} wait for each other")
                break
            node_id = finished.get()
            outstanding[node_id] -= 1
            if outstanding[node_id] == 0:
                advance(node_id)
    finally:
        for job, _ in running.values():  # interrupted: release what suspended jobs hold (stage locks)
            job.close()
    if errors:
        raise errors[0]
    return results
