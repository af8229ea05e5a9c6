"""Run one stage instance: fingerprint it, skip it when its outputs are already published, else compute and publish.

This is what `bridgeflow stage NAME` (DVC's stage command) and the Prefect tasks both call, so the two runners share
one notion of "already done".
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline_lib import __version__
from pipeline_lib.engine.artifacts import (
    MANIFEST,
    content_digest,
    discard_scratch,
    finalize_scratch,
    fingerprint,
    is_published,
    params_subset,
    part_digest,
    publish,
    read_manifest,
    reopen_scratch,
    reseal_scratch,
    scratch_dir,
    scratch_state,
    stage_lock,
)
from pipeline_lib.engine.closure import code_digest
from pipeline_lib.engine.config import Config, effective_params
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.errors import MissingUpstreamError
from pipeline_lib.engine.events import record_event
from pipeline_lib.engine.stages import StageInstance, get_stage, instances, upstream_instances

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StageResult:
    """What happened to one stage instance: `ran`, `cached` (already published) or `republished` (from scratch)."""

    id: str
    status: str
    fingerprint: str
    seconds: float
    summary: dict[str, Any]


def upstream_fingerprints(root: Path, inst: StageInstance, params: dict[str, Any]) -> dict[str, str]:
    """Content digests of every published upstream instance (what this stage reads; only the part it reads of an
    upstream in `Stage.reads`); a clear error when one is missing.

    Manifests written before content digests existed fall back to their fingerprint.
    """
    found: dict[str, str] = {}
    for up in upstream_instances(inst, params):
        manifest = read_manifest(root, up)
        if manifest is None:
            raise MissingUpstreamError(
                f"stage {inst.id} needs the outputs of {up.id}, which are not published under {root}: "
                f"run `bridgeflow run --stage {inst.stage.name}` or `dvc repro {inst.stage.name}`"
            )
        part = dict(inst.stage.reads).get(up.stage.name)
        if part is None:
            found[up.id] = manifest.get("content", manifest["fingerprint"])
            continue
        folder = root / up.manifest_dir / inst.path(part)
        if not folder.is_dir():
            raise MissingUpstreamError(f"stage {inst.id} reads {folder.relative_to(root)}, which {up.id} did not "
                                       f"publish: rerun it (`bridgeflow stage {up.id} --force`)")
        found[up.id] = part_digest(root, folder)
    return found


def instance_fingerprint(root: Path, inst: StageInstance, cfg: Config, params: dict[str, Any] | None = None) -> str:
    """The fingerprint an instance has now: params subset, published upstream content digests, code.

    `params` is `effective_params(cfg)` when the caller already has it (a flow fingerprinting many instances).
    """
    params = effective_params(cfg) if params is None else params
    return fingerprint(inst, params, upstream_fingerprints(root, inst, params), code_digest(inst.stage))


def result_digests(base: Path, inst: StageInstance) -> dict[str, str]:
    """sha256 (16 hex) of each metrics and plot file of an instance under `base`, by repo-relative path."""
    paths = [inst.path(p) for p in inst.stage.metrics + tuple(plot.path for plot in inst.stage.plots)]
    return {p: hashlib.sha256((base / p).read_bytes()).hexdigest()[:16] for p in paths if (base / p).is_file()}


def _finished_scratch(work: Path, inst: StageInstance, fp: str) -> bool:
    """True when the scratch copy is finished for `fp` and still holds what its manifest describes.

    A copy whose seal changed (a file of it was written in place, e.g. through a published hard link) is checked byte
    for byte against the manifest's digests: intact, it is sealed again and republished; damaged, it is deleted, so
    the stage recomputes from scratch instead of publishing (or resuming from) the damaged bytes.
    """
    state = scratch_state(work, fp)
    if state != "changed":
        return state == "complete"
    try:
        manifest = json.loads((work / inst.manifest_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    intact = (
        manifest.get("fingerprint") == fp
        and manifest.get("content") == content_digest(work, inst)
        and manifest.get("results", {}) == result_digests(work, inst)
    )
    if intact:
        log.info("scratch copy of %s: file times changed, bytes match its manifest; sealed again", inst.id)
        reseal_scratch(work, fp)
        return True
    log.warning(
        "the scratch copy of %s (%s) was modified after it finished (a published file written in place?); "
        "deleting it and recomputing the stage",
        inst.id,
        work,
    )
    discard_scratch(work)
    return False


def load_function(spec: str) -> Callable[..., dict[str, Any]]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


#: Recorded package versions: module -> distribution name. A module the stage did not import is read from package
#: metadata: importing open_clip only for its version cost ~2 s in every stage that does not use it.
RECORDED_PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "zarr": "zarr"}


def _versions() -> dict[str, str]:
    versions = {"bridgeflow": __version__, "python": platform.python_version()}
    for module, dist in RECORDED_PACKAGES.items():
        loaded = sys.modules.get(module)
        try:
            versions[module] = loaded.__version__ if loaded is not None else importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _machine() -> dict[str, Any]:
    """Where the numbers were computed: CPU model and count, and torch's intra-op threads at the end of the run (float
    results can differ between CPU models, whose BLAS kernels differ, and between thread counts)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:  # Linux; elsewhere the platform's name
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    machine: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        machine["torch_threads"] = torch.get_num_threads()
    return machine


def run_instance(
    root: Path,
    inst: StageInstance,
    cfg: Config,
    force: bool = False,
    lock_wait: float | None = 0.0,
    *,
    fp: str | None = None,
    project: Path | None = None,
) -> StageResult:
    """Compute one stage instance unless its published outputs already carry its fingerprint; log the outcome.

    `root` is where outputs are read and published: the project folder, or a run's own results folder
    (`engine.results`) when its params differ from params.yaml. `project` (default: `root`) holds the scratch copies
    and locks, shared by every results folder, and its published outputs are reused (linked) when they carry the
    same fingerprint, so a run with one changed param recomputes only what that param changes.
    `fp` is the instance's fingerprint when the caller has just computed it from the same `cfg` after its upstream
    instances finished (the Prefect flow does); otherwise it is computed here. Either way the upstream manifests are
    read again before computing: the new manifest records them, and a vanished upstream is a clear error.
    """
    result = _compute_or_reuse(root, project or root, inst, cfg, force, lock_wait, fp)
    record_event(root, result.id, result.status, result.fingerprint, result.seconds)
    return result


def _compute_or_reuse(
    root: Path, project: Path, inst: StageInstance, cfg: Config, force: bool, lock_wait: float | None, fp: str | None
) -> StageResult:
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)  # a run's own results folder starts empty
    params = effective_params(cfg)
    upstream: dict[str, str] | None = None
    if fp is None:
        upstream = upstream_fingerprints(root, inst, params)
        fp = fingerprint(inst, params, upstream, code_digest(inst.stage))
    with stage_lock(project, inst, wait_seconds=lock_wait):
        if not force and is_published(root, inst, fp):
            summary = (read_manifest(root, inst) or {}).get("summary", {})
            return StageResult(inst.id, "cached", fp, time.perf_counter() - start, summary)
        work = scratch_dir(project, inst, fp)
        source = work if not force and _finished_scratch(work, inst, fp) else None
        if source is None and project != root and is_published(project, inst, fp):
            source = project  # the project's published outputs, same relative paths
        if not force and source is not None:
            publish(root, source, inst)
            summary = (read_manifest(root, inst) or {}).get("summary", {})
            return StageResult(inst.id, "republished", fp, time.perf_counter() - start, summary)
        if upstream is None:  # computing: record (and require) the upstream outputs this run reads
            upstream = upstream_fingerprints(root, inst, params)
        if force:
            shutil.rmtree(work, ignore_errors=True)  # recompute everything, including resumable blocks
        (work / "complete.json").unlink(missing_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        reopen_scratch(work)  # a resumed stage writes to private inodes, never through a published or cached link
        log.info("running stage %s (fingerprint %s)", inst.id, fp)
        ctx = StageContext(cfg=cfg, root=root, work=work, inst=inst)
        summary = load_function(inst.stage.func)(ctx)  # a matrix item reaches the stage once, as ctx.item
        seconds = time.perf_counter() - start
        manifest = {
            "stage": inst.stage.name,
            "id": inst.id,
            "item": inst.item,
            "fingerprint": fp,
            "content": content_digest(work, inst),
            "params": params_subset(params, inst.params),
            "upstream": upstream,
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "machine": _machine(),
            "summary": summary,
            "results": result_digests(work, inst),  # lets `status` tell these results from another run's
        }
        finalize_scratch(work, inst, manifest)
        publish(root, work, inst)
    return StageResult(inst.id, "ran", fp, seconds, summary)


def run_stage(
    root: Path, name: str, cfg: Config, force: bool = False, lock_wait: float | None = 0.0
) -> list[StageResult]:
    """Every instance of a stage (one for a plain stage, one per matrix item otherwise)."""
    stage = get_stage(name)
    return [run_instance(root, inst, cfg, force, lock_wait) for inst in instances(stage, effective_params(cfg))]
