"""One physical copy of each output: publishing hard-links the scratch files, and no write can reach a shared inode.

Fast tests run the fake stages (alpha, beta); the slow one runs DVC with the repo's own `[cache]` settings on the
real `data` stage and finds the workspace, the scratch copy and DVC's cache sharing one inode per file.
"""

from __future__ import annotations

import configparser
import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fake_stages import ALPHA, FAKE_REGISTRY

from pipeline_lib.engine import stages
from pipeline_lib.engine.artifacts import output_files, reopen_scratch, scratch_dir, scratch_state
from pipeline_lib.engine.config import load_config
from pipeline_lib.engine.runner import instance_fingerprint, run_instance
from pipeline_lib.engine.stages import StageInstance

ALPHA_FILES = ("artifacts/alpha/value.txt", "artifacts/alpha/manifest.json", "metrics/alpha.json")


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", FAKE_REGISTRY)


def runs(root: Path) -> int:
    path = root / "runs-alpha.txt"
    return int(path.read_text()) if path.exists() else 0


def scratch(root: Path) -> Path:
    (work,) = (root / ".bridgeflow/work/alpha").iterdir()
    return work


def unpublish(root: Path) -> None:
    """What `dvc repro` does before running a stage: remove its outputs (scratch copies stay)."""
    shutil.rmtree(root / "artifacts/alpha")
    (root / "metrics/alpha.json").unlink()


def write_in_place(path: Path, text: str) -> None:
    """An in-place write (same inode), as root can always do; other users first have to restore the write bit."""
    if os.geteuid() != 0:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    with path.open("r+") as handle:
        handle.truncate()
        handle.write(text)


@pytest.mark.usefixtures("fake_registry")
def test_publish_links_one_read_only_inode(smoke_project: Path) -> None:
    root = smoke_project
    assert run_instance(root, StageInstance(ALPHA), load_config(root)).status == "ran"
    work = scratch(root)
    for rel in ALPHA_FILES:
        published, kept = (root / rel).stat(), (work / rel).stat()
        assert (published.st_dev, published.st_ino) == (kept.st_dev, kept.st_ino), rel
        assert published.st_nlink >= 2, rel
        assert not published.st_mode & 0o222, f"{rel} is writable: {stat.filemode(published.st_mode)}"


@pytest.mark.usefixtures("fake_registry")
def test_publish_copies_where_links_are_impossible(smoke_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    root = smoke_project
    cfg = load_config(root)
    assert run_instance(root, StageInstance(ALPHA), cfg).status == "ran"
    unpublish(root)
    assert run_instance(root, StageInstance(ALPHA), cfg).status == "republished"
    work = scratch(root)
    for rel in ALPHA_FILES:
        published, kept = (root / rel).stat(), (work / rel).stat()
        assert published.st_ino != kept.st_ino and published.st_nlink == 1, rel
        assert (root / rel).read_bytes() == (work / rel).read_bytes(), rel
        assert not published.st_mode & 0o222, rel


@pytest.mark.usefixtures("fake_registry")
def test_other_link_errors_are_not_hidden_by_a_copy(smoke_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError, match="No space left"):
        run_instance(smoke_project, StageInstance(ALPHA), load_config(smoke_project))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes regardless of file modes (the seal test covers root)")
@pytest.mark.usefixtures("fake_registry")
def test_in_place_write_to_a_published_file_is_refused(smoke_project: Path) -> None:
    root = smoke_project
    run_instance(root, StageInstance(ALPHA), load_config(root))
    with pytest.raises(PermissionError):
        (root / "artifacts/alpha/value.txt").open("r+")
    assert (scratch(root) / "artifacts/alpha/value.txt").read_text() == str(load_config(root).data.seed * 10)


@pytest.mark.usefixtures("fake_registry")
def test_a_scratch_copy_changed_through_a_published_link_is_recomputed_not_republished(
    smoke_project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = smoke_project
    cfg = load_config(root)
    expected = str(cfg.data.seed * 10)
    run_instance(root, StageInstance(ALPHA), cfg)
    work = scratch(root)
    cache_object = root / "cache-object"  # what DVC's cache holds with cache.type = hardlink: a third name
    os.link(work / "artifacts/alpha/value.txt", cache_object)
    # a longer text, so the size changes too: an in-place write within one clock tick of the stage's own write would
    # keep the mtime (the seal compares size and mtime; real edits come seconds later)
    write_in_place(root / "artifacts/alpha/value.txt", "not what alpha computed")
    assert (work / "artifacts/alpha/value.txt").read_text() == "not what alpha computed"  # one inode: both changed
    assert scratch_state(work, instance_fingerprint(root, StageInstance(ALPHA), cfg)) == "changed"

    unpublish(root)
    with caplog.at_level(logging.WARNING, logger="pipeline_lib.engine.runner"):
        result = run_instance(root, StageInstance(ALPHA), cfg)
    assert result.status == "ran" and runs(root) == 2
    assert "was modified after it finished" in caplog.text
    assert (root / "artifacts/alpha/value.txt").read_text() == expected
    assert (work / "artifacts/alpha/value.txt").read_text() == expected
    # the damaged inode is writable again, so DVC (which trusts only 0444 cache files unhashed) re-checks it
    assert cache_object.stat().st_mode & stat.S_IWUSR
    assert sorted(p.name for p in work.parent.iterdir()) == [work.name]  # no half-deleted copy left


@pytest.mark.usefixtures("fake_registry")
def test_a_scratch_copy_whose_times_changed_but_bytes_did_not_is_republished(smoke_project: Path) -> None:
    root = smoke_project
    cfg = load_config(root)
    run_instance(root, StageInstance(ALPHA), cfg)
    work = scratch(root)
    os.utime(work / "artifacts/alpha/value.txt", ns=(0, 0))  # e.g. a restore that did not keep mtimes
    unpublish(root)
    assert run_instance(root, StageInstance(ALPHA), cfg).status == "republished"
    assert runs(root) == 1
    assert scratch_state(work, instance_fingerprint(root, StageInstance(ALPHA), cfg)) == "complete"  # sealed again


@pytest.mark.usefixtures("fake_registry")
def test_a_resumed_stage_writes_to_private_copies_of_linked_files(smoke_project: Path) -> None:
    """An unfinished scratch folder whose file shares its inode with another name (a published or cached link):
    the stage's in-place rewrite (`write_text`) must not reach that other name."""
    root = smoke_project
    cfg = load_config(root)
    inst = StageInstance(ALPHA)
    work = scratch_dir(root, inst, instance_fingerprint(root, inst, cfg))
    value = work / "artifacts/alpha/value.txt"
    value.parent.mkdir(parents=True)
    value.write_text("stale")
    elsewhere = root / "elsewhere.txt"
    os.link(value, elsewhere)
    value.chmod(0o444)
    (value.parent / ".value.txt.private-999").write_text("a copy killed half-way")

    assert run_instance(root, inst, cfg).status == "ran"
    assert elsewhere.read_text() == "stale" and elsewhere.stat().st_nlink == 1
    assert value.read_text() == (root / "artifacts/alpha/value.txt").read_text() == str(cfg.data.seed * 10)
    assert not list(value.parent.glob(".*private*"))


def test_reopen_scratch_leaves_private_files_alone(tmp_path: Path) -> None:
    own = tmp_path / "a" / "own.bin"
    own.parent.mkdir()
    own.write_bytes(b"x" * 10)
    ino = own.stat().st_ino
    assert reopen_scratch(tmp_path) == 0 and own.stat().st_ino == ino
    assert [p.name for p in output_files(tmp_path, ["a"])] == ["own.bin"]


# --------------------------------------------------------------------------------------------------------- DVC


BIN = Path(sys.executable).parent


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def repo_cache_type() -> str:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    return config.get("cache", "type")


def inodes(root: Path, rel: str) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root / rel)): (p.stat().st_ino, p.stat().st_mode) for p in (root / rel).rglob("*")
            if p.is_file()}


@pytest.mark.slow
def test_dvc_with_the_repo_cache_type_keeps_one_inode(tmp_path: Path) -> None:
    """`dvc repro`, a forced rerun (DVC deletes the outs; the stage republishes) and `dvc checkout` all leave the
    workspace, the scratch copy and the cache on one read-only inode per file."""
    from conftest import copy_project

    assert repo_cache_type().split(",")[0] == "hardlink", "DVC links workspace files into its cache only then"
    root = copy_project(tmp_path / "project")
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "tests@bridgeflow.invalid")
    sh(root, "git", "config", "user.name", "bridgeflow tests")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "config", "cache.type", repo_cache_type())
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "smoke project")
    sh(root, "dvc", "repro", "data")
    (work,) = (root / ".bridgeflow/work/data").iterdir()

    def assert_one_inode() -> None:
        published, kept = inodes(root, "artifacts/data"), inodes(work, "artifacts/data")
        assert published and published == kept
        cached = {p.stat().st_ino for p in (root / ".dvc/cache/files").rglob("*") if not p.name.endswith(".dir")
                  and p.is_file()}
        assert {ino for ino, _ in published.values()} <= cached
        assert not [rel for rel, (_, mode) in published.items() if mode & 0o222]

    assert_one_inode()
    assert "data: republished" in sh(root, "dvc", "repro", "-f", "data")
    assert_one_inode()
    shutil.rmtree(root / "artifacts/data")
    sh(root, "dvc", "checkout", "data")
    assert_one_inode()
    assert "up to date" in sh(root, "dvc", "status", "data")

    # root writes into a published file anyway: the scratch copy and the cache object change with it. The recovery
    # the README gives: restore the write bit, so DVC re-hashes its cache object (it trusts only 0444 files unhashed),
    # finds it corrupt and reruns the stage, which finds its scratch seal broken and recomputes.
    victim = min((root / "artifacts/data").rglob("*.png"))
    original = victim.read_bytes()
    write_in_place(victim, "not a png, and longer than a few bytes" * 100)
    assert "modified" in sh(root, "dvc", "status", "data")
    victim.chmod(0o644)
    assert "data: ran" in sh(root, "dvc", "repro", "data")
    assert victim.read_bytes() == original
    rel = str(victim.relative_to(root / "artifacts/data"))
    assert inodes(root, "artifacts/data")[rel] == inodes(work, "artifacts/data")[rel]  # recached from the new copy
    # (the other files' bytes were in DVC's cache already: DVC links the workspace to its older inodes, and the
    # recomputed scratch copy stays a second copy of them until the next `rm -rf .bridgeflow/work`)
