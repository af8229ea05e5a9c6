"""Output layout, fingerprints, atomic publishing and locks: what lets DVC and Prefect share finished work.

A stage instance's identity is its fingerprint: the hash of its parameter subset, its matrix item, its inputs'
fingerprints and the source of the code that computes it. The stage writes into a scratch folder keyed by that
fingerprint (`.bridgeflow/work/<stage>/<fingerprint>/`, outside every DVC out), so a killed run finds its finished
blocks there again, and DVC deleting the published outs before a rerun cannot destroy resumable work. When the stage
function returns, a `manifest.json` goes into its first output directory, a completion marker into the scratch folder,
and every output is swapped into place with renames. Whoever runs next (DVC or Prefect) skips a stage whose published
manifest carries the fingerprint it would compute, and republishes from scratch when only the scratch copy is left.

One physical copy: publishing hard-links the scratch files into the workspace (and DVC, with `cache.type =
hardlink,copy`, links the same inodes into its cache), copying only where a link is impossible (another filesystem).
A shared inode must never change in place, so:
- published files are read-only (write bits cleared on the shared inode, as DVC does to its cache): a user's
  in-place write is refused, except for root, who bypasses file modes;
- the completion marker seals the scratch copy with each file's size and mtime; a scratch copy whose seal no longer
  matches (a published file was written in place) is republished only when its bytes still match the manifest's
  digests, and otherwise discarded and recomputed;
- a stage resuming into an unfinished scratch folder first gets private, writable copies of any linked file
  (`reopen_scratch`), so no writer (in-place `np.save`/`torch.save` or zarr's temp-file-and-rename) can reach a
  published or cached inode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pipeline_lib.engine.errors import StageLockedError
from pipeline_lib.engine.params import get_dotted
from pipeline_lib.engine.stages import StageInstance

log = logging.getLogger(__name__)

SCRATCH_DIR = ".bridgeflow"
MANIFEST = "manifest.json"
COMPLETE = "complete.json"
FINGERPRINT_VERSION = 1  # bump to invalidate every stage at once (e.g. after a change of manifest layout)
#: os.link errors after which publishing copies instead: another filesystem (EXDEV), a filesystem without hard links
#: or a link the kernel refuses (EPERM, e.g. fs.protected_hardlinks on another user's file), the inode's link limit
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_PRIVATE = "private"  # `.<name>.private-<pid>`: a copy being made by reopen_scratch
ScratchState = Literal["complete", "changed", "incomplete"]


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
        "params": params_subset(params, inst.params),
        "upstream": dict(sorted(upstream.items())),
        "code": code,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def _hash_tree(h: Any, base: Path, work: Path) -> None:
    """Feed every file under `base` (or the file itself) to `h`: its path relative to `work`, then its bytes; the
    manifest at `base` is left out (it records when and how, not what)."""
    files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
    for path in files:
        if path.name == MANIFEST and path.parent == base:
            continue
        h.update(str(path.relative_to(work)).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                h.update(chunk)


def content_digest(work: Path, inst: StageInstance) -> str:
    """sha256 over the files of the stage's cached outputs (not metrics/plots, not the manifest).

    Downstream stages are keyed on this rather than on the upstream fingerprint, so an upstream stage that reruns
    (a refactor of its code, a runtime-only param) and writes the same bytes leaves everything downstream reusable.
    """
    h = hashlib.sha256()
    for out in inst.stage.outs:
        _hash_tree(h, work / inst.path(out), work)
    return h.hexdigest()[:20]


def part_digest(root: Path, part: Path) -> str:
    """sha256 over the files of one published folder inside an upstream output: the input of a stage that reads
    only that part (`Stage.reads`), so the upstream adding a part for another instance leaves this one reusable."""
    h = hashlib.sha256()
    _hash_tree(h, part, root)
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


def output_files(base: Path, outputs: Iterable[str]) -> Iterator[Path]:
    """Every file of the given repo-relative outputs under `base` (a directory's files in sorted order)."""
    for out in outputs:
        path = base / out
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path


def _seal(work: Path, outputs: list[str]) -> dict[str, Any]:
    """Size and mtime of every output file: what an in-place write to a (shared) inode changes.

    Linking, unlinking and chmod (DVC's or ours) change only the ctime, so they leave the seal intact.
    """
    h = hashlib.sha256()
    n = 0
    for path in output_files(work, outputs):
        st = path.stat()
        h.update(f"{path.relative_to(work)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        n += 1
    return {"files": n, "stat": h.hexdigest()[:20]}


def _read_marker(work: Path) -> dict[str, Any] | None:
    marker = work / COMPLETE
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def scratch_state(work: Path, fp: str) -> ScratchState:
    """`complete`: finished for `fp` and untouched since; `changed`: finished, but a file's size or mtime changed
    since (written in place through a published link?); `incomplete`: not finished (or for another fingerprint).

    Markers written before seals existed count as complete, as they did then.
    """
    marker = _read_marker(work)
    if marker is None or marker.get("fingerprint") != fp:
        return "incomplete"
    if "seal" not in marker:
        return "complete"
    return "complete" if _seal(work, marker["outputs"]) == marker["seal"] else "changed"


def is_complete_in_scratch(work: Path, fp: str) -> bool:
    return scratch_state(work, fp) == "complete"


def reseal_scratch(work: Path, fp: str) -> None:
    """Seal a `changed` scratch copy again once its bytes were found to match its manifest (e.g. only mtimes moved)."""
    marker = _read_marker(work)
    assert marker is not None and marker.get("fingerprint") == fp, f"{work} is not a finished scratch copy of {fp}"
    write_json_atomic(work / COMPLETE, {**marker, "seal": _seal(work, marker["outputs"])})


def discard_scratch(work: Path) -> None:
    """Delete a scratch copy found damaged, and make its linked inodes writable again first.

    Those inodes may still be DVC cache objects (with `cache.type = hardlink`), and DVC trusts a cache file without
    hashing it while its mode is exactly 0444: with a write bit back, DVC re-hashes it, drops it as corrupted and
    recomputes instead of checking the damaged bytes out again. The folder is renamed before it is deleted, so a kill
    half-way never leaves a partial copy that a resumed stage would read.
    """
    for path in work.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1:
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
    trash = work.with_name(f".{work.name}.discarded-{os.getpid()}")
    os.replace(work, trash)
    for leftover in work.parent.glob(f".{glob.escape(work.name)}.discarded-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def reopen_scratch(work: Path) -> int:
    """Before a stage (re)writes into an existing scratch folder: give every file that shares its inode with another
    name (a published or cached link) a private copy, and make every file writable again. Returns the files copied.

    Resumed stages then write only to their own inodes, whichever way they write (in place or by rename), and a copy
    killed half-way leaves only a `.private-` temporary, removed here next time.
    """
    copied = 0
    if not work.is_dir():
        return copied
    for path in sorted(p for p in work.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.name.startswith(".") and f".{_PRIVATE}-" in path.name:
            path.unlink()
            continue
        st = path.stat()
        if st.st_nlink > 1:
            tmp = path.with_name(f".{path.name}.{_PRIVATE}-{os.getpid()}")
            shutil.copy2(path, tmp)
            os.chmod(tmp, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
            os.replace(tmp, path)
            copied += 1
        elif not st.st_mode & stat.S_IWUSR:
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    if copied:
        log.info("%s: %d files shared an inode with a published or cached copy; made private copies", work, copied)
    return copied


def _link_tree(src: Path, dst: Path) -> None:
    """Link a file or tree into `dst` (one physical copy), copying only where a link is impossible."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy, symlinks=False)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` and make the shared inode read-only; copy (read-only too) when linking is impossible."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        log.debug("copying %s to %s: %s", src, dst, exc.strerror)
        shutil.copy2(src, dst)
    _make_read_only(Path(dst))


def _make_read_only(path: Path) -> None:
    """Clear the write bits: a write through any name of a shared inode would change every name (DVC does the same to
    its cache objects). Best effort: only the owner may chmod, and root writes regardless (the seal catches that)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _WRITE_BITS:
        try:
            os.chmod(path, mode & ~_WRITE_BITS)
        except PermissionError:
            log.debug("cannot make %s read-only (not its owner)", path)


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
    """Write the manifest into the stage's output directory and mark the scratch folder complete (and sealed)."""
    missing = missing_outputs(work, inst)
    if missing:
        raise RuntimeError(f"stage {inst.id} finished without writing its declared outputs: {', '.join(missing)}")
    write_json_atomic(work / inst.manifest_dir / MANIFEST, manifest)
    outputs = list(inst.outputs())
    marker = {"fingerprint": manifest["fingerprint"], "finished": time.time(), "outputs": outputs}
    write_json_atomic(work / COMPLETE, {**marker, "seal": _seal(work, outputs)})


def publish(root: Path, work: Path, inst: StageInstance) -> None:
    """Swap every output of a completed scratch folder into the workspace, as read-only hard links (copies across
    filesystems); the manifest directory goes last."""
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
