"""Output layout, fingerprints, atomic publishing and locks: what lets DVC and Prefect share finished work.

A stage instance's identity is its fingerprint: the hash of its parameter subset, its matrix item, its inputs'
fingerprints and the source of the code that computes it. The stage writes into a scratch folder keyed by that
fingerprint (`.bridgeflow/work/<stage>/<fingerprint>/`, outside every DVC out), so a killed run finds its finished
blocks there again, and DVC deleting the published outs before a rerun cannot destroy resumable work. When the stage
function returns, a `manifest.json` goes into its first output directory, a completion marker into the scratch folder,
and every output is swapped into place with renames. Whoever runs next (DVC or Prefect) skips a stage whose published
manifest carries the fingerprint it would compute, and republishes from scratch when only the scratch copy is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline_lib.engine.errors import StageLockedError
from pipeline_lib.engine.params import get_dotted
from pipeline_lib.engine.stages import StageInstance

log = logging.getLogger(__name__)

SCRATCH_DIR = ".bridgeflow"
MANIFEST = "manifest.json"
COMPLETE = "complete.json"
FINGERPRINT_VERSION = 1  # bump to invalidate every stage at once (e.g. after a change of manifest layout)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def params_subset(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of exactly the dotted keys a stage declares."""
    return {key: get_dotted(params, key) for key in keys}


def fingerprint(
    inst: StageInstance, params: dict[str, Any], upstream: dict[str, str], code: str
) -> str:
    """Identity of a stage instance's computation: its params subset, item, code and its inputs' content digests."""
    payload = {
        "version": FINGERPRINT_VERSION,
        "stage": inst.stage.name,
        "item": inst.item,
        "params": params_subset(params, inst.stage.params),
        "upstream": dict(sorted(upstream.items())),
        "code": code,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def content_digest(work: Path, inst: StageInstance) -> str:
    """sha256 over the files of the stage's cached outputs (not metrics/plots, not the manifest).

    Downstream stages are keyed on this rather than on the upstream fingerprint, so an upstream stage that reruns
    (a refactor of its code, a runtime-only param) and writes the same bytes leaves everything downstream reusable.
    """
    h = hashlib.sha256()
    for out in inst.stage.outs:
        base = work / inst.path(out)
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for path in files:
            if path.name == MANIFEST and path.parent == base:
                continue
            h.update(str(path.relative_to(work)).encode() + b"\0")
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()[:20]


def scratch_dir(root: Path, inst: StageInstance, fp: str) -> Path:
    """Fingerprint-keyed working folder of a stage instance (git- and dvc-ignored)."""
    return root / SCRATCH_DIR / "work" / inst.id.replace("@", "_") / fp


def read_manifest(root: Path, inst: StageInstance) -> dict[str, Any] | None:
    """The published manifest of an instance, or None when nothing (complete) is published."""
    path = root / inst.manifest_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("ignoring unreadable manifest %s", path)
        return None


def is_published(root: Path, inst: StageInstance, fp: str) -> bool:
    """True when the published outputs are complete and carry this fingerprint."""
    manifest = read_manifest(root, inst)
    if manifest is None or manifest.get("fingerprint") != fp:
        return False
    return all((root / out).exists() for out in inst.outputs())


def is_complete_in_scratch(work: Path, fp: str) -> bool:
    marker = work / COMPLETE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fp
    except json.JSONDecodeError:
        return False


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a file or tree by hard links (no extra disk), falling back to a copy across filesystems."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy, symlinks=False)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_into_place(src: Path, dst: Path) -> None:
    """Replace `dst` by a linked copy of `src` with renames, so readers see the old or the new, never a mix."""
    tmp = dst.with_name(f".{dst.name}.incoming-{os.getpid()}")
    old = dst.with_name(f".{dst.name}.outgoing-{os.getpid()}")
    # a publish killed half-way (any pid) leaves these behind; the caller holds the instance lock, so none is live
    for kind in ("incoming", "outgoing"):
        for leftover in dst.parent.glob(f".{glob.escape(dst.name)}.{kind}-*"):
            _remove(leftover)
    _link_tree(src, tmp)
    if dst.exists() or dst.is_symlink():
        os.replace(dst, old)
    os.replace(tmp, dst)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def missing_outputs(work: Path, inst: StageInstance) -> list[str]:
    return [out for out in inst.outputs() if not (work / out).exists()]


def finalize_scratch(work: Path, inst: StageInstance, manifest: dict[str, Any]) -> None:
    """Write the manifest into the stage's output directory and mark the scratch folder complete."""
    missing = missing_outputs(work, inst)
    if missing:
        raise RuntimeError(f"stage {inst.id} finished without writing its declared outputs: {', '.join(missing)}")
    write_json_atomic(work / inst.manifest_dir / MANIFEST, manifest)
    write_json_atomic(work / COMPLETE, {"fingerprint": manifest["fingerprint"], "finished": time.time()})


def publish(root: Path, work: Path, inst: StageInstance) -> None:
    """Swap every output of a completed scratch folder into the workspace; the manifest directory goes last."""
    outputs = list(inst.outputs())
    for out in outputs[1:] + outputs[:1]:
        dst = root / out
        dst.parent.mkdir(parents=True, exist_ok=True)
        _swap_into_place(work / out, dst)


@contextlib.contextmanager
def stage_lock(root: Path, inst: StageInstance, wait_seconds: float | None = 0.0) -> Iterator[None]:
    """Exclusive per-instance lock, so two runs in one workspace never write the same stage at once.

    `wait_seconds=None` waits as long as the other run takes (it then usually finds the outputs published).
    """
    lock_dir = root / SCRATCH_DIR / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{inst.id.replace('@', '_')}.lock", "w") as handle:
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    log.info("stage %s is being run by another process; waiting for it", inst.id)
                    waiting = True
                if deadline is not None and time.monotonic() >= deadline:
                    raise StageLockedError(
                        f"stage {inst.id} is being run by another process in {root}; wait for it to finish "
                        f"(or pass a longer lock wait)"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
