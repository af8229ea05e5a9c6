"""Zarr feature stores: sharded layout, resumable block writes, read helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline_lib.engine.store import (
    ArraySpec,
    BlockGroup,
    chunk_layout,
    file_count,
    lazy_array,
    open_store,
    read_array,
    write_whole,
)

N, D = 1000, 8


def _specs(n: int = N) -> list[ArraySpec]:
    return [ArraySpec("image", (n, D), "float32"), ArraySpec("label", (n,), "int64")]


def _block_data(bg: BlockGroup, block: int) -> dict[str, np.ndarray]:
    start, stop = bg.rows(block)
    rows = np.arange(start, stop)
    return {"image": np.sin(rows[:, None] * 0.1 + np.arange(D)).astype(np.float32), "label": rows % 7}


class Killed(Exception):
    pass


def _fill(path: Path, kill_after: int | None = None, plan: dict | None = None) -> BlockGroup:
    bg = BlockGroup.create_or_resume(path, "train", _specs(), rows_per_chunk=50, rows_per_shard=200, plan=plan)
    for i, b in enumerate(bg.pending()):
        if kill_after is not None and i == kill_after:
            raise Killed
        bg.write_block(b, _block_data(bg, b))
    return bg


def _tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_chunk_layout_shrinks_for_small_arrays() -> None:
    assert chunk_layout(10_000, 256, 2048) == (256, 2048)
    assert chunk_layout(300, 256, 2048) == (256, 512)
    assert chunk_layout(10, 256, 2048) == (10, 10)
    assert chunk_layout(0, 256, 2048) == (1, 1)
    with pytest.raises(ValueError, match="multiple"):
        chunk_layout(10, 3, 10)
    # ViT-B/16 tokens (197 x 512 f32 = 394 kB a row): blocks shrink to stay within the memory budget.
    chunk, shard = chunk_layout(50_000, 256, 2048, row_bytes=197 * 512 * 4, max_block_bytes=256 * 2**20)
    assert (chunk, shard) == (256, 512) and shard * 197 * 512 * 4 <= 256 * 2**20
    assert chunk_layout(50_000, 256, 2048, row_bytes=10**9, max_block_bytes=256 * 2**20) == (1, 1)


def test_resume_after_kill_is_byte_identical(tmp_path: Path) -> None:
    full = _fill(tmp_path / "full.zarr")
    assert full.complete and full.n_blocks == 5

    with pytest.raises(Killed):
        _fill(tmp_path / "resumed.zarr", kill_after=2)
    half = BlockGroup.create_or_resume(tmp_path / "resumed.zarr", "train", _specs(), 50, 200)
    assert half.pending() == [2, 3, 4]
    with pytest.raises(RuntimeError, match="half written"):
        read_array(tmp_path / "resumed.zarr", "train/image")

    resumed = _fill(tmp_path / "resumed.zarr")
    assert resumed.complete
    assert _tree_bytes(tmp_path / "full.zarr") == _tree_bytes(tmp_path / "resumed.zarr")
    np.testing.assert_array_equal(read_array(tmp_path / "resumed.zarr", "train/label"), np.arange(N) % 7)


def test_other_plan_rebuilds_the_group(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        _fill(tmp_path / "s.zarr", kill_after=3, plan={"backbone": "a"})
    again = BlockGroup.create_or_resume(tmp_path / "s.zarr", "train", _specs(), 50, 200, plan={"backbone": "b"})
    assert again.pending() == list(range(5))
    same = BlockGroup.create_or_resume(tmp_path / "s.zarr", "train", _specs(), 50, 200, plan={"backbone": "b"})
    assert same.pending() == list(range(5))


def test_sharding_keeps_file_count_modest(tmp_path: Path) -> None:
    n = 20_000
    bg = BlockGroup.create_or_resume(tmp_path / "big.zarr", "g", [ArraySpec("x", (n, 4), "float32")], 100, 5000)
    for b in bg.pending():
        start, stop = bg.rows(b)
        bg.write_block(b, {"x": np.ones((stop - start, 4), np.float32) * (1 + b)})
    # 200 chunks in 4 shard files; plus 4 done flags and 4 metadata files.
    assert bg.group["x"].nchunks == 200
    assert file_count(tmp_path / "big.zarr") == 4 + 4 + 4
    sl = lazy_array(tmp_path / "big.zarr", "g/x")[4999:5001]
    np.testing.assert_array_equal(sl[:, 0], [1.0, 2.0])


def test_write_block_rejects_bad_shapes_and_names(tmp_path: Path) -> None:
    bg = BlockGroup.create_or_resume(tmp_path / "s.zarr", "g", _specs(), 50, 200)
    with pytest.raises(ValueError, match="expected \\(200, 8\\)"):
        bg.write_block(0, {"image": np.zeros((200, 9), np.float32), "label": np.zeros(200, np.int64)})
    with pytest.raises(ValueError, match="holds"):
        bg.write_block(0, {"image": np.zeros((200, 8), np.float32)})
    with pytest.raises(IndexError):
        bg.rows(5)


def test_small_arrays_and_read_errors(tmp_path: Path) -> None:
    import zarr

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="a").require_group("clip")
    write_whole(g, "logit_scale", np.asarray(100.0, np.float32))
    write_whole(g, "text_projection", np.eye(3, dtype=np.float32))
    assert float(read_array(tmp_path / "s.zarr", "clip/logit_scale")) == 100.0
    np.testing.assert_array_equal(read_array(tmp_path / "s.zarr", "clip/text_projection"), np.eye(3))
    assert "clip" in open_store(tmp_path / "s.zarr")
    with pytest.raises(FileNotFoundError, match="no zarr v3 store"):
        open_store(tmp_path / "missing.zarr")
    with pytest.raises(KeyError, match="nope"):
        read_array(tmp_path / "s.zarr", "clip/nope")


def test_concurrent_writers_of_distinct_blocks_lose_nothing(tmp_path: Path) -> None:
    """One writer per block (= per shard): parallel writers of different blocks keep every row."""
    from concurrent.futures import ThreadPoolExecutor

    bg = BlockGroup.create_or_resume(tmp_path / "p.zarr", "train", _specs(), rows_per_chunk=50, rows_per_shard=200)
    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(lambda b: bg.write_block(b, _block_data(bg, b)), bg.pending()))
    assert bg.complete
    expected = np.concatenate([_block_data(bg, b)["image"] for b in range(bg.n_blocks)])
    np.testing.assert_array_equal(read_array(tmp_path / "p.zarr", "train/image"), expected)
