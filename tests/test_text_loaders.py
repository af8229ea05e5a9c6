"""The real text-retrieval formats (NoCaps/COCO captions, 20 Newsgroups bydate, aclImdb, NanoBEIR) read from replicas
in their release layouts: query/gallery sides, groups and qrels, and a clear DatasetError for each broken input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest
from replica_texts import (
    DOCS_PER_GROUP,
    IMDB_IDS,
    NEWSGROUPS,
    NOCAPS_CAPTIONS,
    NOCAPS_IMAGES,
    write_imdb,
    write_nanobeir,
    write_newsgroups,
    write_nocaps,
)

from pipeline_lib.data.errors import DatasetError
from pipeline_lib.datasets.text_formats import (
    IMDB_QUERIES,
    NEWSGROUP_DESCRIPTIONS,
    load_coco_captions,
    load_imdb,
    load_nanobeir,
    load_newsgroups,
)


def test_nocaps_first_caption_queries_the_others(tmp_path: Path) -> None:
    texts = load_coco_captions(write_nocaps(tmp_path))
    names = [name for name, _, _ in NOCAPS_IMAGES]
    assert texts.query_groups == names
    assert texts.query[0] == "A red double decker bus seen up close."  # stripped, despite interleaved annotations
    assert len(texts.gallery) == len(names) * (NOCAPS_CAPTIONS - 1)
    assert texts.gallery_groups == [n for n in names for _ in range(NOCAPS_CAPTIONS - 1)]
    assert texts.gallery[:2] == ["There is a red double decker bus in picture number 1.",
                                 "There is a red double decker bus in picture number 2."]
    assert texts.relevant is None


def test_coco_caption_errors(tmp_path: Path) -> None:
    path = write_nocaps(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_coco_captions(tmp_path / "captions_val2014.json")
    data = json.loads(path.read_text())
    data["images"].append({"id": 99, "file_name": "00ffc3c9ce8e7e6b.jpg"})  # no caption at all
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"00ffc3c9ce8e7e6b\.jpg.*0 non-empty caption"):
        load_coco_captions(path)
    data["images"].pop()
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1][:-1] + [
        {"image_id": 1, "id": 500, "caption": "only one"}, {"image_id": 1, "id": 501, "caption": "   "}]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="1 non-empty caption"):
        load_coco_captions(path)
    path.write_text(json.dumps({"images": [{"id": 0}], "annotations": []}))
    with pytest.raises(DatasetError, match="file_name"):
        load_coco_captions(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid json"):
        load_coco_captions(path)


def test_newsgroups_queries_descriptions_against_header_less_posts(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    base = write_newsgroups(tmp_path)
    (base / "20news-bydate-test" / "sci.space" / "99999").write_bytes(b"From: a@b.c\nSubject: empty\n\n  \n")
    with caplog.at_level(logging.INFO, logger="pipeline_lib.datasets.text_formats"):
        texts = load_newsgroups(base, "test")
    assert "skipped 1 document(s) with an empty body" in caplog.text
    groups = sorted(NEWSGROUPS)
    assert texts.query_groups == groups
    assert texts.query == [NEWSGROUP_DESCRIPTIONS[g] for g in groups]
    assert texts.gallery_groups == [g for g in groups for _ in range(DOCS_PER_GROUP)]
    first = texts.gallery[0]
    assert first.startswith("In article <") and "café" in first and first.endswith("-- signature")
    assert not any(t.startswith("From:") or "Subject:" in t or "\n" in t or "  " in t for t in texts.gallery)
    assert all("test post" in t for t in texts.gallery)
    assert len(load_newsgroups(base, "train").gallery) == len(NEWSGROUPS) * DOCS_PER_GROUP


def test_newsgroups_errors(tmp_path: Path) -> None:
    base = write_newsgroups(tmp_path)
    with pytest.raises(DatasetError, match="20news-bydate-val not found"):
        load_newsgroups(base, "val")
    with pytest.raises(DatasetError, match=r"no description for newsgroup folder\(s\) \['sci.space'\]"):
        load_newsgroups(base, "test", {"comp.graphics": "graphics", "rec.autos": "cars"})
    own = {g: f"posts about {g}" for g in NEWSGROUPS}
    assert load_newsgroups(base, "test", own).query == [own[g] for g in sorted(NEWSGROUPS)]
    (base / "20news-bydate-test" / "misc.forsale").mkdir()  # a group without posts: its query has no relevant text
    with pytest.raises(DatasetError, match=r"\['misc.forsale'\] have no relevant gallery text"):
        load_newsgroups(base, "test")


def test_imdb_reads_labelled_reviews_only(tmp_path: Path) -> None:
    texts = load_imdb(write_imdb(tmp_path))
    assert texts.query == ["a positive review of a movie.", "a negative review of a movie."]
    assert texts.query_groups == ["pos", "neg"] and list(IMDB_QUERIES) == ["pos", "neg"]
    assert len(texts.gallery) == 2 * 2 * len(IMDB_IDS)  # {train,test} x {pos,neg}; unsup is not read
    assert not any("unsup" in t or "<br" in t for t in texts.gallery)
    assert texts.gallery[0] == "test neg review 0: rated 1/10.  Worth noting \u2013 cast."
    assert [t.split(":")[0] for t in texts.gallery[:3]] == ["test neg review 0", "test neg review 2",
                                                            "test neg review 10"]  # numeric id order
    assert texts.gallery_groups == ["neg"] * 3 + ["pos"] * 3 + ["neg"] * 3 + ["pos"] * 3


def test_imdb_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test/neg not found"):
        load_imdb(tmp_path / "aclImdb")
    base = write_imdb(tmp_path)
    (base / "train" / "pos" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"notes\.txt: unexpected file name"):
        load_imdb(base)


def test_nanobeir_relevance_from_qrels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline_lib.datasets.text_formats"):
        texts = load_nanobeir(write_nanobeir(tmp_path))
    assert "dropped 1 query(ies) without a qrel" in caplog.text
    assert texts.query_groups == ["1", "5"] and texts.query[1].startswith("1/2000 in UK")
    assert texts.gallery_groups == ["4983", "5836", "7912", "18670"]
    assert texts.relevant == [[0, 2], [3]]


def test_nanobeir_title_score_and_file_order(tmp_path: Path) -> None:
    base = write_nanobeir(tmp_path, "NanoNFCorpus")
    pl.DataFrame({"_id": ["d9"], "title": ["Statins"], "text": ["lower cholesterol."]}).write_parquet(
        base / "corpus" / "train-00001-of-00001.parquet")  # sorts after the first file
    pl.DataFrame({"query-id": ["1", "3", "5"], "corpus-id": ["d9", "d9", "5836"], "score": [1, 0, 2]}).write_parquet(
        base / "qrels" / "train-00000-of-00001.parquet")
    texts = load_nanobeir(base)
    assert texts.gallery[-1] == "Statins. lower cholesterol." and texts.gallery[0].startswith("Alterations")
    assert texts.query_groups == ["1", "5"] and texts.relevant == [[4], [1]]  # query 3's qrel has score 0


def test_nanobeir_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"corpus: no \*\.parquet file"):
        load_nanobeir(tmp_path / "NanoSciFact")
    base = write_nanobeir(tmp_path)
    qrels = base / "qrels" / "train-00000-of-00001.parquet"
    pl.DataFrame({"query-id": ["1"], "corpus-id": ["0000"]}).write_parquet(qrels)
    with pytest.raises(DatasetError, match="corpus-id not in"):
        load_nanobeir(base)
    pl.DataFrame({"query_id": ["1"], "corpus_id": ["4983"]}).write_parquet(qrels)
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['query-id', 'corpus-id'\]"):
        load_nanobeir(base)
    pl.DataFrame({"query-id": ["3"], "corpus-id": ["4983"], "score": [0]}).write_parquet(qrels)
    with pytest.raises(DatasetError, match="0 queries"):
        load_nanobeir(base)
