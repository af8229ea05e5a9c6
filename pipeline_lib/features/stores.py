"""The feature stores, one writer per dataset: plain functions of an ExtractionRun, the store path and the source.

  fewshot.zarr         {train,val,test}/image|label|index (train only with train_features), text/*, clip/*
  k<K>/support.zarr    train/image|views|label|index of the images one few-shot sample draws, sampling/labels
  czsl.zarr            {train,val,test}/image|attr|obj|pair[|tokens]
  retrieval_text.zarr  {query,gallery}/text|group, relevant/offsets|index (qrels benchmarks)
Image groups are written in resumable shard blocks (layout in pipeline_lib.engine.store): a killed run continues from
its last finished block and ends with the same arrays as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr

from pipeline_lib.datasets.config import ClassificationDataset, TextRetrievalDataset
from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.datasets.texts import group_ids, load_retrieval_texts
from pipeline_lib.engine.stage_keys import EXTRACTION
from pipeline_lib.engine.store import ArraySpec, BlockGroup, provenance, write_whole
from pipeline_lib.features.config import AugmentConfig
from pipeline_lib.features.groups import ExtractionRun, ImageGroup, check_tokens_supported
from pipeline_lib.features.text import (
    class_prompts,
    class_text_features,
    default_templates,
    encode_texts,
    logit_scale,
    text_projection,
)

SPLITS = ("train", "val", "test")
#: The store of one shot count inside a `support` instance's output folder (`<folder>/k<shots>/support.zarr`).
SUPPORT_STORE = "support.zarr"
#: text/ arrays of the few-shot store, in the order they are written (fields of features.text.ClassTextFeatures)
TEXT_ARRAYS = (
    "class_proj", "class_proj_raw", "class_eos", "class_eos_raw", "prompt_proj", "prompt_eos", "prompt_count"
)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def store_provenance(run: ExtractionRun, source: Path, **extra: Any) -> dict[str, Any]:
    """Store attributes: the backbone, the extraction params and the source (plus `extra`, e.g. the dataset entry).

    A source inside the project is recorded relative to it, so the same data in another checkout gives the same bytes
    (and downstream stages stay reusable)."""
    b = run.backbone
    root = run.root.resolve() if run.root is not None else None
    where = source.resolve()
    label = where.relative_to(root).as_posix() if root is not None and where.is_relative_to(root) else str(where)
    return provenance(
        backbone={"name": b.name, "pretrained": b.pretrained, "fingerprint": b.fingerprint},
        features={k: v for k, v in run.cfg.model_dump(mode="json").items() if f"features.{k}" in EXTRACTION},
        source=label,
        **extra,
    )


# ------------------------------------------------------------------------------------------------------ few-shot


def load_fewshot_source(entry: ClassificationDataset, source: Path) -> Any:
    """The classification dataset at `source`, with a clear error naming the params entry when its split file is
    missing."""
    from pipeline_lib.datasets.load import load_classification

    if entry.format == "coop" and not (source / entry.split_file).is_file():
        raise FileNotFoundError(f"few-shot split file {source / entry.split_file} not found "
                                "(root and split_file of its datasets.classification entry)")
    return load_classification(entry, source)


def fewshot_groups(run: ExtractionRun, store: Path, ds: Any, source: Path, entry: ClassificationDataset
                   ) -> list[ImageGroup]:
    """The few-shot store's image groups: one per split present (CoOp files may omit val, and ImageNet's val is its
    test split, encoded once; train only when the entry asks for train features), one plain view each (the support
    stage encodes the augmented views)."""
    val_is_test = "val" in ds.splits and ds.splits["val"] is ds.splits["test"]
    splits = [s for s in SPLITS if s in ds.splits and (s != "train" or entry.train_features)
              and not (s == "val" and val_is_test)]
    return [_image_group(run, store, split, ds.split(split), source / entry.image_dir) for split in splits]


def _image_group(run: ExtractionRun, store: Path, name: str, df: pl.DataFrame, image_root: Path,
                 chosen: np.ndarray | None = None, views: int = 1, augment: AugmentConfig | None = None,
                 part: str = "") -> ImageGroup:
    """The group of a split's images (or of its `chosen` rows), labelled, with each image's index in the split."""
    index = np.arange(len(df), dtype=np.int64) if chosen is None else chosen
    paths = [df["path"][int(i)] for i in index] if chosen is not None else df["path"].to_list()
    rel = [os.path.relpath(p, image_root.resolve()) for p in paths]  # content identity, independent of where data is
    labels = df["label"].to_numpy().astype(np.int64)[index]
    plan = run.plan(split=_digest([rel, labels.tolist()] + ([index.tolist()] if chosen is not None else [])))
    view_ids = tuple(index.tolist()) if chosen is not None else None
    return ImageGroup(store, name, paths, {"label": labels, "index": index}, plan, views=views, view_ids=view_ids,
                      augment=augment, part=part)


def support_indices(labels: Sequence[int], shots: int, seed: int) -> np.ndarray:
    """The train indices the (shots, seed) few-shot sample draws, sorted: the same deterministic sampling the few-shot
    runs use (`fewshot.sampling`)."""
    from pipeline_lib.fewshot.sampling import sample_fewshot_indices

    return np.array(sorted(sample_fewshot_indices(labels, shots, seed)), dtype=np.int64)


def support_part(shots: int) -> str:
    """The folder of one shot count's support store inside a `support` instance's output (what `fewshot_run` reads:
    its `Stage.reads`)."""
    return f"k{shots}"


def support_group(run: ExtractionRun, store: Path, ds: Any, source: Path, entry: ClassificationDataset,
                  shots: int, seed: int) -> ImageGroup:
    """The support store's one group: every view of the train images the (shots, seed) sample draws; a dataset entry
    that lists its own augmentation for this shot count gets E + 1 views with that recipe (SeMoBridge spec 1.3)."""
    df = ds.split("train")
    chosen = support_indices(df["label"].to_list(), shots, seed)
    recipe = entry.augment.get(shots)
    views, augment = run.cfg.views, None
    if recipe is not None:
        views, augment = recipe.epochs + 1, AugmentConfig(**recipe.model_dump(exclude={"epochs"}))
    return _image_group(run, store, "train", df, source / entry.image_dir, chosen, views=views, augment=augment,
                        part=support_part(shots))


def support_groups(run: ExtractionRun, folder: Path, ds: Any, source: Path, entry: ClassificationDataset,
                   shots: Sequence[int], seed: int) -> list[ImageGroup]:
    """A seed's support groups, one store per shot count: `<folder>/k<shots>/support.zarr`."""
    return [support_group(run, folder / support_part(k) / SUPPORT_STORE, ds, source, entry, k, seed) for k in shots]


def write_support_stores(run: ExtractionRun, folder: Path, source: Path, entry: ClassificationDataset,
                         shots: Sequence[int], seed: int) -> dict[str, Any]:
    """A seed's support stores. Each support.zarr holds train/views (row r = train image train/index[r]; view 0
    un-augmented) and the whole split's labels (`sampling/labels`), from which a run redraws its sample and finds its
    rows."""
    ds = load_fewshot_source(entry, source)
    labels = ds.split("train")["label"].to_numpy().astype(np.int64)
    out: dict[str, Any] = {"train_images": len(labels)}
    for k, g in zip(shots, support_groups(run, folder, ds, source, entry, shots, seed), strict=True):
        out[support_part(k)] = {"train": run.image_group(g), "drawn": len(g.paths)}
        top = zarr.open_group(str(g.store), mode="a")
        write_whole(top.require_group("sampling"), "labels", labels)
        top.attrs.update({
            "shots": k,
            "seed": seed,
            "views": "train/views[:, 0] is the un-augmented image (= train/image); views 1.. are offline augmentations",
            "provenance": store_provenance(run, source, dataset=entry.model_dump(mode="json")),
        })
        if g.augment is not None:  # the entry's own recipe for this shot count replaced features.views/augment
            top.attrs["augment_recipe"] = {"views": g.views, **g.augment.model_dump(mode="json")}
    return out


def write_fewshot_store(
    run: ExtractionRun, store: Path, source: Path, entry: ClassificationDataset, cupl_path: Path | None
) -> dict[str, Any]:
    """fewshot.zarr of one classification dataset: text side first (cheap, catches template errors early), then
    the image splits."""
    c = run.cfg
    ds = load_fewshot_source(entry, source)
    templates = list(entry.templates) if entry.templates is not None else default_templates(entry.prompts)
    prompts = class_prompts(ds.classnames, templates, cupl_path)

    top = zarr.open_group(str(store), mode="a")
    model = run.backbone.model
    text = class_text_features(model, run.backbone.tokenizer, prompts, run.device, c.batch_size, c.amp)
    tg = top.require_group("text")
    for name in TEXT_ARRAYS:
        write_whole(tg, name, getattr(text, name))
    cg = top.require_group("clip")
    write_whole(cg, "text_projection", text_projection(model))
    write_whole(cg, "logit_scale", np.asarray(logit_scale(model), dtype=np.float32))

    out: dict[str, Any] = {"classes": len(ds.classnames), "prompts_per_class": text.prompt_count.tolist()}
    if entry.format == "revisited":  # relevance is per query: it travels with the features it describes
        from pipeline_lib.data.revisited import load_revisited_ground_truth
        from pipeline_lib.features.ground_truth import write_ground_truth

        write_ground_truth(top, load_revisited_ground_truth(source))
    for g in fewshot_groups(run, store, ds, source, entry):
        out[g.name] = run.image_group(g)
    top.attrs.update(
        {
            "classnames": list(ds.classnames),
            "templates": templates,
            "cupl_file": str(cupl_path) if cupl_path else None,
            "prompt_padding": "text/prompt_* rows past text/prompt_count[c] are NaN",
            "logit_scale": "exp(logit_scale), the multiplier on cosines",
            "provenance": store_provenance(run, source, dataset=entry.model_dump(mode="json")),
        }
    )
    return out


# ---------------------------------------------------------------------------------------------------------- CZSL


def load_czsl_source(run: ExtractionRun, source: Path, check_sizes: bool = True) -> Any:
    """The closed-world CZSL dataset at `source` (patch tokens checked against the backbone first)."""
    from pipeline_lib.czsl.data import load_czsl_dataset

    if run.cfg.patch_tokens:
        check_tokens_supported(run.backbone.model)
    return load_czsl_dataset(source, "closed", check_sizes=check_sizes)


def czsl_groups(run: ExtractionRun, store: Path, ds: Any) -> list[ImageGroup]:
    """The CZSL store's image groups, one per split, with closed-world labels and optional patch tokens."""
    groups = []
    for split in SPLITS:
        df = ds.split(split)
        rows = {
            "attr": df["attr_idx"].to_numpy().astype(np.int64),
            "obj": df["obj_idx"].to_numpy().astype(np.int64),
            "pair": df["world_pair_idx"].to_numpy().astype(np.int64),
        }
        plan = run.plan(split=_digest([df["image"].to_list(), {k: v.tolist() for k, v in rows.items()}]))
        groups.append(ImageGroup(store, split, df["path"].to_list(), rows, plan, tokens=run.cfg.patch_tokens))
    return groups


def write_czsl_store(run: ExtractionRun, store: Path, source: Path, check_sizes: bool = True) -> dict[str, Any]:
    """czsl.zarr: closed-world labels (pair indexes attrs['pairs']), image features and optional patch tokens."""
    ds = load_czsl_source(run, source, check_sizes)
    out: dict[str, Any] = {"attrs": len(ds.attrs), "objs": len(ds.objs), "pairs": len(ds.pairs)}
    for g in czsl_groups(run, store, ds):
        out[g.name] = run.image_group(g)
    top = zarr.open_group(str(store), mode="a")
    top.attrs.update(
        {
            "name": ds.name,
            "attrs": list(ds.attrs),
            "objs": list(ds.objs),
            "pairs": [list(p) for p in ds.pairs],
            "train_pairs": [list(p) for p in ds.train_pairs],
            "val_pairs": [list(p) for p in ds.val_pairs],
            "test_pairs": [list(p) for p in ds.test_pairs],
            "pair_index": "pair indexes attrs['pairs'] (closed world: sorted union of the three pair files)",
            "provenance": store_provenance(run, source),
        }
    )
    return out


# ------------------------------------------------------------------------------------------------ text retrieval


def write_retrieval_text_store(run: ExtractionRun, store: Path, source: Path, entry: TextRetrievalDataset
                               ) -> dict[str, Any]:
    """retrieval_text.zarr: raw projected features of query and gallery texts, their groups and, for a benchmark
    with qrels, each query's relevant gallery rows (`relevant/offsets`, `relevant/index`)."""
    texts = load_retrieval_texts(entry, source)
    query_groups, gallery_groups, group_names = group_ids(texts)
    c, model = run.cfg, run.backbone.model
    dim = text_projection(model).shape[1]
    out: dict[str, Any] = {}
    for split, rows, groups in (("query", texts.query, query_groups), ("gallery", texts.gallery, gallery_groups)):
        n = len(rows)
        bg = BlockGroup.create_or_resume(
            store,
            split,
            [ArraySpec("text", (n, dim), c.dtype), ArraySpec("group", (n,), "int64")],
            c.rows_per_chunk,
            c.rows_per_shard,
            plan=run.plan(split=_digest([rows, groups.tolist()])),
        )
        t0 = time.perf_counter()
        for b in bg.pending():
            start, stop = bg.rows(b)
            feats, _ = encode_texts(
                model, run.backbone.tokenizer, rows[start:stop], run.device, c.batch_size, eos=False, amp=c.amp
            )
            bg.write_block(b, {"text": feats, "group": groups[start:stop]})
            if run.on_block is not None:
                run.on_block(store.name, split, b)
        out[split] = {"rows": n, "seconds": round(time.perf_counter() - t0, 3)}
    top = zarr.open_group(str(store), mode="a")
    if texts.relevant is not None:
        sets = RelevantSets.from_lists(texts.relevant)
        rg = top.require_group("relevant")
        write_whole(rg, "offsets", sets.offsets)
        write_whole(rg, "index", sets.index)
    top.attrs.update({"group_names": group_names, "provenance": store_provenance(run, source)})
    return out
