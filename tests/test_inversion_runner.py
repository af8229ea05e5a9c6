"""The block runner resumes a killed run from its last finished block and ends identical to an uninterrupted run.

Its blocks are the store's one resumable mechanism (`engine.store.BlockGroup`, chunk blocks): data, then done flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from model_fixtures import tiny_clip, tiny_tokenizer

from pipeline_lib.engine.store import DONE, BlockGroup
from pipeline_lib.inversion.config import OtiConfig
from pipeline_lib.inversion.oti import run_oti
from pipeline_lib.inversion.runner import ARRAYS, RunSpec, block_seed, run_blocks, targets_digest

MODEL = tiny_clip()
TOKENIZER = tiny_tokenizer()
CFG = OtiConfig(steps=3, batch_size=4, snapshot_steps=(1, 3))
with torch.no_grad():
    TARGETS = MODEL.encode_image(torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))).numpy()


class Killed(RuntimeError):
    pass


def _spec(**changes: object) -> RunSpec:
    base = {"n": 10, "param_shape": (1, 128), "feature_dim": 128, "snapshot_steps": CFG.recorded_steps,
            "steps": CFG.steps, "block_size": CFG.batch_size, "blocks_per_shard": 2, "seed": 42,
            "targets_sha256": targets_digest(TARGETS)}
    return RunSpec(**{**base, **changes})


def _inverter(calls: list[int], kill_at: int | None = None):
    def invert_block(targets: torch.Tensor, seed: int):
        calls.append(seed)
        if len(calls) - 1 == kill_at:
            raise Killed(f"killed before block {kill_at} finished")
        return run_oti(MODEL, TOKENIZER, targets, CFG, seed=seed)

    return invert_block


def _run(path: Path, calls: list[int], kill_at: int | None = None) -> BlockGroup:
    return run_blocks(path, "oti", TARGETS, _inverter(calls, kill_at), _spec(), device=torch.device("cpu"))


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    full = _run(tmp_path / "full.zarr", calls := []).group
    assert BlockGroup(full, 10, 4).complete and len(calls) == 3  # 10 samples in blocks of 4: 4 + 4 + 2
    assert full["snapshots"].shape == (10, 2, 128) and not np.isnan(full["features"][...]).any()

    part_path = tmp_path / "part.zarr"
    with pytest.raises(Killed):
        _run(part_path, calls_a := [], kill_at=2)
    part = zarr.open_group(part_path, mode="r")["oti"]
    assert part[DONE][...].tolist() == [True, True, False] and len(calls_a) == 3
    assert np.isnan(part["features"][8:]).all()  # the killed block left nothing behind

    resumed = _run(part_path, calls_b := []).group
    assert calls_b == [block_seed(42, 2)]  # only the unfinished block ran, with its own seed
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed[name][...], full[name][...], err_msg=name)
    assert resumed["params"].shards == (8, 1, 128) and resumed["params"].chunks == (4, 1, 128)
    assert resumed[DONE].shards == (2,) and resumed[DONE].chunks == (1,)  # a shard file's flags: one file, one writer


def test_changed_settings_start_afresh(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _run(path, [])
    calls: list[int] = []
    group = run_blocks(path, "oti", TARGETS, _inverter(calls), _spec(seed=7), device=torch.device("cpu"))
    assert len(calls) == 3 and group.complete and group.group.attrs["spec"]["seed"] == 7
    with pytest.raises(ValueError, match="does not match the run spec"):
        run_blocks(path, "oti", TARGETS[:5], _inverter([]), _spec(), device=torch.device("cpu"))


def test_block_seeds_differ_and_are_stable() -> None:
    seeds = [block_seed(42, b) for b in range(100)]
    assert len(set(seeds)) == 100 and seeds[3] == block_seed(42, 3) != block_seed(43, 3)
