"""The real datasets' on-disk layouts, read from replicas with their real names: ImageNet's wnid folders and class
names, FGVC-Aircraft's variant lists, the CoOp split files; and the params a suite of real datasets needs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO
from replicas import COOP, FGVC_VARIANTS, IMAGENET_CLASSES, SIZES, write_coop, write_fgvc, write_imagenet

from pipeline_lib.data.errors import DatasetError
from pipeline_lib.data.imagenet import load_imagenet_dataset
from pipeline_lib.datasets.config import ClassificationDataset
from pipeline_lib.datasets.load import load_classification
from pipeline_lib.engine.config import load_config
from pipeline_lib.engine.params import ParamsError, load_params
from pipeline_lib.engine.preflight import preflight


def test_imagenet_folders_give_sorted_wnid_labels_their_names_and_val_as_test(tmp_path: Path) -> None:
    root = write_imagenet(tmp_path)
    ds = load_classification(ClassificationDataset(root=str(root), format="imagenet"), root)
    assert ds.classnames == [name for _, name in IMAGENET_CLASSES]  # "kite (bird of prey)": names keep spaces
    train = ds.split("train")
    assert len(train) == SIZES["train"] * 3 and train["label"].to_list() == sorted(train["label"].to_list())
    assert ds.split("val") is ds.split("test") and len(ds.split("test")) == SIZES["test"] * 3
    assert all(Path(p).is_file() for p in train["path"].to_list())


def test_imagenet_layout_errors_name_the_problem(tmp_path: Path) -> None:
    root = write_imagenet(tmp_path)
    (root / "images/val/n99999999").mkdir()
    with pytest.raises(DatasetError, match="n99999999.*not train classes"):
        load_imagenet_dataset(root)
    (root / "images/val/n99999999").rmdir()
    (root / "classnames.txt").write_text("n01440764 tench\n")
    with pytest.raises(DatasetError, match="no name for classes"):
        load_imagenet_dataset(root)


def test_fgvc_variant_lists_and_coop_split_files(tmp_path: Path) -> None:
    fgvc = write_fgvc(tmp_path)
    ds = load_classification(ClassificationDataset(root=str(fgvc), format="fgvc_aircraft"), fgvc)
    assert ds.classnames == list(FGVC_VARIANTS) and set(ds.splits) == {"train", "val", "test"}
    for folder, (split_file, image_dir, classes, _) in COOP.items():
        root = write_coop(tmp_path, folder)
        entry = ClassificationDataset(root=str(root), split_file=split_file, image_dir=image_dir)
        assert load_classification(entry, root).classnames == list(classes), folder


def test_a_profiles_datasets_replace_the_shapes_entry_and_no_world_is_needed(tmp_path: Path) -> None:
    raw = load_params(REPO, "semobridge")
    assert "shapes" not in raw["datasets"]["classification"] and len(raw["datasets"]["classification"]) == 11
    cfg = load_config(REPO, "semobridge")
    assert cfg.datasets.classification["dtd"].augment[16].epochs == 5 and cfg.data.generate is False
    with pytest.raises(ParamsError, match="datasets.classification.shapes.root reads the shapes world"):
        preflight(REPO, overrides=("data.generate=false",))
