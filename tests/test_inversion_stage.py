"""The inversion stages (oti, ovi) on synthetic feature stores and a tiny CLIP: outputs, metrics and plots per the
contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import zarr
from conftest import stage_context
from model_fixtures import tiny_clip, tiny_tokenizer

import pipeline_lib.backbone.load as backbone_load
from pipeline_lib.data.revisited import RevisitedGroundTruth
from pipeline_lib.datasets.config import DatasetsConfig
from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.diagnose.retrieval import per_query_metrics, retrieval_metrics
from pipeline_lib.diagnose.revisited import revisited_metrics
from pipeline_lib.engine.config import Config, RuntimeConfig
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.store import DONE
from pipeline_lib.features.ground_truth import write_ground_truth
from pipeline_lib.inversion.config import InversionConfig
from pipeline_lib.inversion.evaluate import select_step
from pipeline_lib.inversion.jobs import STORE, instance_config, query_subset
from pipeline_lib.inversion.outputs import PER_QUERY_AP, RETRIEVAL
from pipeline_lib.inversion.stage import run_oti, run_ovi, similarity_histogram

CFG = InversionConfig(
    max_queries=10,
    plot_steps=(1,),
    blocks_per_shard=2,
    oti={"steps": 3, "batch_size": 4, "snapshot_steps": (1, 2)},
    ovi={"steps": 2, "batch_size": 8, "snapshot_steps": (1,)},
)


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    root = zarr.open_group(path, mode="w")
    for name, data in arrays.items():
        root.create_array(name, data=data)


def _stores(fewshot: Path, texts: Path) -> None:
    """Few-shot and text-retrieval stores laid out like the feature stages', from clustered random features."""
    gen = np.random.default_rng(0)
    centres = gen.normal(size=(3, 128)).astype(np.float32)

    def sample(labels: np.ndarray) -> np.ndarray:
        return (centres[labels] + 0.8 * gen.normal(size=(len(labels), 128))).astype(np.float32)

    test_l, train_l = np.repeat(np.arange(3), 6), np.repeat(np.arange(3), 5)
    _write(fewshot / "fewshot.zarr", {
        "test/image": sample(test_l), "test/label": test_l, "train/image": sample(train_l), "train/label": train_l,
        "text/class_proj": centres / np.linalg.norm(centres, axis=1, keepdims=True),
    })
    q_groups, g_groups = np.arange(3), np.repeat(np.arange(3), 2)
    _write(texts / "retrieval_text.zarr", {
        "query/text": sample(q_groups), "query/group": q_groups,
        "gallery/text": sample(g_groups), "gallery/group": g_groups,
    })


def _ctx(tmp_path: Path, stage: str, **datasets: Any) -> StageContext:
    """An instance's real context (`oti@shapes` or `ovi@shapes`): synthetic feature stores published under `repo`,
    outputs into `work`; `datasets` replaces entries of the datasets section."""
    item = {"image_dataset": "shapes"} if stage == "oti" else {"text_dataset": "shapes"}
    cfg = Config(inversion=CFG, runtime=RuntimeConfig(processes=1), datasets=DatasetsConfig(**datasets))
    ctx = stage_context(tmp_path / "repo", stage, cfg, tmp_path / "work", **item)
    _stores(tmp_path / "repo/artifacts/features/fewshot/shapes", tmp_path / "repo/artifacts/features/texts/shapes")
    return ctx


@pytest.fixture
def tiny_backbone(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The published backbone replaced by a tiny CLIP; the folders it was loaded from."""
    model, loaded = tiny_clip(), []

    def fake_load(backbone_dir: Path, device: torch.device) -> SimpleNamespace:
        loaded.append(backbone_dir)
        return SimpleNamespace(model=model, tokenizer=tiny_tokenizer())

    monkeypatch.setattr(backbone_load, "load_published_backbone", fake_load)
    return loaded


def _check_side(side: dict, inverted: str) -> None:
    """The selected step is chosen on validation mAP; every reported number is over the test queries."""
    val = {int(s): m for s, m in side["by_step"]["val"].items()}
    assert side["selected_step"] == select_step(val)
    assert side[inverted]["map"] == side["by_step"]["test"][str(side["final_step"])]
    assert side[f"{inverted}_selected"]["map"] == side["by_step"]["test"][str(side["selected_step"])]
    assert side[inverted]["n_queries"] == side["n_test"]


def test_oti_instance_writes_the_contracted_outputs(tmp_path: Path, tiny_backbone: list[Path]) -> None:
    ctx = _ctx(tmp_path, "oti")
    assert ctx.input("features_fewshot") == tmp_path / "repo/artifacts/features/fewshot/shapes"  # its own dataset's
    summary = run_oti(ctx)
    assert tiny_backbone == [ctx.input("backbone")]
    json.dumps(summary)
    assert summary["oti"]["queries"] == 10 and "ovi" not in summary

    store = zarr.open_group(ctx.output() / STORE, mode="r")
    assert store["oti/params"].shape == (10, 1, 128) and store["oti/snapshots"].shape == (10, 3, 128)
    assert store[f"oti/{DONE}"][...].all() and store["oti"].attrs["query_index"] == query_subset(18, 10).tolist()
    assert "ovi" not in store

    metrics = json.loads((ctx.output() / RETRIEVAL).read_text())  # every number; the metrics file: the mAPs
    assert set(metrics) == {"image"}
    img = metrics["image"]
    assert json.loads(ctx.metrics().read_text()) == {"image": {
        "image_to_image": {"map": round(img["image_to_image"]["map"], 4)},
        "oti_to_image": {"map": round(img["oti_to_image"]["map"], 4)},
        "oti_to_image_selected": {"map": round(img["oti_to_image_selected"]["map"], 4)},
        "selected_step": img["selected_step"]}}
    assert "best_step" not in img and "best_map" not in img
    assert set(img["by_step"]) == {"val", "test"} and set(img["by_step"]["val"]) == {"1", "2", "3"}
    assert (img["n_queries"], img["n_val"], img["n_test"]) == (10, 5, 5)
    _check_side(img, "oti_to_image")
    assert img["final_step"] == 3
    assert img["map_gain"] == pytest.approx(img["oti_to_image"]["map"] - img["image_to_image"]["map"])
    assert 0 < img["image_to_image"]["map"] <= 1
    assert img["class_text_to_image"]["n_queries"] == 3

    # per-query AP: both methods at every recorded step over both splits; the test means are the headline numbers
    table = pl.read_parquet(ctx.output() / PER_QUERY_AP)
    assert table.columns == ["direction", "method", "step", "query", "split", "ap"]
    assert table.height == 10 * (1 + 3)
    assert table.group_by("method").agg(pl.col("step").unique().sort()).sort("method").rows() == [
        ("image_to_image", [-1]), ("oti_to_image", [1, 2, 3])]
    oti_rows = table.filter(pl.col("method") == "oti_to_image", pl.col("step") == 3)
    assert oti_rows["query"].to_list() == query_subset(18, 10).tolist()
    assert (oti_rows["split"] == "val").sum() == 5
    for method, step in (("oti_to_image", 3), ("image_to_image", -1)):
        rows = table.filter(pl.col("method") == method, pl.col("step") == step)
        assert rows["ap"].filter(rows["split"] == "test").mean() == pytest.approx(img[method]["map"], rel=1e-12)

    # the test numbers are the metrics of the test queries alone, computed from scratch
    test_idx = (oti_rows["split"] == "test").to_numpy()
    qi = query_subset(18, 10)
    fs = zarr.open_group(ctx.input("features_fewshot") / "fewshot.zarr", mode="r")
    ql, g, gl = fs["test/label"][...][qi], fs["train/image"][...], fs["train/label"][...]
    snaps = store["oti/snapshots"][...]
    assert retrieval_metrics(snaps[test_idx, 2], ql[test_idx], g, gl).as_dict() == pytest.approx(img["oti_to_image"])
    assert retrieval_metrics(snaps[:, 2], ql, g, gl).map != pytest.approx(img["oti_to_image"]["map"])  # not all

    with ctx.plot("oti_map_vs_step").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "oti_to_image", "image_to_image"] and [r["step"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["image_to_image"]) == pytest.approx(img["image_to_image"]["map"], abs=1e-6)
    assert float(rows[1]["oti_to_image"]) == pytest.approx(img["by_step"]["test"]["2"], abs=1e-6)
    with ctx.plot("inversion_similarity").open() as f:
        sims = list(csv.DictReader(f))
    assert list(sims[0]) == ["cosine", "image_image", "text_image", "oti_image_step1", "oti_image"]
    width = 2 / CFG.histogram_bins
    assert sum(float(r["image_image"]) for r in sims) * width == pytest.approx(1.0, abs=1e-4)

    # a rerun finds every block finished and reproduces the metrics exactly
    run_oti(ctx)
    assert json.loads((ctx.output() / RETRIEVAL).read_text()) == metrics
    assert pl.read_parquet(ctx.output() / PER_QUERY_AP).equals(table)


def test_ovi_instance_writes_the_contracted_outputs(tmp_path: Path, tiny_backbone: list[Path]) -> None:
    ctx = _ctx(tmp_path, "ovi")
    assert ctx.input("features_text") == tmp_path / "repo/artifacts/features/texts/shapes"
    summary = run_ovi(ctx)
    assert summary["ovi"]["queries"] == 3 and "oti" not in summary
    store = zarr.open_group(ctx.output() / STORE, mode="r")
    assert store["ovi/params"].shape == (3, 1, 96) and store["ovi/losses"].shape == (3, 2) and "oti" not in store
    metrics = json.loads((ctx.output() / RETRIEVAL).read_text())
    assert set(metrics) == {"text"}
    txt = metrics["text"]
    assert set(json.loads(ctx.metrics().read_text())["text"]) == {
        "text_to_text", "ovi_to_text", "ovi_to_text_selected", "selected_step"}
    assert set(txt["by_step"]["test"]) == {"1", "2"} and txt["final_step"] == 2
    assert (txt["n_queries"], txt["n_val"], txt["n_test"]) == (3, 1, 2)
    _check_side(txt, "ovi_to_text")
    assert 0 < txt["ovi_to_text"]["map"] <= 1
    table = pl.read_parquet(ctx.output() / PER_QUERY_AP)
    assert table.height == 3 * (1 + 2) and set(table["direction"]) == {"text"}
    for method, step in (("ovi_to_text", 2), ("text_to_text", -1)):
        rows = table.filter(pl.col("method") == method, pl.col("step") == step)
        assert rows["ap"].filter(rows["split"] == "test").mean() == pytest.approx(txt[method]["map"], rel=1e-12)
    with ctx.plot("ovi_map_vs_step").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "ovi_to_text", "text_to_text"] and [r["step"] for r in rows] == ["1", "2"]


def _test_rows(ctx: StageContext, method: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The test queries (rows of the query set) and their AP of one method at one step, from the per-query table."""
    table = pl.read_parquet(ctx.output() / PER_QUERY_AP)
    rows = table.filter(pl.col("method") == method, pl.col("step") == step, pl.col("split") == "test")
    return rows["query"].to_numpy(), rows["ap"].to_numpy()


def test_same_split_oti_drops_each_query_own_image(tmp_path: Path, tiny_backbone: list[Path]) -> None:
    ctx = _ctx(tmp_path, "oti", image_retrieval={"shapes": {"query_split": "all", "gallery_split": "all"}})
    gen = np.random.default_rng(2)  # unclustered features: retrieval is far from perfect, so a self-match shows
    _write(ctx.input("features_fewshot") / "fewshot.zarr", {
        f"{split}/{name}": data for split, n in (("train", 15), ("test", 18))
        for name, data in (("image", gen.normal(size=(n, 128)).astype(np.float32)), ("label", np.arange(n) % 3))})
    run_oti(ctx)
    img = json.loads((ctx.output() / RETRIEVAL).read_text())["image"]
    fs = zarr.open_group(ctx.input("features_fewshot") / "fewshot.zarr", mode="r")
    images = np.concatenate([fs["train/image"][...], fs["test/image"][...]])  # "all": train, val, test in order
    labels = np.concatenate([fs["train/label"][...], fs["test/label"][...]])
    assert img["n_queries"] == 10 and img["n_gallery"] == 33
    queries, ap = _test_rows(ctx, "image_to_image", -1)
    want = per_query_metrics(images[queries], labels[queries], images, labels, own=queries)
    assert ap == pytest.approx(want.ap, rel=1e-12)
    kept = per_query_metrics(images[queries], labels[queries], images, labels)  # its own image left in: ranked first
    assert (kept.recall_at_1 == 1).all() and kept.ap.mean() > ap.mean()


def test_ovi_ranks_by_qrels_when_the_store_has_them(tmp_path: Path, tiny_backbone: list[Path]) -> None:
    ctx = _ctx(tmp_path, "ovi")
    store = ctx.input("features_text") / "retrieval_text.zarr"
    sets = RelevantSets.from_lists([[0, 5], [1], [2, 3, 4]])  # not the groups: a qrels file's answer
    group = zarr.open_group(store, mode="a").require_group("relevant")
    group.create_array("offsets", data=sets.offsets)
    group.create_array("index", data=sets.index)
    run_ovi(ctx)
    texts = zarr.open_group(store, mode="r")
    queries, ap = _test_rows(ctx, "text_to_text", -1)
    q, g = texts["query/text"][...], texts["gallery/text"][...]
    want = per_query_metrics(q[queries], queries, g, np.zeros(len(g)), relevant=sets.subset(queries))
    assert ap == pytest.approx(want.ap, rel=1e-12)


def test_revisited_oti_reports_the_protocol_per_difficulty(tmp_path: Path, tiny_backbone: list[Path]) -> None:
    ctx = _ctx(tmp_path, "oti")
    fewshot = ctx.input("features_fewshot") / "fewshot.zarr"
    n_db = zarr.open_group(fewshot, mode="r")["train/label"].shape[0]
    gen = np.random.default_rng(1)
    rows = [gen.permutation(n_db)[:6] for _ in range(18)]  # per query: 2 easy, 2 hard, 2 junk database images
    gt = RevisitedGroundTruth(*(RelevantSets.from_lists([r[k:k + 2] for r in rows]) for k in (0, 2, 4)),
                              n_database=n_db)
    write_ground_truth(zarr.open_group(fewshot, mode="a"), gt)
    run_oti(ctx)
    img = json.loads((ctx.output() / RETRIEVAL).read_text())["image"]
    assert "class_text_to_image" not in img  # a revisited "class" is only a search term
    queries, ap = _test_rows(ctx, "image_to_image", -1)
    fs = zarr.open_group(fewshot, mode="r")
    q, g = fs["test/image"][...][queries], fs["train/image"][...]
    medium = gt.subset(queries).medium()
    assert ap == pytest.approx(per_query_metrics(q, queries, g, np.zeros(n_db), relevant=medium).ap)
    want = revisited_metrics(q, g, gt.subset(queries))
    assert img["revisited"]["image_to_image"] == pytest.approx(want)
    headline = json.loads(ctx.metrics().read_text())["image"]["revisited"]["image_to_image"]
    assert headline == {k: round(v, 2) for k, v in want.items() if k.startswith("map_")}


def test_ovi_takes_the_reference_p_of_the_backbone(tmp_path: Path) -> None:
    inversion = InversionConfig(ovi={"num_patches": "reference"})
    for model, pretrained, p in (("ViT-L-14", "openai", 4), ("ViT-B-32-quickgelu", "openai", 1),
                                 ("ViT-L-14", "datacomp_xl_s13b_b90k", 2)):
        cfg = Config(inversion=inversion, backbone={"model": model, "pretrained": pretrained})
        ovi = stage_context(tmp_path, "ovi", cfg, tmp_path / "w", text_dataset="shapes")
        assert instance_config(ovi).ovi.num_patches == p
    oti = stage_context(tmp_path, "oti", Config(inversion=inversion), tmp_path / "w", image_dataset="shapes")
    assert instance_config(oti) is oti.cfg.inversion  # OTI does not read P: the tiny backbone is fine there


def test_missing_store_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_load, "load_published_backbone", lambda d, device: None)
    ctx = stage_context(tmp_path, "oti", Config(inversion=CFG), tmp_path / "w", image_dataset="shapes")
    with pytest.raises(FileNotFoundError, match="fewshot.zarr"):
        run_oti(ctx)
    ctx = stage_context(tmp_path, "ovi", Config(inversion=CFG), tmp_path / "w", text_dataset="shapes")
    with pytest.raises(FileNotFoundError, match="retrieval_text.zarr"):
        run_ovi(ctx)


def test_query_subset_and_histogram() -> None:
    assert query_subset(5, None).tolist() == [0, 1, 2, 3, 4]
    assert query_subset(10, 4).tolist() == [0, 3, 6, 9]
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    dens = similarity_histogram(a, b, torch.linspace(-1, 1, 5))  # bins of width 0.5
    assert dens.tolist() == pytest.approx([0.5, 0.0, 1.0, 0.5])  # cos -1 | - | 0, 0 | 1


def test_worker_processes_give_the_single_process_outputs(smoke_pipeline, tmp_path: Path) -> None:
    """runtime.processes = 2 (the default) runs OTI / OVI shards in worker processes; one process gives the same
    bytes."""
    import shutil

    from pipeline_lib.engine.artifacts import read_manifest
    from pipeline_lib.engine.config import effective_params, load_config
    from pipeline_lib.engine.runner import run_stage
    from pipeline_lib.engine.stages import get_stage, instances

    root = tmp_path / "project"
    shutil.copytree(smoke_pipeline.root, root, symlinks=True)
    pooled = load_config(root)
    assert pooled.runtime.processes == 2
    single = load_config(root, overrides=("runtime.processes=1",))
    for name in ("oti", "ovi"):
        (inst,) = instances(get_stage(name), effective_params(pooled))
        content = read_manifest(root, inst)["content"]
        (result,) = run_stage(root, name, single, force=True)
        assert result.status == "ran"
        assert read_manifest(root, inst)["content"] == content
