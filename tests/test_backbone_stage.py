"""The backbone and diagnose stages through their entry points, with a real stage context in tmp."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from backbone_fixtures import SMALL_TRAIN, make_corpus, write_corpus
from conftest import stage_context

from pipeline_lib.backbone import stage
from pipeline_lib.backbone.config import BackboneConfig
from pipeline_lib.backbone.load import load_published_backbone
from pipeline_lib.backbone.pretrain import init_tiny_backbone
from pipeline_lib.diagnose.stage import run_diagnose
from pipeline_lib.engine.config import Config, RuntimeConfig
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.store import write_whole

SMOKE_TRAIN = {**SMALL_TRAIN, "batch_size": 16}


def backbone_ctx(root: Path, work: Path, backbone: BackboneConfig, stage_name: str = "backbone") -> StageContext:
    cfg = Config(backbone=backbone, runtime=RuntimeConfig(device="cpu", progress=False))
    return stage_context(root, stage_name, cfg, work)


def test_backbone_stage_trains_and_publishes(tmp_path: Path) -> None:
    write_corpus(tmp_path / "artifacts" / "data", make_corpus())
    ctx = backbone_ctx(tmp_path, tmp_path / "work", BackboneConfig(train=SMOKE_TRAIN))
    summary = stage.run_backbone(ctx)

    out = tmp_path / "work" / "artifacts" / "backbone"
    assert sorted(p.name for p in out.iterdir()) == ["backbone.json", "model.pt"]  # no checkpoint left behind
    backbone = load_published_backbone(out)
    assert backbone.fingerprint == summary["fingerprint"]
    assert (
        summary["trained"]
        and summary["steps"] == 4
        and set(summary["zero_shot"]) == {"shape", "colour", "pattern", "size"}
    )
    metrics = json.loads((tmp_path / "work" / "metrics" / "backbone.json").read_text())
    assert metrics == {"final_loss": summary["final_loss"], "zero_shot": summary["zero_shot"]}  # the rest: manifest
    with (tmp_path / "work" / "plots" / "backbone_loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and rows[1]["zs_shape"] != "" and rows[0]["zs_shape"] == ""

    again = stage.run_backbone(backbone_ctx(tmp_path, tmp_path / "again", BackboneConfig(train=SMOKE_TRAIN)))
    assert again["fingerprint"] == summary["fingerprint"]  # same params + seed => same weights on CPU


def test_backbone_stage_records_given_weights_without_training(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    source = init_tiny_backbone("bf-tiny-vit-32", seed=5)
    torch.save(source.model.state_dict(), weights)
    summary = stage.run_backbone(backbone_ctx(tmp_path, tmp_path / "work", BackboneConfig(pretrained=str(weights))))
    assert summary["trained"] is False and summary["fingerprint"] == source.fingerprint
    out = tmp_path / "work" / "artifacts" / "backbone"
    assert sorted(p.name for p in out.iterdir()) == ["backbone.json"]
    assert load_published_backbone(out).fingerprint == source.fingerprint


def test_backbone_stage_names_a_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        stage.run_backbone(backbone_ctx(tmp_path, tmp_path / "work", BackboneConfig(train=SMOKE_TRAIN)))


def write_store(path: Path, rng: np.random.Generator) -> None:
    """A few-shot store with 3 well-separated classes in 4-D and a rank-deficient 2x4 text projection."""
    group = zarr.open_group(str(path), mode="w")
    centres = np.eye(4)[:3]
    for split, n in (("train", 30), ("test", 12)):
        labels = np.arange(n) % 3
        write_whole(group.require_group(split), "image", (centres[labels] + 0.1 * rng.normal(size=(n, 4))).astype("f4"))
        write_whole(group.require_group(split), "label", labels.astype("i8"))
    text = group.require_group("text")
    write_whole(text, "class_proj", centres.astype("f4"))
    write_whole(text, "prompt_proj", np.repeat(centres[:, None], 2, axis=1).astype("f4"))
    write_whole(group.require_group("clip"), "text_projection", np.array([[1, 0, 0, 0], [0, 0.1, 0, 0]], "f4"))


def test_diagnose_stage_writes_gap_metrics(tmp_path: Path) -> None:
    write_store(tmp_path / "artifacts" / "features" / "fewshot" / "shapes" / "fewshot.zarr", np.random.default_rng(0))
    cfg = BackboneConfig(diagnose={"shots": [1, 4, 64], "seeds": 2, "bins": 10})
    metrics = run_diagnose(backbone_ctx(tmp_path, tmp_path / "work", cfg, "diagnose"))
    assert metrics["zero_shot_accuracy"] == 1.0 and metrics["retrieval_map"]["class_text_to_image"] == 1.0
    assert set(metrics["prototype_accuracy"]) == {"1_shot", "4_shot"}  # 64 shots > 10 train images per class
    assert metrics["text_projection"]["weak_count"] == 1 and metrics["energy"]["outside_row_space"] > 0.2
    assert 0 < metrics["centroid_distance"] < 2
    saved = json.loads((tmp_path / "work" / "metrics" / "gap.json").read_text())
    assert saved["energy"] == {"weak": metrics["energy"]["weak"]} and len(saved["retrieval_map"]) == 2
    assert sum(len(v) if isinstance(v, dict) else 1 for v in saved.values()) == 9  # the headline, not all 30
    with (tmp_path / "work" / "plots" / "gap_similarity.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 10
    details = json.loads((tmp_path / "work" / "artifacts" / "diagnose" / "gap_details.json").read_text())
    assert len(details["singular_values"]) == 2


def test_diagnose_names_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="features stage"):
        run_diagnose(backbone_ctx(tmp_path, tmp_path / "work", BackboneConfig(), "diagnose"))
