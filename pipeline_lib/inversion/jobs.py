"""What an inversion instance inverts: the cached retrieval features it reads and its one job (OTI or OVI).

Shared by the stage functions (`inversion.stage`) and their shard planner and workers (`inversion.shards`): both build
the same job from the same inputs, so a block a worker writes is the block the stage would have written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.model import CLIP

from pipeline_lib.data.revisited import RevisitedGroundTruth
from pipeline_lib.datasets.config import ImageRetrievalDataset
from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.store import lazy_array, open_store, read_array
from pipeline_lib.features.ground_truth import GROUND_TRUTH, read_ground_truth
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
    same_set: bool = False  # query rows are the gallery rows (CUB all/all): each query's own image leaves its ranking
    ground_truth: RevisitedGroundTruth | None = None  # revisited Oxford / Paris: relevance per query, not per class

    def own(self, query_index: np.ndarray) -> np.ndarray | None:
        """The gallery rows of the queries `query_index` when they are gallery images too, else None."""
        return np.asarray(query_index, dtype=np.int64) if self.same_set else None


def store_splits(split: str, present: Iterable[str]) -> list[str]:
    """The store groups a retrieval split reads: itself, or for "all" every split present in train, val, test order."""
    have = set(present)
    return [s for s in ("train", "val", "test") if s in have] if split == "all" else [split]


def _read_split(fewshot: Path, groups: list[str], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Image features (N, D) and labels (N,) of the store groups `groups`, concatenated in order."""
    feats = [read_array(fewshot, f"{g}/image", (None, d)) for g in groups]
    labels = [read_array(fewshot, f"{g}/label", (len(f),)) for g, f in zip(groups, feats, strict=True)]
    return np.concatenate(feats), np.concatenate(labels)


@dataclass(frozen=True)
class TextRetrieval:
    """An `ovi` instance's cached text features (raw, un-normalised)."""

    query: np.ndarray  # (Qt, D)
    query_groups: np.ndarray  # (Qt,)
    gallery: np.ndarray  # (Gt, D)
    gallery_groups: np.ndarray  # (Gt,)
    relevant: RelevantSets | None = None  # qrels (NanoBEIR): each query's relevant gallery rows; None = same group


def load_image_retrieval(fewshot_dir: Path, entry: ImageRetrievalDataset) -> ImageRetrieval:
    """The query and gallery splits of the few-shot store in `fewshot_dir` (a `features_fewshot` instance), with the
    revisited ground truth when the store holds one (class prompts are then left out: a revisited "class" is only a
    Flickr search term).

    `pipeline_lib.engine.store.read_array` refuses half-written groups, so a crashed features run is never evaluated,
    and checks every feature array against the width D of the store's clip/text_projection (W, D) (of test/image in
    a store without one).
    """
    fewshot = fewshot_dir / "fewshot.zarr"
    fs = open_store(fewshot)  # a clear error when the features stage has not run
    groups = {split: store_splits(split, fs.group_keys()) for split in (entry.query_split, entry.gallery_split)}
    for split, names in groups.items():
        if not names or any(g not in fs for g in names):
            raise KeyError(f"{fewshot} has no {split!r} split (the image-retrieval entry's query or gallery split)")
    d = lazy_array(fewshot, "clip/text_projection" if "clip/text_projection" in fs else "test/image").shape[-1]
    class_text = read_array(fewshot, "text/class_proj", (None, d)) if "text/class_proj" in fs else None
    query, query_labels = _read_split(fewshot, groups[entry.query_split], d)
    gallery, gallery_labels = _read_split(fewshot, groups[entry.gallery_split], d)
    ground_truth = read_ground_truth(fewshot) if GROUND_TRUTH in fs else None
    return ImageRetrieval(query=query, query_labels=query_labels, gallery=gallery, gallery_labels=gallery_labels,
                          class_text=None if ground_truth is not None else class_text,
                          same_set=entry.query_split == entry.gallery_split, ground_truth=ground_truth)


def load_text_retrieval(texts_dir: Path) -> TextRetrieval:
    """The query and gallery texts of the retrieval-text store in `texts_dir` (a `features_text` instance)."""
    store = texts_dir / "retrieval_text.zarr"
    top = open_store(store)  # a clear error when the features stage has not run
    query = read_array(store, "query/text")  # (Qt, D)
    gallery = read_array(store, "gallery/text", (None, query.shape[-1]))
    relevant = None
    if "relevant" in top:
        relevant = RelevantSets(read_array(store, "relevant/offsets", (len(query) + 1,)),
                                read_array(store, "relevant/index"))
    return TextRetrieval(
        query=query,
        query_groups=read_array(store, "query/group", (len(query),)),
        gallery=gallery,
        gallery_groups=read_array(store, "gallery/group", (len(gallery),)),
        relevant=relevant,
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


def instance_config(ctx: StageContext) -> InversionConfig:
    """The `inversion` settings of an instance, with an OVI instance's P resolved for the run's backbone (the stage
    and its shard workers build their job from this, so both use the same P)."""
    cfg: InversionConfig = ctx.cfg.inversion
    if ctx.inst.stage.name != "ovi" or cfg.ovi.num_patches != "reference":
        return cfg
    p = cfg.ovi.patches(ctx.cfg.backbone.model, ctx.cfg.backbone.pretrained)
    return cfg.model_copy(update={"ovi": cfg.ovi.model_copy(update={"num_patches": p})})


def instance_job(model: CLIP, tokenizer: Tokenizer, inputs: ImageRetrieval | TextRetrieval, cfg: InversionConfig
                 ) -> InversionJob:
    """The one inversion of an instance: OTI of image queries or OVI of text queries."""
    if isinstance(inputs, ImageRetrieval):
        return oti_job(model, tokenizer, inputs, cfg)
    return ovi_job(model, inputs, cfg)


def prepare_model(model: CLIP, device: torch.device) -> CLIP:
    """The frozen encoder the inversions optimise against."""
    return model.to(device).eval().requires_grad_(False)
