"""Scale-out on Dask: shards never split a zarr shard file, runtime.dask never changes a fingerprint, and the smoke
project's features and OTI/OVI stores computed as shard tasks on a 2-worker LocalCluster (through the Prefect flow)
equal the single-process stores."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from model_fixtures import tiny_clip, tiny_tokenizer

from pipeline_lib.engine.artifacts import fingerprint, read_manifest
from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.params import ParamsError
from pipeline_lib.engine.runner import load_function, run_stage
from pipeline_lib.engine.shards import Shard, split_blocks
from pipeline_lib.engine.stages import STAGES, get_stage, instances
from pipeline_lib.engine.store import DONE, ArraySpec, BlockGroup
from pipeline_lib.inversion.config import OtiConfig
from pipeline_lib.inversion.oti import run_oti
from pipeline_lib.inversion.runner import ARRAYS, RunSpec, open_run, run_blocks, targets_digest

# Threads of the test process: process workers each import torch, open_clip and prefect, which took ~40 s on this
# 2-core machine under load; the shard code path (plan, Prefect tasks on Dask, zarr writes from workers) is the same.
DASK = ["runtime.dask.local_workers=2", "runtime.dask.processes=false"]


def test_shards_cover_whole_files_only() -> None:
    pending = [9, 0, 1, 2, 5, 6]
    assert split_blocks("oti", pending, 4, 1) == [Shard("oti", (0, 1, 2)), Shard("oti", (5, 6)), Shard("oti", (9,))]
    assert split_blocks("oti", pending, 4, 2) == [Shard("oti", (0, 1, 2, 5, 6)), Shard("oti", (9,))]
    assert [s.blocks for s in split_blocks("g", range(3), 1, 2)] == [(0, 1), (2,)]
    assert split_blocks("g", [], 1, 1) == []
    assert Shard("fewshot.zarr/train", (2, 3)).name == "fewshot.zarr/train[2-3]"


def test_registry_declares_the_sharded_stages() -> None:
    sharded = {stage.name: stage.shards for stage in STAGES if stage.shards is not None}
    assert sorted(sharded) == ["features_czsl", "features_fewshot", "oti", "ovi", "support"]
    for shards in sharded.values():  # both names resolve to functions
        assert callable(load_function(shards.planner)) and callable(load_function(shards.worker))


def test_local_cluster_shuts_down_without_comm_errors(prefect_server: None, capfd: pytest.CaptureFixture[str]) -> None:
    """Workers are retired before the scheduler closes, so no CommClosedError traceback is logged at shutdown."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.scaleout import task_runner
    from pipeline_lib.engine.config import DaskConfig

    @task(persist_result=False, cache_policy=NO_CACHE)
    def double(x: int) -> int:
        return 2 * x

    @flow(name="cluster-shutdown")
    def doubles(n: int) -> list[int]:
        return [f.result() for f in [double.submit(i) for i in range(n)]]

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    # an earlier test's logging setup (dictConfig) may have disabled distributed's loggers or raised their level
    names = ["distributed", *(n for n in list(logging.root.manager.loggerDict) if n.startswith("distributed."))]
    saved = {n: (logging.getLogger(n).disabled, logging.getLogger(n).level) for n in names}
    for name in names:
        logging.getLogger(name).disabled = False
    for name in ("distributed", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("distributed").addHandler(handler)  # distributed's own handlers do not propagate to pytest's
    try:
        with task_runner(DaskConfig(local_workers=2, processes=False)) as runner:
            assert doubles.with_options(task_runner=runner)(4) == [0, 2, 4, 6]
    finally:
        logging.getLogger("distributed").removeHandler(handler)
        for name, (disabled, level) in saved.items():
            logging.getLogger(name).disabled = disabled
            logging.getLogger(name).setLevel(level)
    out, err = capfd.readouterr()
    logged = "\n".join(f"{r.name}: {r.getMessage()} {r.exc_info or ''}" for r in records)
    for text in (out + err, logged):
        assert "CommClosedError" not in text and "Traceback" not in text, text
    assert "Retired worker" in logged  # the orderly path ran: workers retired before the scheduler closed


def test_dask_params_are_runtime_only(smoke_project: Path) -> None:
    plain = effective_params(load_config(smoke_project))
    dask = effective_params(load_config(smoke_project, overrides=(*DASK, "runtime.dask.address=tcp://h:8786")))
    for name in ("features_fewshot", "features_czsl", "oti", "ovi"):
        (inst,) = instances(get_stage(name), plain)
        assert fingerprint(inst, plain, {}, "code") == fingerprint(inst, dask, {}, "code")
    with pytest.raises(ParamsError, match="runtime.dask.address"):
        load_config(smoke_project, overrides=("runtime.dask.address=localhost:8786",))


def test_oti_shards_in_any_order_equal_one_run(tmp_path: Path) -> None:
    model, tokenizer = tiny_clip(), tiny_tokenizer()
    cfg = OtiConfig(steps=2, batch_size=2, snapshot_steps=(1, 2))
    with torch.no_grad():
        targets = model.encode_image(torch.randn(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))).numpy()
    spec = RunSpec(n=9, param_shape=(1, 128), feature_dim=128, snapshot_steps=cfg.recorded_steps, steps=cfg.steps,
                   block_size=2, blocks_per_shard=2, seed=42, targets_sha256=targets_digest(targets))

    def invert(t: torch.Tensor, seed: int):
        return run_oti(model, tokenizer, t, cfg, seed=seed)

    cpu = torch.device("cpu")
    full = run_blocks(tmp_path / "full.zarr", "oti", targets, invert, spec, device=cpu).group
    with pytest.raises(RuntimeError, match="missing"):  # workers never create groups
        run_blocks(tmp_path / "sharded.zarr", "oti", targets, invert, spec, device=cpu, blocks=(0,), create=False)
    open_run(tmp_path / "sharded.zarr", "oti", spec)  # the coordinator creates it
    shards = split_blocks("oti", range(spec.n_blocks), spec.blocks_per_shard, 1)
    assert [s.blocks for s in shards] == [(0, 1), (2, 3), (4,)]
    for shard in reversed(shards):
        group = run_blocks(tmp_path / "sharded.zarr", "oti", targets, invert, spec, device=cpu, blocks=shard.blocks,
                           create=False).group
    assert group[DONE][...].all() and group[DONE].shards == (2,)
    for name in ARRAYS:
        np.testing.assert_array_equal(group[name][...], full[name][...], err_msg=name)
    with pytest.raises(RuntimeError, match="another plan"):
        run_blocks(tmp_path / "sharded.zarr", "oti", targets, invert, RunSpec(**{**spec.__dict__, "seed": 7}),
                   device=cpu, create=False)


def test_workers_only_open_groups_the_coordinator_planned(tmp_path: Path) -> None:
    specs = [ArraySpec("image", (10, 4), "float32")]
    with pytest.raises(RuntimeError, match="is missing"):
        BlockGroup.resume(tmp_path / "s.zarr", "train", specs, 2, 4, plan={"amp": False})
    made = BlockGroup.create_or_resume(tmp_path / "s.zarr", "train", specs, 2, 4, plan={"amp": False})
    made.write_block(1, {"image": np.ones((4, 4), np.float32)})
    opened = BlockGroup.resume(tmp_path / "s.zarr", "train", specs, 2, 4, plan={"amp": False})
    assert opened.pending() == [0, 2]
    with pytest.raises(RuntimeError, match="another plan"):  # e.g. a worker on another kind of device
        BlockGroup.resume(tmp_path / "s.zarr", "train", specs, 2, 4, plan={"amp": True})
    assert BlockGroup.resume(tmp_path / "s.zarr", "train", specs, 2, 4, plan={"amp": False}).pending() == [0, 2]


def _arrays(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(node[...]) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def _assert_same_stores(dask_dir: Path, single_dir: Path) -> None:
    stores = sorted(p.name for p in single_dir.glob("*.zarr"))
    assert stores and stores == sorted(p.name for p in dask_dir.glob("*.zarr"))
    for name in stores:
        got, want = _arrays(dask_dir / name), _arrays(single_dir / name)
        assert sorted(got) == sorted(want), name
        for key, value in want.items():
            assert np.array_equal(got[key], value, equal_nan=value.dtype.kind in "fc"), f"{name}/{key}"


@pytest.mark.slow
def test_sharded_stages_on_local_cluster_equal_single_process(
    smoke_project: Path, tmp_path: Path, prefect_server: None, capfd: pytest.CaptureFixture[str]
) -> None:
    from flows.pipeline import pipeline_flow

    root = smoke_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["inversion"].update(blocks_per_shard=2, max_queries=32)  # 4 blocks of 8 queries = 2 zarr shards each
    params["inversion"]["oti"]["batch_size"] = params["inversion"]["ovi"]["batch_size"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    rows = pipeline_flow(root=str(root), stages=["oti"], overrides=DASK)
    status = {row["stage"]: row["status"] for row in rows}
    cfg = load_config(root, overrides=("runtime.num_workers=0",))  # in-process decoding: no worker start-up cost
    insts = {name: instances(get_stage(name), effective_params(cfg))[0] for name in ("features_fewshot", "oti")}
    features_summary = read_manifest(root, insts["features_fewshot"])["summary"]
    blocks = features_summary["blocks_skipped"]  # the stage found every image block done by the shards...
    assert blocks > 1 and features_summary["images_encoded"] > 0 and features_summary["images_per_s"] > 0
    assert status["features_fewshot@shapes"].startswith(f"ran ({blocks} shards on Dask, "), status  # one per shard
    inversion = zarr.open_group(str(root / "artifacts/inversion/oti/shapes/inversion.zarr"), mode="r")
    assert inversion["oti"][DONE].shape == (4,)  # 2 whole zarr shards of 2 blocks
    assert status["oti@shapes"].startswith("ran (2 shards on"), status
    out, err = capfd.readouterr()
    assert "CommClosedError" not in out + err and "Traceback" not in out + err  # both clusters shut down in order

    sharded = {name: tmp_path / name for name in insts}
    content = {name: read_manifest(root, inst)["content"] for name, inst in insts.items()}
    for name, inst in insts.items():
        shutil.copytree(root / inst.manifest_dir, sharded[name])
    for name, inst in insts.items():  # features first: OTI reads the single-process features
        (result,) = run_stage(root, name, cfg, force=True)
        assert result.status == "ran"
        _assert_same_stores(sharded[name], root / inst.manifest_dir)
        assert read_manifest(root, inst)["content"] == content[name], name  # byte-identical outputs
    # the work is counted wherever it ran: the shards' images equal a single-process run's
    assert read_manifest(root, insts["features_fewshot"])["summary"]["images_encoded"] == features_summary[
        "images_encoded"]
