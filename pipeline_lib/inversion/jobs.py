"""What the inversion stage inverts: the cached retrieval features it reads and one job per direction.

Shared by the stage function (`inversion.stage`) and its shard planner and workers (`inversion.shards`): both build
the same OTI/OVI jobs from the same inputs, so a block a worker writes is the block the stage would have written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.model import CLIP

from pipeline_lib.engine.store import lazy_array, open_store, read_array
from pipeline_lib.inversion.config import InversionConfig
from pipeline_lib.inversion.oti import Tokenizer, run_oti
from pipeline_lib.inversion.ovi import run_ovi
from pipeline_lib.inversion.runner import BlockInverter, RunSpec, targets_digest

log = logging.getLogger(__name__)

STORE = "inversion.zarr"  # the inversion store inside the stage's output folder


@dataclass(frozen=True)
class RetrievalInputs:
    """Cached features the stage works from (raw, un-normalised, rows in dataset order)."""

    image_query: np.ndarray  # (Qi, D) test-split image features
    image_query_labels: np.ndarray  # (Qi,)
    image_gallery: np.ndarray  # (Gi, D) train-split image features
    image_gallery_labels: np.ndarray  # (Gi,)
    class_text: np.ndarray | None  # (C, D) class prompt features (text-image reference), row c = label c
    text_query: np.ndarray | None  # (Qt, D) query text features (None: no text-retrieval store)
    text_query_groups: np.ndarray | None  # (Qt,)
    text_gallery: np.ndarray | None  # (Gt, D)
    text_gallery_groups: np.ndarray | None  # (Gt,)


def load_inputs(fewshot_dir: Path, texts_dir: Path) -> RetrievalInputs:
    """Read the few-shot store of `fewshot_dir` (a `features_fewshot` instance: `inversion.dataset`) and the
    retrieval-text store of `texts_dir` (the `features` stage) when present.

    `pipeline_lib.engine.store.read_array` refuses half-written groups, so a crashed features run is never evaluated,
    and checks every feature array against the width D of the store's clip/text_projection (W, D) (of test/image in
    a store without one).
    """
    fewshot = fewshot_dir / "fewshot.zarr"
    fs = open_store(fewshot)  # a clear error when the features stage has not run
    d = lazy_array(fewshot, "clip/text_projection" if "clip/text_projection" in fs else "test/image").shape[-1]
    class_text = read_array(fewshot, "text/class_proj", (None, d)) if "text/class_proj" in fs else None
    text_store = texts_dir / "retrieval_text.zarr"
    text: dict[str, np.ndarray | None] = dict.fromkeys(("query/text", "query/group", "gallery/text", "gallery/group"))
    if (text_store / "zarr.json").exists():
        for split in ("query", "gallery"):
            text[f"{split}/text"] = read_array(text_store, f"{split}/text", (None, d))
            text[f"{split}/group"] = read_array(text_store, f"{split}/group", (len(text[f"{split}/text"]),))
    else:
        log.warning("no text-retrieval store at %s: OVI / text->text are skipped", text_store)
    image = {split: read_array(fewshot, f"{split}/image", (None, d)) for split in ("test", "train")}  # (N, D)
    return RetrievalInputs(
        image_query=image["test"],
        image_query_labels=read_array(fewshot, "test/label", (len(image["test"]),)),
        image_gallery=image["train"],
        image_gallery_labels=read_array(fewshot, "train/label", (len(image["train"]),)),
        class_text=class_text,
        text_query=text["query/text"],
        text_query_groups=text["query/group"],
        text_gallery=text["gallery/text"],
        text_gallery_groups=text["gallery/group"],
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


def oti_job(model: CLIP, tokenizer: Tokenizer, inputs: RetrievalInputs, cfg: InversionConfig) -> InversionJob:
    """OTI of the query images (at most cfg.max_queries of them) into pseudo-words."""
    qi = query_subset(len(inputs.image_query), cfg.max_queries)
    targets = np.ascontiguousarray(inputs.image_query[qi], dtype=np.float32)  # (Q, D)
    spec = RunSpec(
        n=len(qi), param_shape=(cfg.oti.num_tokens, model.token_embedding.embedding_dim),
        feature_dim=targets.shape[1], snapshot_steps=cfg.oti.recorded_steps, steps=cfg.oti.steps,
        block_size=cfg.oti.batch_size, blocks_per_shard=cfg.blocks_per_shard, seed=cfg.seed,
        targets_sha256=targets_digest(targets), extra=(("oti", cfg.oti.model_dump()), ("amp", cfg.amp)),
    )
    return InversionJob("oti", qi, targets, spec,
                        lambda t, seed: run_oti(model, tokenizer, t, cfg.oti, seed=seed, amp=cfg.amp))


def ovi_job(model: CLIP, inputs: RetrievalInputs, cfg: InversionConfig) -> InversionJob | None:
    """OVI of the query texts into pseudo-patches; None without a text-retrieval store."""
    if inputs.text_query is None:
        return None
    qt = query_subset(len(inputs.text_query), cfg.max_queries)
    targets = np.ascontiguousarray(inputs.text_query[qt], dtype=np.float32)
    spec = RunSpec(
        n=len(qt), param_shape=(cfg.ovi.num_patches, model.visual.conv1.out_channels),
        feature_dim=targets.shape[1], snapshot_steps=cfg.ovi.recorded_steps, steps=cfg.ovi.steps,
        block_size=cfg.ovi.batch_size, blocks_per_shard=cfg.blocks_per_shard, seed=cfg.seed,
        targets_sha256=targets_digest(targets), extra=(("ovi", cfg.ovi.model_dump()), ("amp", cfg.amp)),
    )
    return InversionJob("ovi", qt, targets, spec, lambda t, seed: run_ovi(model, t, cfg.ovi, seed=seed, amp=cfg.amp))


def inversion_jobs(
    model: CLIP, tokenizer: Tokenizer, inputs: RetrievalInputs, cfg: InversionConfig
) -> list[InversionJob]:
    """Every inversion the stage runs (what shard planning and shard workers enumerate)."""
    ovi = ovi_job(model, inputs, cfg)
    return [oti_job(model, tokenizer, inputs, cfg)] + ([ovi] if ovi is not None else [])


def prepare_model(model: CLIP, device: torch.device) -> CLIP:
    """The frozen encoder the inversions optimise against."""
    return model.to(device).eval().requires_grad_(False)
