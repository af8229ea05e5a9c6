"""The written shapes world: every dataset in its on-disk format, readable by the loaders, byte-deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from data_fixtures import data_stage_context, tiny_data_config

from pipeline_lib.data import vocab
from pipeline_lib.data.coop import load_coop_dataset
from pipeline_lib.data.images import load_rgb
from pipeline_lib.data.stage import run_data, tree_digest
from pipeline_lib.data.world import czsl_pairs, write_shapes_world

CFG = tiny_data_config()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, write_shapes_world(CFG, out)


def test_pretrain_corpus(world: tuple[Path, dict]) -> None:
    out, summary = world
    images = np.load(out / vocab.PRETRAIN_IMAGES)
    labels = pl.read_parquet(out / vocab.PRETRAIN_LABELS)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.height == 20 and labels["index"].to_list() == list(range(20))
    for column in ("shape", "colour", "pattern", "size", "background", "x", "y", "rotation", "distractors", "group"):
        assert column in labels.columns
    assert labels["shape_id"].to_list() == [CFG.shapes.index(s) for s in labels["shape"]]
    # contrast_fraction 0.5 of 20 images in groups of 3 shapes: 3 groups of 3 consecutive rows, 11 independent draws
    groups = labels["group"].to_list()
    assert sorted(groups) == [-1] * 11 + [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for g in range(3):
        first = groups.index(g)
        assert groups[first : first + 3] == [g, g, g]
    assert groups[:9] != [0, 0, 0, 1, 1, 1, 2, 2, 2]  # interleaved with the single images, not all up front
    assert summary["pretrain"] == {"images": 20, "grouped_images": 9, "groups": 3}
    for _, rows in labels.filter(pl.col("group") >= 0).group_by("group"):
        assert sorted(rows["shape"]) == sorted(CFG.shapes)
        assert rows.select(pl.exclude("index", "shape", "shape_id")).unique().height == 1
        members = images[rows["index"].to_numpy()]
        assert len({m.tobytes() for m in members}) == 3


def test_fewshot_is_a_coop_dataset(world: tuple[Path, dict]) -> None:
    out, summary = world
    root = out / vocab.FEWSHOT_ROOT
    ds = load_coop_dataset(root, vocab.FEWSHOT_SPLIT_FILE, vocab.FEWSHOT_IMAGE_DIR)
    assert ds.classnames == list(CFG.shapes)
    assert [ds.split(s).height for s in ("train", "val", "test")] == [9, 6, 9]
    assert summary["fewshot"] == {"classes": 3, "train": 9, "val": 6, "test": 9}
    raw = json.loads((root / vocab.FEWSHOT_SPLIT_FILE).read_text())
    assert raw["train"][0] == ["circle/train_0000.png", 0, "circle"]
    test = ds.split("test")
    for path, classname in zip(test["path"], test["classname"], strict=True):
        assert Path(path).parent.name == classname
    image = load_rgb(test["path"][0])
    assert image.size == (32, 32) and image.mode == "RGB"
    attributes = pl.read_parquet(root / vocab.FEWSHOT_ATTRIBUTES)
    assert attributes.height == 24
    assert (attributes["shape"] == attributes["label"].map_elements(lambda i: CFG.shapes[i], pl.String)).all()


def test_czsl_is_in_the_standard_layout(world: tuple[Path, dict]) -> None:
    import torch

    out, summary = world
    root = out / vocab.CZSL_ROOT
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [vocab.CZSL_SPLIT_DIR, vocab.CZSL_METADATA, vocab.CZSL_IMAGE_DIR]
    )
    split_dir = root / vocab.CZSL_SPLIT_DIR
    assert sorted(p.name for p in split_dir.iterdir()) == ["test_pairs.txt", "train_pairs.txt", "val_pairs.txt"]
    pairs = {}
    for name in ("train", "val", "test"):
        lines = (split_dir / f"{name}_pairs.txt").read_text().splitlines()
        pairs[name] = [tuple(line.split()) for line in lines]
        assert all(len(p) == 2 for p in pairs[name]) and len(set(pairs[name])) == len(pairs[name])
    train = set(pairs["train"])
    assert len(train) == 12 - 4
    # every attribute (colour.pattern, as UT-Zappos writes multi-word names) and every shape keeps a training pair
    assert {a for a, _ in train} == {f"{c}.solid" for c in CFG.colours} and {o for _, o in train} == set(CFG.shapes)
    val_unseen = set(pairs["val"]) - train
    test_unseen = set(pairs["test"]) - train
    assert len(val_unseen) == 2 and len(test_unseen) == 2 and not val_unseen & test_unseen
    assert len(set(pairs["val"]) & train) == 2 and len(set(pairs["test"]) & train) == 2

    metadata = torch.load(root / vocab.CZSL_METADATA, weights_only=True)
    assert isinstance(metadata, list) and all(set(m) == {"image", "attr", "obj", "set"} for m in metadata)
    assert all(all(isinstance(v, str) for v in m.values()) for m in metadata)
    by_set: dict[str, list[dict]] = {}
    for m in metadata:
        by_set.setdefault(m["set"], []).append(m)
        assert m["image"].split("/")[0] == f"{m['attr']}_{m['obj']}"
        assert (root / vocab.CZSL_IMAGE_DIR / m["image"]).is_file()
    assert {k: len(v) for k, v in by_set.items()} == {"train": 16, "val": 4, "test": 8, "NA": 2}
    assert summary["czsl"]["images"] == {"train": 16, "val": 4, "test": 8, "NA": 2}
    assert {(m["attr"], m["obj"]) for m in by_set["train"]} == train
    assert {(m["attr"], m["obj"]) for m in by_set["val"]} == set(pairs["val"])
    assert {(m["attr"], m["obj"]) for m in by_set["test"]} == set(pairs["test"])
    image = load_rgb(root / vocab.CZSL_IMAGE_DIR / by_set["val"][0]["image"])
    assert image.size == (32, 32)


def test_czsl_default_split_measures_composition() -> None:
    """96 compositions, 15 unseen in each of val and test, built alike; no primitive singles out an unseen pair."""
    from pipeline_lib.data.config import DataConfig
    from pipeline_lib.data.world import czsl_attributes, identifying_primitives

    cfg = DataConfig()
    pairs = czsl_pairs(cfg)
    attrs = czsl_attributes(cfg)
    assert attrs[:2] == ["red.striped", "red.dotted"] and len(attrs) * len(cfg.shapes) == 96
    unseen = pairs.val_unseen + pairs.test_unseen
    assert len(pairs.train) == 66 and len(set(unseen)) == 30 and not set(unseen) & set(pairs.train)
    assert len(pairs.val_unseen) == len(pairs.test_unseen) == 15 and len(pairs.val) == len(pairs.test) == 30
    train_attrs, train_objs = {a for a, _ in pairs.train}, {o for _, o in pairs.train}
    assert all(a in train_attrs and o in train_objs for a, o in unseen)
    assert identifying_primitives(pairs.val_unseen, pairs.val) == []
    assert identifying_primitives(pairs.test_unseen, pairs.test) == []
    # 30 unseen over 16 attributes and 6 shapes: spread evenly
    assert max(sum(a == c for a, _ in unseen) for c in attrs) <= 2
    assert max(sum(o == s for _, o in unseen) for s in cfg.shapes) <= 5
    # built alike: every shape has as many unseen pairs in val as in test (within one), and as many candidates
    for split, split_unseen in ((pairs.val, pairs.val_unseen), (pairs.test, pairs.test_unseen)):
        assert {sum(o == s for _, o in split) for s in cfg.shapes} == {5}
        other = pairs.test_unseen if split_unseen is pairs.val_unseen else pairs.val_unseen
        assert all(abs(sum(o == s for _, o in split_unseen) - sum(o == s for _, o in other)) <= 1 for s in cfg.shapes)


def test_too_few_seen_pairs_to_hide_every_unseen_primitive_is_refused() -> None:
    from pipeline_lib.data.config import DataConfig

    with pytest.raises(ValueError, match="identifiable by one primitive"):
        czsl_pairs(DataConfig(czsl_test_seen_pairs=1))


def test_identifying_primitives_finds_a_lonely_attribute() -> None:
    from pipeline_lib.data.world import identifying_primitives

    unseen = [("red", "circle")]
    assert identifying_primitives(unseen, unseen + [("blue", "circle")]) == [(("red", "circle"), "attr")]
    assert identifying_primitives(unseen, unseen + [("blue", "circle"), ("red", "star")]) == []


def test_retrieval_texts(world: tuple[Path, dict]) -> None:
    out, summary = world
    table = pl.read_parquet(out / vocab.RETRIEVAL_TEXTS)
    assert {"text", "group", "split"} <= set(table.columns)
    assert table["group"].dtype == pl.Int64
    assert sorted(table["split"].unique()) == ["gallery", "query"]
    assert table["group"].n_unique() == 6 and table.height == 6 * 5
    for _, rows in table.group_by("group"):
        assert rows["text"].n_unique() == 5
        assert (rows["split"] == "query").sum() == 1
        assert rows.select("shape", "colour", "pattern", "size").unique().height == 1
        assert all(rows["shape"][0] in t and rows["colour"][0] in t for t in rows["text"])
    assert summary["retrieval"] == {"meanings": 6, "queries": 6, "gallery": 24}


def test_same_seed_same_bytes_serial_equals_parallel_other_seed_differs(
    world: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = world
    reference = tree_digest(out)
    write_shapes_world(CFG, tmp_path / "parallel", workers=2)
    assert tree_digest(tmp_path / "parallel") == reference
    write_shapes_world(CFG.model_copy(update={"seed": 1}), tmp_path / "seed1")
    assert tree_digest(tmp_path / "seed1") != reference


def test_rewriting_replaces_stale_files(tmp_path: Path) -> None:
    write_shapes_world(CFG, tmp_path)
    stale = tmp_path / vocab.FEWSHOT_ROOT / "images" / "circle" / "stale.png"
    stale.write_bytes(b"x")
    write_shapes_world(CFG.model_copy(update={"fewshot_test_per_class": 1}), tmp_path)
    assert not stale.exists()
    assert not (tmp_path / vocab.FEWSHOT_ROOT / "images" / "circle" / "test_0002.png").exists()


def test_stage_writes_outputs_and_deterministic_metrics(tmp_path: Path) -> None:
    summaries = []
    for run in ("a", "b"):
        ctx = data_stage_context(CFG, tmp_path / run)
        summaries.append(run_data(ctx))
        assert (tmp_path / run / "artifacts/data" / vocab.PRETRAIN_IMAGES).is_file()
    metrics = [json.loads((tmp_path / r / "metrics/data.json").read_text()) for r in ("a", "b")]
    assert metrics[0] == metrics[1]  # no timings in metrics: same params + seed => same metrics
    assert metrics[0]["images_total"] == 20 + 24 + 30 and metrics[0]["fewshot_test_images"] == 9
    assert summaries[0]["fewshot"]["test"] == 9 and len(summaries[0]["content_sha256"]) == 64
    assert summaries[0]["seconds"]["total"] > 0 and summaries[0]["cpu_seconds"]["main"] > 0
    json.dumps(summaries[0])  # the summary must be JSON-serialisable


def test_czsl_loader_reads_the_written_dataset(world: tuple[Path, dict]) -> None:
    from pipeline_lib.czsl.data import load_czsl_dataset

    out, _ = world
    ds = load_czsl_dataset(out / vocab.CZSL_ROOT)
    assert ds.attrs == sorted(f"{c}.solid" for c in CFG.colours) and ds.objs == sorted(CFG.shapes)
    assert len(ds.train_pairs) == 8
