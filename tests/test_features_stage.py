"""The features stage end to end on a handful of PNGs with a tiny random-init open_clip model: store contents,
resumption after a simulated kill (byte-identical stores) and DataLoader workers giving the same features."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import open_clip
import polars as pl
import pytest
import torch
import zarr
from conftest import stage_context
from model_fixtures import TINY_CONTEXT, TINY_IMAGE_SIZE, tiny_clip, tiny_tokenizer
from PIL import Image, ImageDraw

from pipeline_lib.backbone.load import Backbone
from pipeline_lib.datasets.config import ClassificationDataset, DatasetsConfig
from pipeline_lib.engine.config import Config, RuntimeConfig
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.store import ArraySpec, BlockGroup, read_array
from pipeline_lib.features import shards, stage
from pipeline_lib.features.config import FeaturesConfig
from pipeline_lib.features.extract import ImageViewsDataset, extract_to_blocks, image_encoder
from pipeline_lib.fewshot.config import FewshotConfig
from pipeline_lib.fewshot.sampling import sample_fewshot_indices

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
SHAPES = ("circle", "square")


def _draw(path: Path, colour: str, shape: str, k: int) -> None:
    img = Image.new("RGB", (32, 32), (240 - 10 * k % 60, 235, 230))
    box = (6 + k % 4, 6 + k % 3, 24 + k % 4, 25)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _make_data(root: Path) -> Path:
    """A tiny CoOp dataset, CZSL dataset and text-retrieval table in the data stage's layout."""
    data = root / "artifacts" / "data"
    fs = data / "fewshot" / "shapes"
    split: dict[str, list] = {}
    for name, n in (("train", 5), ("val", 1), ("test", 2)):
        split[name] = []
        for label, colour in enumerate(COLOURS):
            for k in range(n):
                rel = f"{colour}/{name}_{k}.png"
                _draw(fs / "images" / rel, colour, SHAPES[k % 2], k)
                split[name].append([rel, label, colour])
    (fs / "split_zhou_Shapes.json").write_text(json.dumps(split))

    cz = data / "czsl" / "shapes"
    pairs = {"train": ["red circle", "blue square"], "val": ["red square"], "test": ["blue circle", "red circle"]}
    (cz / "compositional-split-natural").mkdir(parents=True)
    for name, lines in pairs.items():
        (cz / "compositional-split-natural" / f"{name}_pairs.txt").write_text("\n".join(lines) + "\n")
    meta = []
    for set_name, lines in pairs.items():
        for line in lines:
            attr, obj = line.split()
            for k in range(2):
                image = f"{attr}_{obj}/{set_name}_{k}.png"
                _draw(cz / "images" / image, attr, obj, k)
                meta.append({"image": image, "attr": attr, "obj": obj, "set": set_name})
    torch.save(meta, cz / "metadata_compositional-split-natural.t7")

    (data / "retrieval").mkdir(parents=True)
    pl.DataFrame(
        {
            "text": ["a red circle.", "a circle in red.", "a blue square.", "a square, blue.", "a red square."],
            "group": [0, 0, 1, 1, 2],
            "split": ["query", "gallery", "query", "gallery", "gallery"],
        }
    ).write_parquet(data / "retrieval" / "texts.parquet")
    return data


def _backbone() -> Backbone:
    """The tiny backbone with CLS ('tok') pooling, so the CZSL store's CLS token equals the pooled image feature."""
    return Backbone(
        model=tiny_clip(pool_type="tok"),
        preprocess=open_clip.image_transform(TINY_IMAGE_SIZE, is_train=False),
        tokenizer=tiny_tokenizer(),
        name="tiny-test",
        pretrained=None,
        fingerprint="f" * 64,
        image_size=TINY_IMAGE_SIZE,
        context_length=TINY_CONTEXT,
    )


#: The feature stages' instances: the shapes dataset, the support of its seed-1 samples (1 and 2 shots: SHOTS), the
#: CZSL and text stores.
SHOTS = [1, 2]
ITEMS = {"features_fewshot": {"dataset": "shapes"}, "support": {"dataset": "shapes", "seed": 1},
         "features_czsl": {"czsl_dataset": "shapes"}, "features_text": {"text_dataset": "shapes"}}
RUNNERS = {"features_fewshot": stage.run_features_fewshot, "support": stage.run_support,
           "features_czsl": stage.run_features_czsl, "features_text": stage.run_features_text}
IMAGE_STAGES = ("features_fewshot", "support", "features_czsl")  # sharded by image blocks


def _ctx(root: Path, work: Path, name: str = "features_fewshot", **entry) -> StageContext:
    """A context of one feature stage instance (ITEMS), the shapes entry updated with `entry`."""
    cfg = Config(
        datasets=DatasetsConfig(classification={"shapes": ClassificationDataset(**entry)}),
        features=FeaturesConfig(batch_size=4, views=3, rows_per_chunk=2, rows_per_shard=4),
        fewshot=FewshotConfig(shots=SHOTS),
        runtime=RuntimeConfig(device="cpu", num_workers=0, progress=False),
    )
    return stage_context(root, name, cfg, work, **ITEMS[name])


def run_all(root: Path, work: Path) -> dict:
    """Every feature stage into `work`: each one's summary by name, and the work they did together."""
    summaries = {name: run(_ctx(root, work, name)) for name, run in RUNNERS.items()}
    return {**summaries, **{key: sum(s[key] for s in summaries.values()) for key in ("images_encoded",
                                                                                     "blocks_skipped")}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    _make_data(root)
    return root


@pytest.fixture
def published(monkeypatch) -> Backbone:
    bb = _backbone()
    monkeypatch.setattr("pipeline_lib.backbone.load.load_published_backbone", lambda *_a, **_k: bb)
    return bb


def _tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


class Killed(Exception):
    pass


def test_stage_end_to_end_and_resume(world: Path, tmp_path: Path, published: Backbone, monkeypatch) -> None:
    t0 = time.perf_counter()
    summary = run_all(world, tmp_path / "full")
    elapsed = time.perf_counter() - t0
    features = tmp_path / "full" / "artifacts" / "features"
    fs = features / "fewshot" / "shapes" / "fewshot.zarr"

    # Few-shot store: shapes, labels, plain train images, text and clip arrays.
    image = read_array(fs, "train/image")
    assert image.shape == (15, 128) and "views" not in zarr.open_group(str(fs))["train"]
    np.testing.assert_array_equal(read_array(fs, "train/label"), np.repeat([0, 1, 2], 5))
    # Support stores of seed 1, one per shot count: every view of the 2 x 3 images its 2-shot sample draws (view 0 =
    # plain image), the 1 x 3 of its 1-shot sample.
    assert read_array(features / "support/shapes/s1/k1/support.zarr", "train/views").shape == (3, 3, 128)
    sp = features / "support" / "shapes" / "s1" / "k2" / "support.zarr"
    index, views = read_array(sp, "train/index"), read_array(sp, "train/views")
    assert index.tolist() == sorted(sample_fewshot_indices(np.repeat([0, 1, 2], 5).tolist(), 2, 1))
    assert views.shape == (6, 3, 128) and read_array(sp, "sampling/labels").shape == (15,)
    np.testing.assert_allclose(views[:, 0], image[index], rtol=1e-5, atol=1e-6)
    assert not np.allclose(views[:, 1], views[:, 0])
    np.testing.assert_array_equal(read_array(fs, "test/index"), np.arange(6))
    with torch.no_grad():
        ds = ImageViewsDataset(
            [str(world / "artifacts/data/fewshot/shapes/images/blue/test_1.png")], published.preprocess
        )
        direct = published.model.encode_image(ds.finish(ds[0][1])).numpy()  # (1, D), raw (not normalised)
    np.testing.assert_allclose(read_array(fs, "test/image")[3], direct[0], rtol=1e-4, atol=1e-5)
    assert read_array(fs, "text/class_proj").shape == (3, 128)
    assert read_array(fs, "text/prompt_eos").shape == (3, 1, 128)
    np.testing.assert_allclose(read_array(fs, "clip/text_projection"), published.model.text_projection.detach().numpy())
    assert float(read_array(fs, "clip/logit_scale")) == pytest.approx(1 / 0.07, rel=1e-4)

    # CZSL store: tokens (CLS + 64 patches), labels into the closed-world pair list.
    cz = features / "czsl" / "shapes" / "czsl.zarr"
    tokens = read_array(cz, "train/tokens")
    assert tokens.shape == (4, 65, 128)
    # One pass gives both: with 'tok' pooling the CLS token in the joint space is the pooled feature.
    np.testing.assert_allclose(tokens[:, 0], read_array(cz, "train/image"), rtol=1e-5, atol=1e-6)
    # closed-world pairs, sorted: blue circle, blue square, red circle, red square
    assert read_array(cz, "test/pair").tolist() == [0, 0, 2, 2]
    rt = features / "texts" / "shapes" / "retrieval_text.zarr"
    assert read_array(rt, "gallery/text").shape == (3, 128)
    assert read_array(rt, "gallery/group").tolist() == [0, 1, 2]

    assert summary["features_fewshot"]["fewshot"]["train"]["forwards"] == 15  # each train image once
    assert summary["support"]["support"]["k2"]["train"]["forwards"] == 18 and summary["support"]["images_per_s"] > 0
    assert summary["support"]["files"].keys() == {"k1/support.zarr", "k2/support.zarr"}
    assert not (tmp_path / "full" / "metrics").exists()  # bookkeeping is the manifest's, not a metrics file
    assert elapsed < 20, f"tiny stage took {elapsed:.1f} s"

    # Kill after 3 blocks, rerun: the finished blocks are skipped and the stores end byte-identical.
    calls: list[tuple] = []

    def kill(store: str, group: str, block: int) -> None:
        calls.append((store, group, block))
        if len(calls) == 3:
            raise Killed

    monkeypatch.setattr(stage, "after_block", kill)
    with pytest.raises(Killed):
        stage.run_features_fewshot(_ctx(world, tmp_path / "resumed"))
    monkeypatch.setattr(stage, "after_block", None)
    rerun = run_all(world, tmp_path / "resumed")
    assert rerun["blocks_skipped"] == 3
    assert rerun["images_encoded"] == summary["images_encoded"]  # the killed run's blocks count too
    full_tree = _tree(tmp_path / "full" / "artifacts" / "features")
    assert full_tree == _tree(tmp_path / "resumed" / "artifacts" / "features")
    # Sharding: 3 chunks of 2 rows in 2 shard files of 4 rows (one per block).
    views = "support/shapes/s1/k2/support.zarr/train/views/c/"
    assert sorted(k for k in full_tree if k.startswith(views)) == [f"{views}{i}/0/0" for i in range(2)]


def test_summary_counts_the_blocks_shard_workers_encoded(
    world: Path, tmp_path: Path, published: Backbone
) -> None:
    """Under scale-out the stage call finds every image block done by shard workers; its summary (the manifest) still
    counts their work (from the block records they leave in the scratch folder), and the stores stay byte-identical."""
    single = run_all(world, tmp_path / "single")
    planned = 0
    for name in IMAGE_STAGES:
        shard_list = shards.plan_shards(_ctx(world, tmp_path / "sharded", name))
        for shard in reversed(shard_list):  # any order, each from a worker's own context
            done = shards.extract_shard(_ctx(world, tmp_path / "sharded", name), shard)
            assert done["blocks_written"] == len(shard.blocks) and done["forwards"] > 0
        planned += len(shard_list)
    sharded = run_all(world, tmp_path / "sharded")

    assert sharded["blocks_skipped"] == planned > 1  # one block per shard, all written by the workers
    assert sharded["images_encoded"] == single["images_encoded"] == 15 + 3 + 6 + (3 + 6) * 3 + 4 + 2 + 4
    assert all(sharded[name]["images_per_s"] > 0 for name in IMAGE_STAGES)
    groups = [("features_fewshot", ("fewshot",), s) for s in ("train", "val", "test")]
    groups += [("support", ("support", f"k{k}"), "train") for k in SHOTS]
    for name, store, split in groups + [("features_czsl", ("czsl",), s) for s in ("train", "val", "test")]:
        got, want = sharded[name], single[name]
        for key in (*store, split):
            got, want = got[key], want[key]
        assert got["forwards"] == want["forwards"] and got["images"] == want["images"], (store, split)
        assert got["blocks_written"] == 0 and got["seconds"] > 0 and got["images_per_s"] > 0, (store, split)
    features = Path("artifacts") / "features"
    assert _tree(tmp_path / "sharded" / features) == _tree(tmp_path / "single" / features)  # no records in outputs


def test_bad_template_fails_before_extraction(world: Path, tmp_path: Path, published: Backbone) -> None:
    ctx = _ctx(world, tmp_path, cupl_file=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="cupl_file"):
        stage.run_features_fewshot(ctx)
    assert not (tmp_path / "artifacts" / "features" / "fewshot" / "shapes" / "fewshot.zarr" / "train").exists()


def test_worker_processes_give_identical_features(world: Path, tmp_path: Path) -> None:
    bb = _backbone()
    paths = sorted(str(p) for p in (world / "artifacts/data/fewshot/shapes/images").rglob("*.png"))[:6]
    cfg = FeaturesConfig()
    results = []
    for workers, name in ((0, "a.zarr"), (1, "b.zarr")):
        bg = BlockGroup.create_or_resume(
            tmp_path / name,
            "g",
            [ArraySpec("image", (6, 128), "float32"), ArraySpec("views", (6, 2, 128), "float32")],
            rows_per_chunk=2,
            rows_per_shard=4,
        )
        ds = ImageViewsDataset(paths, bb.preprocess, views=2, augment=cfg.augment, seed=3, crop_size=32)
        stats = extract_to_blocks(
            bg,
            ds,
            image_encoder(bb.model),
            {},
            batch_size=3,
            device=torch.device("cpu"),
            num_workers=workers,
            views_key="views",
        )
        assert stats.blocks_written == 2 and stats.forwards == 12
        results.append(read_array(tmp_path / name, "g/views"))
    np.testing.assert_array_equal(results[0], results[1])


def test_batch_normalize_tail_is_bit_identical(world: Path) -> None:
    pre = open_clip.image_transform(32, is_train=False)
    paths = sorted(str(p) for p in (world / "artifacts/data/czsl/shapes/images").rglob("*.png"))[:4]
    split = ImageViewsDataset(paths, pre)
    whole = ImageViewsDataset(paths, pre, split=False)
    assert split.batch_tail is not None and whole.batch_tail is None
    raw = torch.stack([split[i][1][0] for i in range(4)])  # (4, 3, 32, 32)
    assert raw.dtype == torch.uint8
    expected = torch.stack([whole[i][1][0] for i in range(4)])
    assert torch.equal(split.finish(raw), expected)
    # A preprocess of another shape runs whole per image.
    assert ImageViewsDataset(paths, lambda img: pre(img)).batch_tail is None
