"""Text-retrieval benchmarks as one structure (`RetrievalTexts`: query and gallery texts, their groups, explicit
relevance where a benchmark has qrels), whatever the files on disk look like: the project's own table and Karpathy's
caption files here, the other real formats in `text_formats`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from pipeline_lib.data.errors import DatasetError
from pipeline_lib.data.safe_pickle import load_pickle
from pipeline_lib.datasets.config import TextRetrievalDataset
from pipeline_lib.datasets.text_formats import (
    RetrievalTexts,
    load_coco_captions,
    load_imdb,
    load_nanobeir,
    load_newsgroups,
)

SIDES = ("query", "gallery")
#: formats whose `path` is a folder rather than one file
FOLDER_FORMATS = ("newsgroups", "imdb", "nanobeir")


def load_retrieval_texts(entry: TextRetrievalDataset, source: Path) -> RetrievalTexts:
    """The benchmark of a `datasets.text_retrieval` entry, read from `source` (its resolved path)."""
    folder = entry.format in FOLDER_FORMATS
    if not (source.is_dir() if folder else source.is_file()):
        raise FileNotFoundError(f"text-retrieval {'folder' if folder else 'file'} {source} not found (the path of "
                                f"its datasets.text_retrieval entry, format {entry.format})")
    return LOADERS[entry.format](entry, source)


def _descriptions(entry: TextRetrievalDataset, source: Path) -> dict[str, str] | None:
    """The entry's own newsgroup descriptions (a json {newsgroup: text}, relative to the dataset folder), if any."""
    if entry.descriptions is None:
        return None
    path = source / entry.descriptions  # an absolute path stays as it is
    if not path.is_file():
        raise FileNotFoundError(f"newsgroup descriptions {path} not found (descriptions of its datasets.text_retrieval "
                                "entry, relative to the dataset folder)")
    return dict(json.loads(path.read_text()))


def _summaries(entry: TextRetrievalDataset, source: Path) -> dict[str, str] | None:
    """The entry's corpus summaries (a pickle {corpus _id: text}, relative to the dataset folder), if any."""
    if entry.summaries is None:
        return None
    path = source / entry.summaries
    if not path.is_file():
        raise FileNotFoundError(f"corpus summaries {path} not found (summaries of its datasets.text_retrieval entry, "
                                "relative to the dataset folder)")
    raw = load_pickle(path, "corpus summaries")  # a plain dict of strings: no global may be named
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise DatasetError(f"{path}: expected a dict {{corpus _id: summary text}}")
    return raw


def group_ids(texts: RetrievalTexts) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Query and gallery groups as int64 ids into one sorted list of group names."""
    names = sorted(set(texts.query_groups) | set(texts.gallery_groups))
    lookup = {g: i for i, g in enumerate(names)}
    as_ids = [np.array([lookup[g] for g in groups], dtype=np.int64)
              for groups in (texts.query_groups, texts.gallery_groups)]
    return as_ids[0], as_ids[1], names


def _table(source: Path) -> RetrievalTexts:
    """A parquet with columns text, group, split ("query" | "gallery"); relevant = same group."""
    df = pl.read_parquet(source)
    missing = {"text", "group", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{source} lacks columns {sorted(missing)}; expected text, group, split")
    bad = set(df["split"].unique().to_list()) - set(SIDES)
    if bad:
        raise ValueError(f"{source}: split values {sorted(bad)}; expected 'query' or 'gallery'")
    sides = [df.filter(pl.col("split") == side) for side in SIDES]
    return RetrievalTexts(query=sides[0]["text"].to_list(), gallery=sides[1]["text"].to_list(),
                          query_groups=[_group(g) for g in sides[0]["group"].to_list()],
                          gallery_groups=[_group(g) for g in sides[1]["group"].to_list()])


def _group(value: object) -> str:
    """A group as text; integer groups zero-padded so their sorted names keep numeric order."""
    return f"{value:012d}" if isinstance(value, int) else str(value)


def _karpathy(source: Path, split: str) -> RetrievalTexts:
    """Karpathy's caption file: of each image in `split`, the first caption queries its other captions (spec 3.1),
    grouped by the image's file name."""
    images = [im for im in json.loads(source.read_text()).get("images", []) if im.get("split") == split]
    if not images:
        raise ValueError(f"{source}: no image of split {split!r} (the split of its datasets.text_retrieval entry)")
    query: list[str] = []
    gallery: list[str] = []
    query_groups: list[str] = []
    gallery_groups: list[str] = []
    for im in images:
        captions = [s["raw"].strip() for s in im["sentences"]]
        if len(captions) < 2:
            raise ValueError(f"{source}: image {im.get('filename')!r} has {len(captions)} caption(s); a query needs "
                             "at least one gallery caption of its image")
        group = str(im.get("filename", im.get("imgid")))
        query.append(captions[0])
        query_groups.append(group)
        gallery += captions[1:]
        gallery_groups += [group] * (len(captions) - 1)
    return RetrievalTexts(query=query, gallery=gallery, query_groups=query_groups, gallery_groups=gallery_groups)


#: format -> loader of (entry, resolved path)
LOADERS: dict[str, Callable[[TextRetrievalDataset, Path], RetrievalTexts]] = {
    "table": lambda entry, source: _table(source),
    "karpathy": lambda entry, source: _karpathy(source, entry.split),
    "coco_captions": lambda entry, source: load_coco_captions(source),
    "newsgroups": lambda entry, source: load_newsgroups(source, entry.split, _descriptions(entry, source)),
    "imdb": lambda entry, source: load_imdb(source),
    "nanobeir": lambda entry, source: load_nanobeir(source, _summaries(entry, source)),
}
