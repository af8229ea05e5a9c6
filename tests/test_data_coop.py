"""CoOp split loading and image reading: valid datasets load; every kind of bad input names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_lib.data.coop import load_coop_dataset
from pipeline_lib.data.images import DatasetError, load_rgb


def _make_dataset(root: Path, split: dict | None = None, write_images: bool = True) -> Path:
    """A tiny oxford_pets-like folder: images/<class>/<file>.jpg + split_zhou_Pets.json."""
    split = split or {
        "train": [["cat/a.jpg", 0, "cat"], ["dog/b.jpg", 1, "dog"]],
        "val": [["cat/c.jpg", 0, "cat"]],
        "test": [["dog/d.jpg", 1, "dog"], ["cat/e.jpg", 0, "cat"]],
    }
    if write_images:
        for rows in split.values():
            for relpath, _, _ in rows:
                path = root / "images" / relpath
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path, format="JPEG")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "split_zhou_Pets.json").write_text(json.dumps(split))
    return root


def test_loads_splits_with_absolute_paths_in_file_order(tmp_path: Path) -> None:
    ds = load_coop_dataset(_make_dataset(tmp_path), "split_zhou_Pets.json", "images")
    assert ds.classnames == ["cat", "dog"] and ds.num_classes == 2
    test = ds.split("test")
    assert test.columns == ["path", "label", "classname"]
    assert str(test["label"].dtype) == "Int64"
    assert test["label"].to_list() == [1, 0]
    assert test["path"][0] == str((tmp_path / "images" / "dog" / "d.jpg").resolve())
    assert load_rgb(test["path"][0]).size == (8, 8)
    with pytest.raises(DatasetError, match="split 'holdout' not in"):
        ds.split("holdout")


def test_missing_split_file_and_image_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="CoOp split file not found: .*split_zhou_Nope.json"):
        load_coop_dataset(tmp_path, "split_zhou_Nope.json", "images")
    (tmp_path / "split.json").write_text("{}")
    with pytest.raises(DatasetError, match="CoOp image folder not found"):
        load_coop_dataset(tmp_path, "split.json", "pictures")


def test_missing_images_are_listed(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path)
    (root / "images" / "dog" / "d.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 test images are missing; first: .*dog/d\.jpg"):
        load_coop_dataset(root, "split_zhou_Pets.json", "images")
    assert load_coop_dataset(root, "split_zhou_Pets.json", "images", check_files=False).num_classes == 2


@pytest.mark.parametrize(
    ("split", "fragment"),
    [
        ({"train": [["a.jpg", 0, "cat"]]}, "expected 'train' and 'test'"),
        ({"train": [], "test": [], "extra": []}, "unknown: \\['extra'\\]"),
        ({"train": [["a.jpg", "0", "cat"]], "test": []}, "expected \\[relpath: str, label: int, classname: str\\]"),
        ({"train": [["a.jpg", 0]], "test": []}, "train\\[0\\]"),
        ({"train": [["a.jpg", 0, "cat"]], "test": [["b.jpg", 0, "dog"]]}, "label 0 is named both 'cat' and 'dog'"),
        ({"train": [["a.jpg", 0, "cat"], ["b.jpg", 2, "dog"]], "test": []}, "labels must be 0..C-1 .* first \\[1\\]"),
        ({"train": [["a.jpg", -1, "cat"]], "test": []}, "negative label -1"),
        ({"train": [["a.jpg", 0, "cat"], ["b.jpg", 1, "cat"]], "test": []}, "class name 'cat' has two labels"),
        ({"train": [], "test": []}, "no entries"),
        ({"train": {"a.jpg": 0}, "test": []}, "must be a list"),
    ],
)
def test_malformed_split_files(tmp_path: Path, split: dict, fragment: str) -> None:
    root = _make_dataset(tmp_path, split=split, write_images=False)
    with pytest.raises(DatasetError, match=fragment):
        load_coop_dataset(root, "split_zhou_Pets.json", "images", check_files=False)


def test_unparseable_split_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "split.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read CoOp split file .*split.json"):
        load_coop_dataset(tmp_path, "split.json")


def test_load_rgb_converts_and_names_bad_files(tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 7, np.uint8), "L").save(grey)
    image = load_rgb(grey)
    assert image.mode == "RGB" and image.size == (5, 4)

    with pytest.raises(DatasetError, match="image file not found: .*absent.png"):
        load_rgb(tmp_path / "absent.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"definitely not an image")
    with pytest.raises(DatasetError, match="garbage.jpg"):
        load_rgb(garbage)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:-400])
    with pytest.raises(DatasetError, match="truncated.png"):
        load_rgb(truncated)
    with pytest.raises(DatasetError, match="directory"):
        load_rgb(tmp_path)
