"""CZSL loader on a fixture written in the standard layout (spec 1.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from czsl_fixtures import METADATA, TRAIN_PAIRS, write_czsl_fixture

from pipeline_lib.czsl.data import check_split_sizes, clean_name, load_czsl_dataset, read_pair_splits
from pipeline_lib.czsl.sizes import EXPECTED_SIZES, ExpectedSizes


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return write_czsl_fixture(tmp_path / "shapes")


CLOSED = [
    ("blue", "ball"),
    ("blue", "cone"),
    ("blue", "cube"),
    ("green", "ball"),
    ("green", "cube"),
    ("red", "ball"),
    ("red", "cone"),
    ("red", "cube"),
]


def test_vocabularies_and_pair_orders(root: Path) -> None:
    ds = load_czsl_dataset(root, "closed")
    assert ds.attrs == ["blue", "green", "red"]
    assert ds.objs == ["ball", "cone", "cube"]
    assert ds.pairs == CLOSED == ds.closed_pairs
    assert ds.train_pairs == TRAIN_PAIRS  # file order kept
    ow = load_czsl_dataset(root, "open")
    assert len(ow.pairs) == 9
    for p, (a, o) in enumerate(ow.pairs):  # attr-major: index = a_idx * |O| + o_idx
        assert p == ow.attr2idx[a] * 3 + ow.obj2idx[o]
    assert ow.pairs[4] == ("green", "cone")  # in no pair file, still a candidate in the open world
    assert ow.closed_pairs == CLOSED


def test_filter_and_routing_by_set(root: Path) -> None:
    ds = load_czsl_dataset(root, "closed")
    assert ds.skipped == {"attr_na": 1, "set_na": 1, "pair_not_listed": 1}
    assert ds.split("train")["image"].to_list() == [
        "red_ball/0.png",
        "green_cube/0.png",
        "blue_cone/0.png",
        "red_cube/0.png",
    ]
    # red_ball is a train pair but this image's set is 'val'; green_cube is seen but listed for test.
    assert ds.split("val")["image"].to_list() == ["red_ball/1.png", "green_ball/0.png", "blue_cube/0.png"]
    assert ds.split("test")["image"].to_list() == [
        "green_cube/1.png",
        "red_cone/0.png",
        "blue_ball/0.png",
        "blue_ball/1.png",
    ]
    assert ds.split("val")["seen"].to_list() == [True, False, False]
    # Open world applies the same filter (czsl rule): same rows.
    ow = load_czsl_dataset(root, "open")
    for s in ("train", "val", "test"):
        assert ow.split(s)["image"].to_list() == ds.split(s)["image"].to_list()


def test_labels(root: Path) -> None:
    ds = load_czsl_dataset(root, "closed")
    train = ds.split("train")
    assert train["pair_idx"].to_list() == [0, 1, 2, 3]  # index in train_pairs (file order), not in `pairs`
    assert train["world_pair_idx"].to_list() == [CLOSED.index(p) for p in TRAIN_PAIRS]
    val = ds.split("val")
    assert val["pair_idx"].to_list() == [
        CLOSED.index(("red", "ball")),
        CLOSED.index(("green", "ball")),
        CLOSED.index(("blue", "cube")),
    ]
    assert val["attr_idx"].to_list() == [2, 1, 0] and val["obj_idx"].to_list() == [0, 0, 2]
    ow = load_czsl_dataset(root, "open")
    assert ow.split("val")["pair_idx"].to_list() == [2 * 3 + 0, 1 * 3 + 0, 0 * 3 + 2]
    assert ow.split("train")["pair_idx"].to_list() == [0, 1, 2, 3]
    attr, obj, pair = ow.labels("test")
    assert pair.dtype == torch.long and pair.tolist() == [1 * 3 + 2, 2 * 3 + 1, 0, 0]
    assert torch.equal(ow.pair_attr_idx()[pair], attr) and torch.equal(ow.pair_obj_idx()[pair], obj)


def test_paths_absolute_and_existing(root: Path) -> None:
    ds = load_czsl_dataset(root, "closed")
    for s in ("train", "val", "test"):
        for p in ds.split(s)["path"].to_list():
            assert Path(p).is_absolute() and Path(p).is_file()


def test_masks(root: Path) -> None:
    ds = load_czsl_dataset(root, "closed")
    assert ds.seen_mask.tolist() == [p in TRAIN_PAIRS for p in CLOSED]
    # val phase: val u train; the test-only unseen pairs (red cone, blue ball) are excluded.
    val_mask = ds.closed_mask("val").tolist()
    assert [p for p, m in zip(ds.pairs, val_mask, strict=True) if not m] == [("blue", "ball"), ("red", "cone")]
    assert [p for p, m in zip(ds.pairs, ds.closed_mask("test").tolist(), strict=True) if not m] == [
        ("blue", "cube"),
        ("green", "ball"),
    ]
    ow = load_czsl_dataset(root, "open")
    assert ow.closed_mask("test").all() and ow.closed_mask("val").all()
    assert int(ow.seen_mask.sum()) == 4 and ow.seen_mask[ow.pair2idx[("blue", "cone")]]


def test_clean_name() -> None:
    assert clean_name("Shoes.Flats") == "shoes flats"
    assert clean_name("traffic_light") == "traffic_light"


def test_size_check_names_expected_and_found(tmp_path: Path) -> None:
    root = write_czsl_fixture(tmp_path / "ut-zappos")
    with pytest.raises(ValueError, match=r"n_attrs: expected 16, found 3.*train_images: expected 22998, found 4"):
        load_czsl_dataset(root)
    ds = load_czsl_dataset(root, check_sizes=False)
    assert ds.name == "ut-zappos"
    ok = ExpectedSizes(3, 3, 4, 4, (1, 2), 3, (1, 2), 4)
    check_split_sizes(ds, ok)
    check_split_sizes(ds, ExpectedSizes(3, 3, 4, 4, (2, 1), 3, (1, 2), 4, val_pairs_unordered=True))
    with pytest.raises(ValueError, match=r"val_pairs: expected \(2, 1\), found \(1, 2\)"):
        check_split_sizes(ds, ExpectedSizes(3, 3, 4, 4, (2, 1), 3, (1, 2), 4))
    assert EXPECTED_SIZES["mit-states"].n_attrs * EXPECTED_SIZES["mit-states"].n_objs == 28175
    assert EXPECTED_SIZES["cgqa"].n_attrs * EXPECTED_SIZES["cgqa"].n_objs == 278362


def test_errors_for_missing_files_and_bad_lines(tmp_path: Path) -> None:
    root = write_czsl_fixture(tmp_path / "d")
    pairs_file = root / "compositional-split-natural" / "val_pairs.txt"
    pairs_file.write_text("red ball\ngreen ball extra\n")
    with pytest.raises(ValueError, match=r"val_pairs.txt:2: expected 'attr obj'"):
        read_pair_splits(root)
    pairs_file.write_text("red ball\n\nred ball\n")
    with pytest.raises(ValueError, match=r"val_pairs.txt:3: pair \('red', 'ball'\) repeats line 1"):
        read_pair_splits(root)
    pairs_file.unlink()
    with pytest.raises(FileNotFoundError, match="val_pairs.txt"):
        load_czsl_dataset(root)
    with pytest.raises(FileNotFoundError, match="compositional-split-natural"):
        load_czsl_dataset(tmp_path / "nowhere")


def test_metadata_errors(tmp_path: Path) -> None:
    root = write_czsl_fixture(tmp_path / "d")
    meta = root / "metadata_compositional-split-natural.t7"
    torch.save([{"image": "x.png", "attr": "red", "obj": "ball", "set": 3}], meta)
    with pytest.raises(TypeError, match=r"entry 0 has non-string values \{'set': 3\}"):
        load_czsl_dataset(root)
    torch.save([{"image": "x.png", "attr": "red", "obj": "ball"}], meta)
    with pytest.raises(ValueError, match=r"entry 0 lacks keys \['set'\]"):
        load_czsl_dataset(root)
    torch.save({"image": "x.png"}, meta)
    with pytest.raises(TypeError, match="expected a list of dicts"):
        load_czsl_dataset(root)
    torch.save([{"image": "x.png", "attr": "red", "obj": "ball", "set": _Opaque()}], meta)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_czsl_dataset(root)
    meta.unlink()
    with pytest.raises(FileNotFoundError, match="metadata_compositional-split-natural.t7"):
        load_czsl_dataset(root)


class _Opaque:
    """Something torch.load(weights_only=True) refuses to unpickle."""


def test_missing_image_and_bad_train_entry(tmp_path: Path) -> None:
    root = write_czsl_fixture(tmp_path / "d")
    (root / "images" / METADATA[2][0]).unlink()
    with pytest.raises(FileNotFoundError, match="1 CZSL images .* missing.*blue_cone/0.png"):
        load_czsl_dataset(root)
    assert load_czsl_dataset(root, check_images=False).split("train").height == 4
    bad = [*METADATA, ("red_cone/5.png", "red", "cone", "train")]
    root2 = write_czsl_fixture(tmp_path / "e", metadata=bad)
    with pytest.raises(ValueError, match=r"set='train' but pair \('red', 'cone'\) is not in train_pairs"):
        load_czsl_dataset(root2)
    with pytest.raises(ValueError, match="world='half'"):
        load_czsl_dataset(root, "half")  # type: ignore[arg-type]
