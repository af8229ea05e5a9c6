"""`bridgeflow plan`: every stage has an estimator, counts follow the params and the datasets, support extraction is
proportional to the images the samples draw, and the probe turns forward passes into time."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO
from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.datasets.config import ClassificationDataset, DatasetsConfig
from pipeline_lib.engine.config import load_config
from pipeline_lib.engine.stages import stage_names
from pipeline_lib.features.stores import support_indices
from pipeline_lib.plan.build import build_plan
from pipeline_lib.plan.estimate import ESTIMATORS
from pipeline_lib.plan.probe import IMAGE_FORWARD


def _coop_split(root: Path, classes: int, train: int, test: int) -> None:
    """A CoOp split file of an ImageNet-like shape (`train` images per class); images are never opened."""
    entries = {split: [[f"c{c}/{split}_{i}.jpg", c, f"class {c}"] for c in range(classes) for i in range(n)]
               for split, n in (("train", train), ("test", test))}
    (root / "images").mkdir(parents=True)
    (root / "split_zhou_Big.json").write_text(json.dumps(entries))


def test_every_stage_has_an_estimator() -> None:
    assert list(ESTIMATORS) == stage_names()


def test_support_extraction_is_proportional_to_the_drawn_images(tmp_path: Path) -> None:
    _coop_split(tmp_path / "big", classes=50, train=200, test=10)
    big = ClassificationDataset(root=str(tmp_path / "big"), split_file="split_zhou_Big.json", train_features=False)
    cfg = load_config(REPO, "smoke").model_copy(update={"datasets": DatasetsConfig(
        classification={"shapes": ClassificationDataset(), "big": big})})
    rows = {r["instance"]: r for r in build_plan(tmp_path, cfg, ["fewshot_report"], with_probe=False).rows}
    labels = [c for c in range(50) for _ in range(200)]
    views = cfg.features.views
    for shots in cfg.fewshot.shots:
        for seed in cfg.fewshot.seeds:
            drawn = len(support_indices(labels, shots, seed))
            assert drawn == 50 * shots  # the sample, not the split
            assert rows[f"support@big-{shots}-{seed}"]["work"] == {IMAGE_FORWARD: drawn * views}
    assert rows["features_fewshot@big"]["work"] == {IMAGE_FORWARD: 50 * 10}  # test only: no train features
    d = cfg.data  # the shapes world before the data stage: sized from its params
    shapes = len(d.shapes) * (d.fewshot_val_per_class + d.fewshot_test_per_class + d.fewshot_train_per_class)
    assert rows["features_fewshot@shapes"]["work"] == {IMAGE_FORWARD: shapes}
    assert all(r["seconds"] is None for r in rows.values())  # no probe, no time


def test_probe_times_the_forward_passes(tmp_path: Path) -> None:
    cfg = load_config(REPO, "smoke", ("runtime.device=cpu",))
    plan = build_plan(tmp_path, cfg, ["inversion"], with_probe=True)
    assert plan.probe is not None and all(rate > 0 for rate in plan.probe.rates.values())
    rows = {r["instance"]: r for r in plan.rows}
    forwards = rows["features_fewshot@shapes"]["work"][IMAGE_FORWARD]
    assert rows["features_fewshot@shapes"]["seconds"] == forwards / plan.probe.rates[IMAGE_FORWARD]
    assert rows["inversion"]["seconds"] > 0 and plan.totals()["seconds"] >= rows["inversion"]["seconds"]


def test_cli_prints_the_plan_as_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--root", str(REPO), "--profile", "smoke", "--no-probe", "--json",
                                      "--stage", "fewshot_bridge"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert [r["instance"] for r in plan["instances"]] == ["data", "backbone", "features_fewshot@shapes",
                                                          "fewshot_bridge@shapes"]
    assert plan["probe"] is None and plan["totals"]["work"][IMAGE_FORWARD] > 0
