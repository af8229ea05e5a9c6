"""The retrieval benchmarks' own layouts and params: CUB and SOP read from replicas with their real names, the
image-retrieval splits a params entry may name, and every text format through the one loader the stores use."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from replica_texts import write_imdb, write_nanobeir, write_newsgroups, write_nocaps
from replicas import CUB_CLASSES, CUB_IMAGES, SOP_IMAGES, write_cub, write_karpathy, write_sop

from pipeline_lib.data.errors import DatasetError
from pipeline_lib.datasets.config import ClassificationDataset, DatasetsConfig, TextRetrievalDataset
from pipeline_lib.datasets.load import load_classification
from pipeline_lib.datasets.texts import group_ids, load_retrieval_texts


def test_cub_lists_give_its_train_test_split_and_readable_class_names(tmp_path: Path) -> None:
    root = write_cub(tmp_path)
    ds = load_classification(ClassificationDataset(root=str(root), format="cub"), root)
    assert ds.classnames == ["Black footed Albatross", "Laysan Albatross"]
    assert set(ds.splits) == {"train", "test"}
    assert len(ds.split("train")) == 2 * len(CUB_CLASSES) and len(ds.split("test")) == (CUB_IMAGES - 2) * 2
    assert ds.split("test")["label"].to_list() == [0, 1]
    (root / "train_test_split.txt").write_text("1 1\n")  # image 2 has no flag
    with pytest.raises(DatasetError, match="lacks its class label or its train/test flag"):
        load_classification(ClassificationDataset(root=str(root), format="cub"), root)


def test_sop_products_are_classes_over_both_files(tmp_path: Path) -> None:
    root = write_sop(tmp_path)
    ds = load_classification(ClassificationDataset(root=str(root), format="sop", image_dir=""), root)
    assert ds.classnames == ["bicycle 1", "cabinet 2", "chair 3", "sofa 4"]
    test = ds.split("test")
    assert test["label"].to_list() == [2] * SOP_IMAGES + [3] * SOP_IMAGES
    assert all(Path(p).is_file() for p in test["path"].to_list())
    (root / "Ebay_test.txt").write_text("image_id class_id path\n")
    with pytest.raises(DatasetError, match="expected image_id class_id super_class_id path"):
        load_classification(ClassificationDataset(root=str(root), format="sop", image_dir=""), root)


def test_image_retrieval_splits_same_split_all_and_revisited() -> None:
    cfg = DatasetsConfig(image_retrieval={"shapes": {"query_split": "all", "gallery_split": "all"}})
    assert cfg.image_retrieval["shapes"].query_split == "all"  # same split: each query's own image leaves its ranking
    with pytest.raises(ValidationError, match="reads train images"):
        DatasetsConfig(classification={"shapes": {"train_features": False}},
                       image_retrieval={"shapes": {"query_split": "all", "gallery_split": "all"}})
    DatasetsConfig(classification={"sop": {"format": "sop", "train_features": False}},
                   image_retrieval={"sop": {"query_split": "test", "gallery_split": "test"}})
    with pytest.raises(ValidationError, match="revisited dataset's queries are its test split"):
        DatasetsConfig(classification={"roxford5k": {"format": "revisited"}},
                       image_retrieval={"roxford5k": {"query_split": "train", "gallery_split": "train"}})


@pytest.mark.parametrize(
    ("fmt", "write", "sizes"),
    [("karpathy", lambda root: write_karpathy(root, "coco") / "dataset_coco.json", (3, 12)),
     ("coco_captions", write_nocaps, (3, 27)),
     ("newsgroups", write_newsgroups, (3, 6)),
     ("imdb", write_imdb, (2, 12)),
     ("nanobeir", write_nanobeir, (2, 4))],
)
def test_every_text_format_loads_through_the_store_loader(tmp_path: Path, fmt: str, write: object,
                                                          sizes: tuple[int, int]) -> None:
    path = write(tmp_path)  # type: ignore[operator]
    texts = load_retrieval_texts(TextRetrievalDataset(path=str(path), format=fmt), path)  # type: ignore[arg-type]
    assert (len(texts.query), len(texts.gallery)) == sizes
    query_groups, gallery_groups, names = group_ids(texts)
    assert names == sorted(names) and query_groups.dtype == np.int64
    if fmt == "nanobeir":  # relevance from qrels, not groups
        assert texts.relevant is not None and [len(r) for r in texts.relevant] == [2, 1]
    else:
        assert texts.relevant is None
        assert all((gallery_groups == g).any() for g in query_groups)  # every query has a relevant text


def test_table_groups_keep_numeric_order_and_a_missing_path_is_named(tmp_path: Path) -> None:
    path = tmp_path / "texts.parquet"
    pl.DataFrame({"text": ["a", "b", "c", "d"], "group": [10, 2, 2, 10],
                  "split": ["query", "query", "gallery", "gallery"]}).write_parquet(path)
    texts = load_retrieval_texts(TextRetrievalDataset(path=str(path)), path)
    query_groups, gallery_groups, _ = group_ids(texts)
    assert query_groups.tolist() == [1, 0] and gallery_groups.tolist() == [0, 1]  # 2 sorts before 10
    with pytest.raises(FileNotFoundError, match="text-retrieval folder .* format imdb"):
        load_retrieval_texts(TextRetrievalDataset(path="x", format="imdb"), tmp_path / "aclImdb")


def test_newsgroup_descriptions_of_your_own_replace_the_built_in_queries(tmp_path: Path) -> None:
    path = write_newsgroups(tmp_path)
    mine = {"comp.graphics": "pictures", "rec.autos": "cars", "sci.space": "rockets"}
    (path / "mine.json").write_text(json.dumps(mine))
    entry = TextRetrievalDataset(path=str(path), format="newsgroups", descriptions="mine.json")
    assert load_retrieval_texts(entry, path).query == ["pictures", "cars", "rockets"]
    with pytest.raises(FileNotFoundError, match="relative to the dataset folder"):
        load_retrieval_texts(entry.model_copy(update={"descriptions": "nope.json"}), path)


def test_nanobeir_summaries_replace_the_corpus_and_a_code_carrying_pickle_is_refused(tmp_path: Path) -> None:
    path = write_nanobeir(tmp_path)
    summaries = {d: f"summary of {d}" for d in ("4983", "5836", "7912", "18670")}
    (path / "summarized_text.pkl").write_bytes(pickle.dumps(summaries))
    entry = TextRetrievalDataset(path=str(path), format="nanobeir", summaries="summarized_text.pkl")
    assert load_retrieval_texts(entry, path).gallery == [f"summary of {d}" for d in summaries]
    (path / "summarized_text.pkl").write_bytes(pickle.dumps({"4983": "only one"}))
    with pytest.raises(DatasetError, match="3 document.s. without a summary"):
        load_retrieval_texts(entry, path)
    (path / "summarized_text.pkl").write_bytes(pickle.dumps({"4983": Path("x")}))  # a global: refused, not run
    with pytest.raises(DatasetError, match="disallowed global pathlib"):
        load_retrieval_texts(entry, path)
