"""The flow runs independent stage instances at once: each waits for exactly the instances its fingerprint reads, on a
local pool bounded by runtime.processes or on a Dask cluster, and publishes what a serial run publishes."""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from concurrent_stages import PARTNERS, REGISTRY, RENDEZVOUS, TIMINGS, InstallRegistry
from conftest import copy_project

from flows.graph import Grant, Job, Node, Slots, instance_graph, run_graph
from flows.pipeline import InstanceJobs, run_instances
from pipeline_lib.engine import stages
from pipeline_lib.engine.artifacts import MANIFEST, read_manifest
from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.events import read_events
from pipeline_lib.engine.runner import run_stage, upstream_fingerprints
from pipeline_lib.engine.stages import STAGES, StageInstance, instances, upstream_instances

LEAVES = ["leaf@1", "leaf@2"]  # the smoke profile's fewshot.seeds
ORDER = ["base", *LEAVES, "join"]


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", REGISTRY)


# ------------------------------------------------------------------------------------------------ wiring (fast)
def test_each_instance_waits_for_exactly_what_its_fingerprint_reads(smoke_project: Path) -> None:
    params = effective_params(load_config(smoke_project))
    nodes = instance_graph(["report"], params)
    assert [n.id for n in nodes] == [i.id for s in STAGES for i in instances(s, params)]  # pipeline order, all
    for node in nodes:  # every instance published: the runner reads exactly the upstream the node waits for
        (smoke_project / node.inst.manifest_dir).mkdir(parents=True, exist_ok=True)
        (smoke_project / node.inst.manifest_dir / MANIFEST).write_text(json.dumps({"fingerprint": node.id}))
    for node in nodes:  # with the folder a node reads of an upstream (`Stage.reads`)
        for up in upstream_instances(node.inst, params):
            if part := dict(node.inst.stage.reads).get(up.stage.name):
                (smoke_project / up.manifest_dir / node.inst.path(part)).mkdir(parents=True, exist_ok=True)
    for node in nodes:
        assert set(upstream_fingerprints(smoke_project, node.inst, params)) == set(node.upstream), node.id
        assert len(set(node.upstream)) == len(node.upstream), node.id
    upstream = {n.id: n.upstream for n in nodes}
    runs = [f"fewshot_run@shapes-{k}-{s}" for k in (1, 2) for s in (1, 2)]
    assert upstream["data"] == ()
    # its dataset's features, its seed's support views (it reads its shot count's folder) and its dataset's bridge
    assert upstream["fewshot_run@shapes-2-1"] == (
        "features_fewshot@shapes", "support@shapes-1", "fewshot_bridge@shapes")
    assert upstream["fewshot_report"] == ("fewshot_bridge@shapes", *runs)
    # runs beside the few-shot runs and the inversions
    assert upstream["czsl@shapes"] == ("data", "backbone", "features_czsl@shapes")
    assert upstream["oti@shapes"] == ("backbone", "features_fewshot@shapes")  # its own dataset's features
    assert upstream["ovi@shapes"] == ("backbone", "features_text@shapes")
    assert [n.id for n in instance_graph(["fewshot_bridge"], params)] == [
        "data", "backbone", "features_fewshot@shapes", "fewshot_bridge@shapes"]


def test_slots_share_the_process_budget() -> None:
    slots = Slots(2)
    first, second = slots.take(4), slots.take(3)
    assert (first, second) == (Grant(1, True), Grant(1, False))  # one lane in the flow process, one in a worker
    assert slots.take(2) is None  # both slots busy: the other two wait
    slots.give_back(first)
    assert slots.take(2) == Grant(1, True)
    assert Slots(4).take(1) == Grant(4, True)  # alone: the instance may use every process itself
    with pytest.raises(ValueError, match="at least one"):
        Slots(0)


@dataclass
class DoneFuture:
    """A finished task run as the flow's jobs see it."""

    value: Any
    name: str = "Completed"

    @property
    def state(self) -> DoneFuture:
        return self

    def wait(self) -> None:
        pass

    def result(self) -> Any:
        return self.value

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


class RecordingLanes:
    """Runs each stage task's function at once, in this process, and records what it was asked to wait for."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.wait_for: dict[str, list[Any]] = {}
        self.cfg_processes: dict[str, int] = {}

    def budget(self) -> Slots:
        return Slots(self.processes)

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: list[Any], grant: Grant) -> DoneFuture:
        inst_id = parameters["inst"].id
        self.wait_for[inst_id] = wait_for
        self.cfg_processes[inst_id] = parameters["cfg"].runtime.processes
        return DoneFuture(task.fn(**parameters))

    def shards(self, *args: Any) -> None:
        return None


def test_instances_start_when_their_upstream_is_published_and_wait_for_exactly_it(
    smoke_project: Path, tiny_registry: None
) -> None:
    cfg = load_config(smoke_project)
    nodes = instance_graph(["join"], effective_params(cfg))
    lanes = RecordingLanes(processes=2)
    jobs = InstanceJobs(smoke_project, smoke_project, cfg, lanes, log=_NullLog())
    finished: list[str] = []  # jobs that returned, in order
    started: dict[str, tuple[set[str], Grant]] = {}
    job = jobs.job

    def recording_job(node: Node, grant: Grant) -> Job[dict[str, Any]]:
        started[node.id] = (set(finished), grant)
        row = yield from job(node, grant)
        finished.append(node.id)
        return row

    jobs.job = recording_job  # type: ignore[method-assign]
    rows = run_instances(nodes, jobs)

    assert [r["stage"] for r in rows] == ORDER and {r["status"] for r in rows} == {"ran"}
    # both leaves started as soon as base returned, neither waiting for the other; join after both
    assert started["leaf@1"][0] == started["leaf@2"][0] == {"base"}
    assert started["join"][0] == {"base", *LEAVES}
    future_ids = {id(f): i for i, f in jobs.futures.items()}
    for node in nodes:  # Prefect's wait_for names exactly the upstream instances' task futures
        assert [future_ids[id(f)] for f in lanes.wait_for[node.id]] == list(node.upstream), node.id
    # the budget: base alone gets both processes; the leaves one each, one of them outside the flow process
    assert {i: g for i, (_, g) in started.items()} == {
        "base": Grant(2, True), "leaf@1": Grant(1, True), "leaf@2": Grant(1, False), "join": Grant(2, True)}
    assert lanes.cfg_processes == {"base": 2, "leaf@1": 1, "leaf@2": 1, "join": 2}
    assert (smoke_project / "artifacts/join/total.txt").read_text() == str(2 * (100 * cfg.data.seed) + 1 + 2)


def test_a_failed_instance_stops_new_starts_and_running_ones_finish() -> None:
    a, b, c = (StageInstance(s) for s in REGISTRY)  # stand-ins with distinct ids
    nodes = [Node(a, ()), Node(b, ()), Node(c, (a.id,))]
    ended: list[str] = []

    def job(node: Node, grant: Grant) -> Job[str]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_result(None)
        yield [future]
        if node.id == a.id:
            raise RuntimeError("stage failed")
        ended.append(node.id)
        return node.id

    with pytest.raises(RuntimeError, match="stage failed"):
        run_graph(nodes, job, Slots(2))
    assert ended == [b.id]  # b (started beside a) finished; c, downstream of the failure, never started


class _NullLog:
    def info(self, *args: Any) -> None:
        pass


# ------------------------------------------------------------------------------------------ whole runs (slow)
def _assert_same_results(got: Path, want: Path) -> None:
    """Same fingerprints, same content digests and byte-identical output files, instance by instance."""
    params = effective_params(load_config(want))
    for stage in REGISTRY:
        for inst in instances(stage, params):
            a, b = read_manifest(got, inst), read_manifest(want, inst)
            assert a and b and (a["fingerprint"], a["content"]) == (b["fingerprint"], b["content"]), inst.id
            files = sorted(p.relative_to(want) for p in (want / inst.manifest_dir).rglob("*")
                           if p.is_file() and p.name != MANIFEST)
            assert files, inst.id
            for rel in files:
                assert (got / rel).read_bytes() == (want / rel).read_bytes(), rel


def _serial_run(dest: Path) -> Path:
    root = copy_project(dest)
    cfg = load_config(root)
    for stage in REGISTRY:
        assert {r.status for r in run_stage(root, stage.name, cfg)} == {"ran"}
    return root


def _assert_leaves_overlapped(root: Path) -> None:
    timings = {i: json.loads((root / TIMINGS / f"{i}.json").read_text()) for i in LEAVES}
    assert all(t["partners"] == PARTNERS for t in timings.values()), timings
    (s1, e1), (s2, e2) = ((t["start"], t["end"]) for t in timings.values())
    assert max(s1, s2) < min(e1, e2), timings  # the two intervals intersect
    assert len({t["pid"] for t in timings.values()}) == 2, timings  # in two processes


def _assert_events(root: Path) -> None:
    events = [e for e in read_events(root) if e["id"] in ORDER]
    assert sorted(e["id"] for e in events) == sorted(ORDER) and {e["status"] for e in events} == {"ran"}


@contextmanager
def _cluster_with_gpu_workers() -> Iterator[str]:
    """A 2-worker process LocalCluster whose workers each advertise one GPU and run the tiny registry."""
    from distributed import Client, LocalCluster
    from prefect.settings import get_current_settings

    from flows.scaleout import _close_local_cluster

    env = {"PREFECT_API_URL": str(get_current_settings().api.url)}
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                           dashboard_address=None, env=env)
    try:
        with Client(cluster, set_as_default=False) as client:
            client.register_plugin(InstallRegistry())
        yield cluster.scheduler_address
    finally:
        _close_local_cluster(cluster)


@pytest.mark.slow
def test_independent_instances_overlap_on_a_dask_cluster_and_equal_a_serial_run(
    tmp_path: Path, tiny_registry: None, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline_flow

    root = copy_project(tmp_path / "concurrent")
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv(RENDEZVOUS, str(tmp_path / "rendezvous"))  # the worker processes inherit it
    with _cluster_with_gpu_workers() as address:
        rows = pipeline_flow(root=str(root), stages=["join"], overrides=[f"runtime.dask.address={address}"])
    monkeypatch.delenv(RENDEZVOUS)
    assert [r["stage"] for r in rows] == ORDER and {r["status"] for r in rows} == {"ran"}
    assert {r["results"] for r in rows} == {str(root)}  # runtime params only: the workspace
    _assert_leaves_overlapped(root)
    assert os.getpid() not in {json.loads((root / TIMINGS / f"{i}.json").read_text())["pid"] for i in LEAVES}
    _assert_events(root)
    _assert_same_results(root, _serial_run(tmp_path / "serial"))


@pytest.mark.slow
def test_independent_instances_overlap_in_the_local_pool_and_equal_a_serial_run(
    tmp_path: Path, tiny_registry: None, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime.processes=2 without Dask: one leaf in the flow process, the other in a pool worker process."""
    from flows.pipeline import pipeline_flow

    root = copy_project(tmp_path / "concurrent")
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv(RENDEZVOUS, str(tmp_path / "rendezvous"))
    rows = pipeline_flow(root=str(root), stages=["join"], overrides=["runtime.processes=2"])
    monkeypatch.delenv(RENDEZVOUS)
    assert [r["stage"] for r in rows] == ORDER and {r["status"] for r in rows} == {"ran"}
    _assert_leaves_overlapped(root)
    _assert_events(root)
    _assert_same_results(root, _serial_run(tmp_path / "serial"))


class _FakeDaskRunner:
    """The parts of a DaskTaskRunner DaskLanes uses: its client's worker list, and submit (recording annotations)."""

    def __init__(self, resources: list[dict[str, float]]) -> None:
        workers = {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}
        self.client = type("Client", (), {"scheduler_info": lambda _self: {"workers": workers}})()
        self.annotations: list[dict[str, Any]] = []

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: list[Any]) -> None:
        import dask

        self.annotations.append(dict(dask.get_annotations()))


@pytest.mark.parametrize(("resources", "expected"), [([{"GPU": 1}, {"GPU": 1}], {"resources": {"GPU": 1}}),
                                                      ([{}, {}], {})])
def test_dask_tasks_ask_for_one_gpu_where_workers_advertise_gpus(
    resources: list[dict[str, float]], expected: dict[str, Any]
) -> None:
    from flows.lanes import DaskLanes

    runner = _FakeDaskRunner(resources)
    DaskLanes(runner).submit(object(), {}, [], Grant(None, False))
    assert runner.annotations == [expected]
