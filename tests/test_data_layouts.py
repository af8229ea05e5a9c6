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


def test_czsl_replicas_load_with_their_real_name_styles(tmp_path: Path) -> None:
    """MIT-States pair folders with a space, UT-Zappos labels with dots (prompted as words), C-GQA names with
    underscores kept and flat image files: each loads in both worlds with every image found."""
    from replicas import CZSL, CZSL_IMAGES_PER_PAIR, CZSL_PAIRS, write_czsl

    from pipeline_lib.czsl.data import clean_name, load_czsl_dataset

    for folder, (attrs, objs, _) in CZSL.items():
        root = write_czsl(tmp_path, folder)
        closed = load_czsl_dataset(root, "closed", check_sizes=False)
        assert closed.attrs == sorted(attrs) and closed.objs == sorted(objs), folder
        assert len(closed.pairs) == 9 and len(load_czsl_dataset(root, "open", check_sizes=False).pairs) == 9
        for split, pairs in CZSL_PAIRS.items():
            paths = closed.split(split)["path"].to_list()
            assert len(paths) == len(pairs) * CZSL_IMAGES_PER_PAIR and all(Path(p).is_file() for p in paths)
    assert clean_name("Boots.Ankle") == "boots ankle" and clean_name("traffic_light") == "traffic_light"
    with pytest.raises(ValueError, match="mit-states"):  # the release's folder name: its published sizes are checked
        load_czsl_dataset(tmp_path / "mit-states", "closed")


def test_the_sam_czsl_profile_lists_three_benchmarks_and_no_classification() -> None:
    cfg = load_config(REPO, "sam_czsl")
    assert list(cfg.datasets.czsl) == ["ut_zappos", "mit_states", "cgqa"] and cfg.datasets.classification == {}
    assert cfg.czsl.mode == "lora" and cfg.backbone.model == "ViT-L-14" and cfg.data.generate is False
    from pipeline_lib.czsl.config import dataset_config

    cgqa = dataset_config(cfg.czsl, cfg.datasets.czsl["cgqa"].overrides, "cgqa")
    assert (cgqa.w_attr, cgqa.w_obj, cgqa.attr_dropout, cgqa.mode) == (0.1, 0.1, 0.0, "lora")


def test_adding_a_czsl_dataset_leaves_the_others_instances_alone() -> None:
    """The CZSL axis keys each instance by its own entry: a second dataset adds its own features and training
    instances, and the shapes instances keep their params subset and upstream instances (so their fingerprints)."""
    from pipeline_lib.engine.artifacts import params_subset
    from pipeline_lib.engine.config import effective_params
    from pipeline_lib.engine.stages import get_stage, instances, upstream_instances

    one = effective_params(load_config(REPO))
    two = effective_params(load_config(REPO, overrides=('datasets.czsl={"shapes": {}, "more": {"root": "x"}}',)))
    for name in ("features_czsl", "czsl"):
        (shapes,) = instances(get_stage(name), one)
        ids = [inst.id for inst in instances(get_stage(name), two)]
        assert ids == [f"{name}@shapes", f"{name}@more"]
        assert params_subset(one, shapes.params) == params_subset(two, shapes.params)
        assert upstream_instances(shapes, one) == upstream_instances(shapes, two)
    claims = instances(get_stage("claims"), two)[0]
    assert [up.id for up in upstream_instances(claims, two) if up.stage.name == "czsl"] == ["czsl@shapes"]
