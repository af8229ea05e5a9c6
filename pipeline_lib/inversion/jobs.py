"""What an inversion instance inverts: the cached retrieval features it reads and its one job (OTI or OVI).

Shared by the stage functions (`inversion.stage`) and their shard planner and workers (`inversion.shards`): both build
the same job from the same inputs, so a block a worker writes is the block the stage would have written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.model import CLIP

from pipeline_lib.datasets.config import ImageRetrievalDataset
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.store import lazy_array, open_store, read_array
from pipeline_lib.inversion.config import InversionConfig
from pipeline_lib.inversion.oti import Tokenizer, run_oti
from pipeline_lib.inversion.ovi import run_ovi
from pipeline_lib.inversion.runner import BlockInverter, RunSpec, targets_digest

log = logging.getLogger(__name__)

STORE = "inversion.zarr"  # the inversion store inside an instance's output folder


@dataclass(frozen=True)
class ImageRetrieval:
    """An `oti` instance's cached image features (raw, un-normalised, rows in dataset order)."""

    query: np.ndarray  # (Qi, D) features of the query split's images
    query_labels: np.ndarray  # (Qi,)
    gallery: np.ndarray  # (Gi, D) features of the gallery split's images
    gallery_labels: np.ndarray  # (Gi,)
    class_text: np.ndarray | None  # (C, D) class prompt features (text-image reference), row c = label c


@dataclass(frozen=True)
class TextRetrieval:
    """An `ovi` instance's cached text features (raw, un-normalised)."""

    query: np.ndarray  # (Qt, D)
    query_groups: np.ndarray  # (Qt,)
    gallery: np.ndarray  # (Gt, D)
    gallery_groups: np.ndarray  # (Gt,)


def load_image_retrieval(fewshot_dir: Path, entry: ImageRetrievalDataset) -> ImageRetrieval:
    """The query and gallery splits of the few-shot store in `fewshot_dir` (a `features_fewshot` instance).

    `pipeline_lib.engine.store.read_array` refuses half-written groups, so a crashed features run is never evaluated,
    and checks every feature array against the width D of the store's clip/text_projection (W, D) (of test/image in
    a store without one).
    """
    fewshot = fewshot_dir / "fewshot.zarr"
    fs = open_store(fewshot)  # a clear error when the features stage has not run
    for split in (entry.query_split, entry.gallery_split):
        if split not in fs:
            raise KeyError(f"{fewshot} has no {split!r} split (the image-retrieval entry's query or gallery split)")
    d = lazy_array(fewshot, "clip/text_projection" if "clip/text_projection" in fs else "test/image").shape[-1]
    class_text = read_array(fewshot, "text/class_proj", (None, d)) if "text/class_proj" in fs else None
    query, gallery = (read_array(fewshot, f"{s}/image", (None, d)) for s in (entry.query_split, entry.gallery_split))
    return ImageRetrieval(
        query=query,
        query_labels=read_array(fewshot, f"{entry.query_split}/label", (len(query),)),
        gallery=gallery,
        gallery_labels=read_array(fewshot, f"{entry.gallery_split}/label", (len(gallery),)),
        class_text=class_text,
    )


def load_text_retrieval(texts_dir: Path) -> TextRetrieval:
    """The query and gallery texts of the retrieval-text store in `texts_dir` (a `features_text` instance)."""
    store = texts_dir / "retrieval_text.zarr"
    open_store(store)  # a clear error when the features stage has not run
    query = read_array(store, "query/text")  # (Qt, D)
    gallery = read_array(store, "gallery/text", (None, query.shape[-1]))
    return TextRetrieval(
        query=query,
        query_groups=read_array(store, "query/group", (len(query),)),
        gallery=gallery,
        gallery_groups=read_array(store, "gallery/group", (len(gallery),)),
    )


def query_subset(n: int, max_queries: int | None) -> np.ndarray:
    """Indices of the queries to invert: all, or `max_queries` spread evenly over the (class-ordered) list."""
    if max_queries is None or max_queries >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_queries).round().astype(np.int64))


@dataclass(frozen=True)
class InversionJob:
    """One direction's inversion: which queries, their targets, the block runner's spec and the block inverter."""

    name: str  # its group in the inversion store: "oti" | "ovi"
    query_index: np.ndarray  # (Q,) rows of the query set that are inverted
    targets: np.ndarray  # (Q, D) float32 query features
    spec: RunSpec
    invert: BlockInverter


def oti_job(model: CLIP, tokenizer: Tokenizer, inputs: ImageRetrieval, cfg: InversionConfig) -> InversionJob:
    """OTI of the query images (at most cfg.max_queries of them) into pseudo-words."""
    qi = query_subset(len(inputs.query), cfg.max_queries)
    targets = np.ascontiguousarray(inputs.query[qi], dtype=np.float32)  # (Q, D)
    spec = RunSpec(
        n=len(qi), param_shape=(cfg.oti.num_tokens, model.token_embedding.embedding_dim),
        feature_dim=targets.shape[1], snapshot_steps=cfg.oti.recorded_steps, steps=cfg.oti.steps,
        block_size=cfg.oti.batch_size, blocks_per_shard=cfg.blocks_per_shard, seed=cfg.seed,
        targets_sha256=targets_digest(targets), extra=(("oti", cfg.oti.model_dump()), ("amp", cfg.amp)),
    )
    return InversionJob("oti", qi, targets, spec,
                        lambda t, seed: run_oti(model, tokenizer, t, cfg.oti, seed=seed, amp=cfg.amp))


def ovi_job(model: CLIP, inputs: TextRetrieval, cfg: InversionConfig) -> InversionJob:
    """OVI of the query texts (at most cfg.max_queries of them) into pseudo-patches."""
    qt = query_subset(len(inputs.query), cfg.max_queries)
    targets = np.ascontiguousarray(inputs.query[qt], dtype=np.float32)
    spec = RunSpec(
        n=len(qt), param_shape=(cfg.ovi.num_patches, model.visual.conv1.out_channels),
        feature_dim=targets.shape[1], snapshot_steps=cfg.ovi.recorded_steps, steps=cfg.ovi.steps,
        block_size=cfg.ovi.batch_size, blocks_per_shard=cfg.blocks_per_shard, seed=cfg.seed,
        targets_sha256=targets_digest(targets), extra=(("ovi", cfg.ovi.model_dump()), ("amp", cfg.amp)),
    )
    return InversionJob("ovi", qt, targets, spec, lambda t, seed: run_ovi(model, t, cfg.ovi, seed=seed, amp=cfg.amp))


def load_instance_inputs(ctx: StageContext) -> ImageRetrieval | TextRetrieval:
    """What an `oti@<dataset>` or `ovi@<dataset>` instance inverts and ranks against."""
    if ctx.inst.stage.name == "oti":
        entry = ctx.cfg.datasets.image_retrieval[ctx.item["image_dataset"]]
        return load_image_retrieval(ctx.input("features_fewshot"), entry)
    return load_text_retrieval(ctx.input("features_text"))


def instance_job(model: CLIP, tokenizer: Tokenizer, inputs: ImageRetrieval | TextRetrieval, cfg: InversionConfig
                 ) -> InversionJob:
    """The one inversion of an instance: OTI of image queries or OVI of text queries."""
    if isinstance(inputs, ImageRetrieval):
        return oti_job(model, tokenizer, inputs, cfg)
    return ovi_job(model, inputs, cfg)


def prepare_model(model: CLIP, device: torch.device) -> CLIP:
    """The frozen encoder the inversions optimise against."""
    return model.to(device).eval().requires_grad_(False)
