"""The few-shot stage functions end to end on a tiny synthetic feature store (smoke profile sizes)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import REPO, stage_context

from pipeline_lib.engine.config import Config, RuntimeConfig, load_config
from pipeline_lib.engine.context import StageContext
from pipeline_lib.features.stores import support_indices
from pipeline_lib.fewshot.config import FewshotConfig
from pipeline_lib.fewshot.sampling import sample_fewshot_indices
from pipeline_lib.fewshot.stage import run_fewshot_fit, run_fewshot_report, run_fewshot_seed, support_views


def ctx(root: Path, stage: str, cfg: FewshotConfig, processes: int = 1, **item: int) -> StageContext:
    """The real context of a few-shot stage: inputs under `root` and outputs into `root` too, so stages chain."""
    config = Config(fewshot=cfg, runtime=RuntimeConfig(device="cpu", processes=processes, progress=False))
    dataset = {"dataset": "shapes"} if stage != "fewshot_report" else {}  # the default classification dataset
    return stage_context(root, stage, config, root, **dataset, **item)


def _write_store(path: Path, c=4, d=8, v=2, n_train=6, n_val=3, n_test=6, seed=0):
    """A few-shot store; returns the train split's views (N, V, D) and labels, for the support stores."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(c, d)).astype(np.float32)
    grp = zarr.open_group(str(path), mode="w")

    def split(name, per_class):
        y = np.tile(np.arange(c), per_class).astype(np.int64)
        x = (centres[y] + 0.8 * g.normal(size=(len(y), d))).astype(np.float32)
        grp.create_array(f"{name}/image", data=x)
        grp.create_array(f"{name}/label", data=y)
        grp.create_array(f"{name}/index", data=np.arange(len(y), dtype=np.int64))
        return x, y

    x, y = split("train", n_train)
    views = np.stack([x] + [x + 0.1 * g.normal(size=x.shape).astype(np.float32) for _ in range(v - 1)], 1)
    split("val", n_val)
    split("test", n_test)
    w_txt = (g.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32)
    proj = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    eos_raw = (2.0 * g.normal(size=(c, d))).astype(np.float32)
    grp.create_array("text/class_proj", data=proj.astype(np.float32))
    grp.create_array("text/class_eos_raw", data=eos_raw)
    grp.create_array("text/class_eos", data=eos_raw / np.linalg.norm(eos_raw, axis=1, keepdims=True))
    grp.create_array("clip/text_projection", data=w_txt)
    grp.create_array("clip/logit_scale", data=np.array(100.0, dtype=np.float32))
    return views.astype(np.float32), y


def _write_support(path: Path, views: np.ndarray, labels: np.ndarray, shots: int, seed: int) -> None:
    """The support store of one (shots, seed) sample: only the rows it draws, as the support stage writes them."""
    drawn = support_indices(labels.tolist(), shots, seed)
    grp = zarr.open_group(str(path), mode="w")
    grp.create_array("train/views", data=views[drawn])
    grp.create_array("train/image", data=views[drawn, 0])
    grp.create_array("train/label", data=labels[drawn])
    grp.create_array("train/index", data=drawn)
    grp.create_array("sampling/labels", data=labels)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    views, labels = _write_store(root / "artifacts/features/fewshot/shapes/fewshot.zarr")
    smoke = load_config(REPO, "smoke").fewshot
    cfg = smoke.model_copy(update={"shots": [2]})  # the smoke profile, one shot count to stay fast
    for seed in cfg.seeds:
        _write_support(root / f"artifacts/features/support/shapes/s{seed}/k2/support.zarr", views, labels, 2, seed)
    fit = run_fewshot_fit(ctx(root, "fewshot_bridge", cfg))
    seeds = [run_fewshot_seed(ctx(root, "fewshot_run", cfg, shots=k, seed=s)) for k in cfg.shots for s in cfg.seeds]
    report = run_fewshot_report(ctx(root, "fewshot_report", cfg))
    return root, cfg, fit, seeds, report


def test_fit_summary(published):
    root, cfg, fit, _, _ = published
    meta = json.loads((root / "artifacts/fewshot_bridge/shapes/bridge.json").read_text())
    assert fit["n_dropped"] == meta["n_dropped"] == sum(v <= cfg.atol for v in meta["singular_values"])
    assert fit["rank_pinv_wtxt"] == 8 - fit["n_dropped"]


def test_seed_results_and_files(published):
    root, cfg, _, _, _ = published
    rec = json.loads((root / "artifacts/fewshot_runs/shapes/k2-s1/results.json").read_text())
    assert rec["support_shape"] == [4, 2 * (cfg.augment_epochs + 1), 8]
    names = {"zero_shot", "prototype", "control", "semobridge_z1", "semobridge_z2", "semobridge_z3",
             "semobridge_all", "semobridge_t"}
    assert set(rec["methods"]) == names
    for m in rec["methods"].values():
        assert 0.0 <= m["test_acc"] <= 100.0
    assert rec["methods"]["semobridge_t"]["n_trials"] == cfg.search.n_trials
    with (root / "artifacts/fewshot_runs/shapes/k2-s1/curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == cfg.training.steps and float(rows[0]["lr"]) == cfg.training.warmup_min_lr
    blob = torch.load(root / "artifacts/fewshot_runs/shapes/k2-s1/semobridge_t.pt")
    assert blob["pinv_last"].shape == (8, 8) and blob["bias_last"].shape == (4, 8)


def test_report_aggregates_over_seeds(published):
    root, cfg, fit, seeds, _ = published
    headline = json.loads((root / "metrics/fewshot.json").read_text())["test_acc"]["shapes"]
    metrics = json.loads((root / "artifacts/fewshot_report/summary.json").read_text())["datasets"]["shapes"]
    assert set(headline) <= set(metrics["test_acc"]) and metrics["prompts"] == "Shapes"
    assert headline["zero_shot"]["2"] == round(metrics["test_acc"]["zero_shot"]["2"]["mean"], 2)
    assert metrics["bridge"] == fit  # the bridge summary, read through the runs the report declares as inputs
    accs = [s["test_acc"]["zero_shot"] for s in seeds if s["shots"] == 2]
    got = metrics["test_acc"]["zero_shot"]["2"]
    assert got["n"] == len(cfg.seeds) and got["mean"] == pytest.approx(float(np.mean(accs)), abs=1e-3)
    assert got["std"] == pytest.approx(float(np.std(accs)), abs=1e-3)
    assert "semobridge_all-minus-control" in metrics["paired_test_diff"]
    with (root / "plots/fewshot_accuracy.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == set(metrics["test_acc"]) and {int(r["shots"]) for r in rows} == {2}
    assert {r["dataset"] for r in rows} == {"shapes"}
    zs = next(r for r in rows if r["method"] == "zero_shot")
    assert float(zs["accuracy"]) == pytest.approx(got["mean"]) and float(zs["std"]) == pytest.approx(got["std"])
    with (root / "plots/fewshot_bias_norms.csv").open() as fh:
        assert [r["class"] for r in csv.DictReader(fh)] == ["0", "1", "2", "3"]
    with (root / "plots/fewshot_train_curve.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == cfg.training.steps


def test_parallel_searches_give_the_serial_results(published, tmp_path):
    """runtime.processes = 2 runs the training-free searches in a child process: same results file, byte for byte."""
    root, cfg, _, _, _ = published
    other = tmp_path / "parallel"
    shutil.copytree(root / "artifacts/features", other / "artifacts/features")  # few-shot and support stores
    shutil.copytree(root / "artifacts/fewshot_bridge", other / "artifacts/fewshot_bridge")  # every dataset's
    run_fewshot_seed(ctx(other, "fewshot_run", cfg, processes=2, shots=2, seed=1))
    serial = root / "artifacts/fewshot_runs/shapes/k2-s1"
    parallel = other / "artifacts/fewshot_runs/shapes/k2-s1"

    def without_timings(path: Path) -> dict:
        rec = json.loads(path.read_text())
        for m in rec["methods"].values():
            m.pop("seconds", None)
            m.pop("train_seconds", None)
        return rec

    assert without_timings(parallel / "results.json") == without_timings(serial / "results.json")
    assert (parallel / "search.csv").read_bytes() == (serial / "search.csv").read_bytes()


def test_support_rows_are_the_drawn_images_and_a_store_for_fewer_shots_is_refused(tmp_path: Path) -> None:
    """A run redraws its sample from the support store's labels and reads exactly those images' views; a store made
    for another sample misses some of its images, which is an error naming the sample."""
    views, labels = _write_store(tmp_path / "fewshot.zarr", n_train=6)
    _write_support(tmp_path / "s1.zarr", views, labels, 4, seed=1)
    got, got_labels, idx = support_views(tmp_path / "s1.zarr", 4, 1, views.shape[-1])
    drawn = zarr.open_group(str(tmp_path / "s1.zarr"))["train/index"].shape[0]
    assert idx == sample_fewshot_indices(labels.tolist(), 4, 1) and drawn < len(labels)  # only the drawn images
    np.testing.assert_array_equal(got, views[idx])
    np.testing.assert_array_equal(got_labels, labels[idx])
    with pytest.raises(KeyError, match="6-shot sample of seed 1"):
        support_views(tmp_path / "s1.zarr", 6, 1, views.shape[-1])


def test_the_search_worker_gets_copies_and_the_training_inputs_keep_their_memory(published):
    """Pickling a tensor for a process pool moves its storage into shared memory, in the pool's feeder thread, while
    SeMoBridge-T trains on the same tensors here: the worker must get copies, so the tensors the training reads
    never change storage under it."""
    from pipeline_lib.engine.parallel import started_pool
    from pipeline_lib.fewshot.evaluate import evaluate_seed
    from pipeline_lib.fewshot.stage import load_bridge, load_inputs

    root, cfg, _, _, _ = published
    inp, _ = load_inputs(root / "artifacts/features/fewshot/shapes/fewshot.zarr",
                         root / "artifacts/features/support/shapes/s1/k2/support.zarr", 2, 1, cfg.augment_epochs)
    fit = load_bridge(root / "artifacts/fewshot_bridge/shapes")
    tensors = [inp.support, inp.text_proj, inp.w_txt, inp.val_raw, fit.pinv]
    pointers = [t.data_ptr() for t in tensors]
    with started_pool(1) as pool:
        evaluate_seed(inp, fit, cfg, 1, "cpu", pool)
    assert [t.data_ptr() for t in tensors] == pointers
    assert not any(t.is_shared() for t in tensors)
