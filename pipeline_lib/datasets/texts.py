"""Text-retrieval benchmarks as one table: each row a text, its side (`split`: "query" | "gallery") and the group that
makes a gallery text relevant to a query (same group), whatever the file on disk looks like."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from pipeline_lib.datasets.config import TextRetrievalDataset

SIDES = ("query", "gallery")


def load_retrieval_texts(entry: TextRetrievalDataset, source: Path
                         ) -> tuple[pl.DataFrame, np.ndarray, list[str] | None]:
    """The benchmark's rows (columns text, group, split), its groups as int64 ids and their names (None when the
    file's groups are integers already)."""
    if not source.is_file():
        raise FileNotFoundError(f"text-retrieval file {source} not found (the path of its datasets.text_retrieval "
                                "entry)")
    df = _karpathy(source, entry.split) if entry.format == "karpathy" else _table(source)
    if df["group"].dtype.is_integer():
        return df, df["group"].cast(pl.Int64).to_numpy(), None
    names = sorted(str(g) for g in df["group"].unique().to_list())
    lookup = {g: i for i, g in enumerate(names)}
    return df, np.array([lookup[str(g)] for g in df["group"].to_list()], dtype=np.int64), names


def _table(source: Path) -> pl.DataFrame:
    """A parquet with columns text, group, split."""
    df = pl.read_parquet(source)
    missing = {"text", "group", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{source} lacks columns {sorted(missing)}; expected text, group, split")
    bad = set(df["split"].unique().to_list()) - set(SIDES)
    if bad:
        raise ValueError(f"{source}: split values {sorted(bad)}; expected 'query' or 'gallery'")
    return df


def _karpathy(source: Path, split: str) -> pl.DataFrame:
    """Karpathy's caption file: of each image in `split`, the first caption queries its other captions (spec 3.1),
    grouped by the image's file name."""
    images = [im for im in json.loads(source.read_text()).get("images", []) if im.get("split") == split]
    if not images:
        raise ValueError(f"{source}: no image of split {split!r} (the split of its datasets.text_retrieval entry)")
    rows: list[tuple[str, str, str]] = []
    for im in images:
        captions = [s["raw"].strip() for s in im["sentences"]]
        if len(captions) < 2:
            raise ValueError(f"{source}: image {im.get('filename')!r} has {len(captions)} caption(s); a query needs "
                             "at least one gallery caption of its image")
        group = str(im.get("filename", im.get("imgid")))
        rows += [(text, group, "query" if i == 0 else "gallery") for i, text in enumerate(captions)]
    return pl.DataFrame(rows, schema=["text", "group", "split"], orient="row")
