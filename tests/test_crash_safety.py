"""Crash safety with real processes, and damaged or inconsistent inputs (DESIGN.md section 5).

Stages run as their own `bridgeflow stage` processes on copies of one produced smoke project. `paused_cli.py` holds a
process at a chosen point (after the first extraction block, between two OTI blocks, inside SeMoBridge-T training);
the test checks the progress on disk, then SIGKILLs the process group. Whatever was published stays complete, the
rerun ends where an uninterrupted run ends, and concurrent runs of one stage wait or fail with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import copy_project
from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.engine.artifacts import is_published, publish, read_manifest, scratch_dir
from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.runner import run_instance, run_stage
from pipeline_lib.engine.stages import StageInstance, parse_instance_id
from pipeline_lib.engine.store import DONE

pytestmark = pytest.mark.slow  # stages killed with SIGKILL in subprocesses, then resumed

BRIDGEFLOW = Path(sys.executable).with_name("bridgeflow")  # the console script of this environment
PAUSED_CLI = Path(__file__).with_name("paused_cli.py")
FEWSHOT_RUN = "fewshot_run@shapes-1-1"
OTI = "oti@shapes"
CZSL_FEATURES = "features_czsl@shapes"
STORE = "artifacts/features/fewshot/shapes/fewshot.zarr"


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage the tests touch, published once by uninterrupted runs: the reference each rerun must reproduce.

    OTI runs in blocks of 8 of the 32 smoke queries, so a kill can fall between two finished blocks.
    """
    root = copy_project(tmp_path_factory.mktemp("crash") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["inversion"]["oti"]["batch_size"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_config(root)
    for name in ("data", "backbone", "features_fewshot", "features_czsl", "features_text", "fewshot_bridge", "oti"):
        run_stage(root, name, cfg)
    run_instance(root, instance(root, "support@shapes-1"), cfg)
    run_instance(root, instance(root, FEWSHOT_RUN), cfg)
    return root


@pytest.fixture
def project(produced: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(produced, tmp_path / "project"))


def instance(root: Path, stage_id: str) -> StageInstance:
    return parse_instance_id(stage_id, effective_params(load_config(root)))


def unpublish(root: Path, stage_id: str) -> None:
    """Remove an instance's published outputs and scratch copies, as if it had never run."""
    inst = instance(root, stage_id)
    for out in inst.outputs():
        path = root / out
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    shutil.rmtree(root / ".bridgeflow/work" / inst.id.replace("@", "_"), ignore_errors=True)


def leftovers(root: Path) -> list[Path]:
    """Half-swapped outputs (`.<name>.incoming-<pid>` / `.outgoing-<pid>`) that a kill during publishing would leave."""
    return [p for d in ("artifacts", "metrics", "plots") if (root / d).exists() for kind in ("incoming", "outgoing")
            for p in (root / d).rglob(f".*.{kind}-*")]


def assert_not_published(root: Path, stage_id: str) -> None:
    inst = instance(root, stage_id)
    assert not [out for out in inst.outputs() if (root / out).exists()]
    assert not list((root / ".bridgeflow/work" / inst.id.replace("@", "_")).glob("*/complete.json"))
    assert not leftovers(root)


STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    """Kill whatever a failed test left running (a paused stage would otherwise wait out BF_PAUSE_MAX)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(root: Path, stage_id: str, *args: str, log: Path, pause: str | None = None,
          marker: Path | None = None, release: Path | None = None) -> subprocess.Popen[bytes]:
    """`bridgeflow stage` in its own process group (so SIGKILL reaches its data-loader workers too)."""
    env = dict(os.environ)
    if pause:
        cmd = [sys.executable, str(PAUSED_CLI)]
        env.update(BF_PAUSE_AT=pause, BF_PAUSE_MARKER=str(marker))
        if release:
            env["BF_PAUSE_RELEASE"] = str(release)
    else:
        cmd = [str(BRIDGEFLOW)] if BRIDGEFLOW.exists() else [sys.executable, "-m", "flows.cli"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "stage", stage_id, "--root", str(root), *args], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(proc)
    return proc


def wait_until(done: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"the stage process exited ({proc.returncode}) before the awaited point:\n{log.read_text()}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"the awaited point was not reached in {timeout} s:\n{log.read_text()}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> str:
    code = proc.wait(timeout=timeout)
    text = log.read_text()
    assert code == 0, text
    return text


def run_to_end(root: Path, stage_id: str, *args: str, log: Path) -> str:
    return finish(start(root, stage_id, *args, log=log), log)


def cli(root: Path, *args: str) -> tuple[int, str]:
    """An in-process `bridgeflow` call (user errors print one message, no traceback); output on one line."""
    result = CliRunner().invoke(app, [*args, "--root", str(root)])
    return result.exit_code, " ".join(result.output.split())


def without_timings(value: Any) -> Any:
    """A results record minus its wall-clock fields (the only thing two runs may disagree on)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("seconds")}
    return value


def assert_same_fewshot_run(root: Path, reference: Path) -> None:
    rel = instance(root, FEWSHOT_RUN).manifest_dir
    got, want = root / rel, reference / rel
    assert without_timings(json.loads((got / "results.json").read_text())) == without_timings(
        json.loads((want / "results.json").read_text()))
    for name in ("curves.csv", "bias_norms.csv", "search.csv"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    weights, expected = torch.load(got / "semobridge_t.pt"), torch.load(want / "semobridge_t.pt")
    for key, value in expected.items():
        assert torch.equal(weights[key], value) if isinstance(value, torch.Tensor) else weights[key] == value, key


def store_contents(root: Path) -> dict[str, Any]:
    """Every array and store attribute of the published feature stores, minus the provenance's absolute data path
    (which differs between two project folders)."""
    found: dict[str, Any] = {}
    for store in sorted((root / "artifacts/features").rglob("*.zarr")):
        group = zarr.open_group(str(store), mode="r")
        attrs = dict(group.attrs)
        attrs.get("provenance", {}).pop("source", None)
        label = store.relative_to(root).as_posix()
        found[label] = attrs
        for name, member in group.members(max_depth=None):
            if isinstance(member, zarr.Array):
                found[f"{label}/{name}"] = np.asarray(member[...])
    return found


# ------------------------------------------------------------------------------------------------- SIGKILL + rerun


def test_sigkill_during_extraction_resumes_to_the_uninterrupted_store(produced: Path, project: Path,
                                                                       tmp_path: Path) -> None:
    unpublish(project, CZSL_FEATURES)
    marker, log = tmp_path / "paused", tmp_path / "killed.log"
    proc = start(project, CZSL_FEATURES, log=log, pause="features", marker=marker)
    wait_until(marker.exists, proc, log)
    work = project / ".bridgeflow/work/features_czsl_shapes"
    assert list(work.glob("*/artifacts/features/czsl/shapes/*.zarr/*/_done/c/*"))
    kill(proc)
    assert_not_published(project, CZSL_FEATURES)

    out = run_to_end(project, CZSL_FEATURES, log=tmp_path / "rerun.log")
    assert f"{CZSL_FEATURES}: ran" in out
    manifest = read_manifest(project, instance(project, CZSL_FEATURES))
    assert manifest["summary"]["blocks_skipped"] >= 1  # it continued from the killed run's finished blocks
    got, want = store_contents(project), store_contents(produced)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            assert got[key] == value, key
    assert not leftovers(project)


def test_sigkill_during_oti_resumes_to_the_uninterrupted_result(produced: Path, project: Path, tmp_path: Path) -> None:
    reference = read_manifest(produced, instance(produced, OTI))
    unpublish(project, OTI)
    marker, log = tmp_path / "paused", tmp_path / "killed.log"
    # the pause hook patches the stage process, so OTI runs there (runtime.processes=1); the rerun resumes the killed
    # store with the default worker processes, and both paths write blocks through the same resumable runner
    proc = start(project, OTI, "-S", "runtime.processes=1", log=log, pause="oti", marker=marker)
    wait_until(marker.exists, proc, log)
    (store,) = (project / ".bridgeflow/work/oti_shapes").glob("*/artifacts/inversion/oti/shapes/inversion.zarr")
    done = np.asarray(zarr.open_array(str(store / "oti" / DONE), mode="r")[...])
    assert done[0] and not done.all(), done  # killed between finished and pending OTI blocks
    kill(proc)
    assert_not_published(project, OTI)

    assert f"{OTI}: ran" in run_to_end(project, OTI, log=tmp_path / "rerun.log")
    assert read_manifest(project, instance(project, OTI))["content"] == reference["content"]
    for rel in ("metrics/inversion/oti/shapes.json", "plots/oti_map_vs_step/shapes.csv",
                "plots/inversion_similarity/shapes.csv"):
        assert (project / rel).read_bytes() == (produced / rel).read_bytes(), rel
    assert not leftovers(project)


def test_sigkill_during_semobridge_t_training_keeps_the_published_run(produced: Path, project: Path,
                                                                     tmp_path: Path) -> None:
    """-T training keeps no checkpoint (it is seconds of a run dominated by the blend searches): a killed forced
    rerun leaves the published run complete and untouched, and a full rerun reproduces it exactly."""
    inst = instance(project, FEWSHOT_RUN)
    before = read_manifest(project, inst)
    marker, log = tmp_path / "paused", tmp_path / "killed.log"
    proc = start(project, FEWSHOT_RUN, "--force", log=log, pause="train", marker=marker)
    wait_until(marker.exists, proc, log)
    kill(proc)
    assert read_manifest(project, inst) == before
    assert_same_fewshot_run(project, produced)
    assert not leftovers(project) and is_published(project, inst, before["fingerprint"])  # complete, still valid

    assert f"{FEWSHOT_RUN}: ran" in run_to_end(project, FEWSHOT_RUN, "--force", log=tmp_path / "rerun.log")
    assert_same_fewshot_run(project, produced)


def test_second_process_on_a_running_stage_waits_or_fails_clearly(produced: Path, project: Path,
                                                                   tmp_path: Path) -> None:
    unpublish(project, FEWSHOT_RUN)
    marker, release = tmp_path / "paused", tmp_path / "release"
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "waiter", "impatient")}
    first = start(project, FEWSHOT_RUN, log=logs["first"], pause="train", marker=marker, release=release)
    wait_until(marker.exists, first, logs["first"])  # it holds the stage lock, mid-training
    waiter = start(project, FEWSHOT_RUN, log=logs["waiter"])  # default: wait for as long as the other run takes
    impatient = start(project, FEWSHOT_RUN, "--lock-wait", "0", log=logs["impatient"])

    assert impatient.wait(timeout=120) == 2
    message = " ".join(logs["impatient"].read_text().split())
    assert f"stage {FEWSHOT_RUN} is being run by another process" in message and "Traceback" not in message
    wait_until(lambda: "waiting for it" in logs["waiter"].read_text(), waiter, logs["waiter"])
    assert_not_published(project, FEWSHOT_RUN)

    release.touch()
    assert f"{FEWSHOT_RUN}: ran" in finish(first, logs["first"])
    assert f"{FEWSHOT_RUN}: cached" in finish(waiter, logs["waiter"])
    assert_same_fewshot_run(project, produced)
    assert not leftovers(project)


def test_publish_killed_between_its_renames_is_completed_by_the_next_run(project: Path) -> None:
    """What a kill between `dst -> .dst.outgoing-PID` and `.dst.incoming-PID -> dst` leaves: no published output,
    the old and the new copy aside. The next publish (a rerun republishes the complete scratch copy) clears both."""
    inst = instance(project, "fewshot_bridge@shapes")
    out = project / inst.manifest_dir
    manifest = read_manifest(project, inst)
    shutil.copytree(out, out.with_name(f".{out.name}.incoming-4242"))
    out.rename(out.with_name(f".{out.name}.outgoing-4242"))
    assert len(leftovers(project)) == 2 and read_manifest(project, inst) is None
    publish(project, scratch_dir(project, inst, manifest["fingerprint"]), inst)
    assert read_manifest(project, inst) == manifest
    assert not leftovers(project)


# ----------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cut", ["half", "all"])
def test_truncated_chunk_in_a_published_store_is_a_clear_error(project: Path, cut: str) -> None:
    shard = project / STORE / "test/image/c/0/0"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if cut == "half" else b"")  # zarr would read an empty shard as zeros
    unpublish(project, OTI)
    code, out = cli(project, "stage", OTI)
    assert code == 2, out
    assert "fewshot.zarr" in out and "array 'test/image'" in out
    assert "bridgeflow stage features_fewshot@shapes --force" in out
    assert_not_published(project, OTI)


@pytest.mark.parametrize("stage_id", [FEWSHOT_RUN, OTI])
def test_wrong_feature_width_in_the_store_is_a_clear_error(project: Path, stage_id: str) -> None:
    split = zarr.open_group(str(project / STORE), mode="r+")["test"]
    n, d = split["image"].shape
    split.create_array("image", shape=(n, d + 1), dtype="float32", overwrite=True)[...] = 0.5
    unpublish(project, stage_id)
    code, out = cli(project, "stage", stage_id)
    assert code == 2, out
    assert f"array 'test/image' has shape ({n}, {d + 1}), expected (*, {d})" in out
    assert_not_published(project, stage_id)


def test_missing_weights_file_fails_before_anything_runs(project: Path, tmp_path: Path) -> None:
    inst = instance(project, "backbone")
    before = read_manifest(project, inst)
    scratch = set((project / ".bridgeflow/work/backbone").iterdir())
    missing = tmp_path / "weights" / "ViT-B-32.pt"
    overrides = ("-S", "backbone.model=ViT-B-32", "-S", f"backbone.pretrained={missing}")
    code, out = cli(project, "stage", "backbone", *overrides)
    assert code == 2 and "no such weights file" in out and "ViT-B-32.pt" in out, out
    assert read_manifest(project, inst) == before
    new = set((project / ".bridgeflow/work/backbone").iterdir()) - scratch
    assert not [p for d in new for p in d.rglob("*") if p.is_file()]  # nothing was computed
    assert not leftovers(project)
