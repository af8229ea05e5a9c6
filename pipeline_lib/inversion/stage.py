"""The `inversion` stage: OTI on query images, OVI on query texts, and inter- vs intra-modal retrieval.

Image retrieval uses the few-shot feature store (test split = queries, train split = gallery); each query image's
feature is inverted into a pseudo-word (OTI) whose text feature is ranked against the raw gallery image features and
compared with plain image->image ranking. Text retrieval uses the retrieval-text store: each query text's feature is
inverted into pseudo-patches (OVI) whose image feature is ranked against the raw gallery text features and compared
with text->text. Retrieval is measured at every recorded optimisation step, because the inverted features drift back
toward their own modality the longer they are optimised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import Tensor

from pipeline_lib.inversion.config import InversionConfig
from pipeline_lib.inversion.oti import Tokenizer, run_oti
from pipeline_lib.inversion.ovi import run_ovi
from pipeline_lib.inversion.runner import BlockInverter, Progress, RunSpec, run_blocks, targets_digest
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.engine.parallel import run_shards_in_processes
from pipeline_lib.diagnose.retrieval import retrieval_metrics
from pipeline_lib.engine.store import lazy_array, open_store, read_array

log = logging.getLogger(__name__)

OUT_DIR = "artifacts/inversion"
METRICS = "metrics/inversion.json"
MAP_PLOT = "plots/inversion_map_vs_step.csv"
SIMILARITY_PLOT = "plots/inversion_similarity.csv"
STORE = "inversion.zarr"


class Context(Protocol):
    """The parts of the pipeline's StageContext this stage uses."""

    cfg: Any
    device: torch.device

    def out(self, rel: str) -> Path: ...
    def inp(self, rel: str) -> Path: ...
    def progress(self, iterable: Any, total: int | None = None, desc: str = "") -> Any: ...


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


def load_inputs(features_dir: Path) -> RetrievalInputs:
    """Read the few-shot store (and the retrieval-text store when present) from the published features.

    `pipeline_lib.engine.store.read_array` refuses half-written groups, so a crashed features run is never evaluated, and
    checks every feature array against the width D of the store's clip/text_projection (W, D) (of test/image in a
    store without one).
    """
    fewshot = features_dir / "fewshot.zarr"
    fs = open_store(fewshot)  # a clear error when the features stage has not run
    d = lazy_array(fewshot, "clip/text_projection" if "clip/text_projection" in fs else "test/image").shape[-1]
    class_text = read_array(fewshot, "text/class_proj", (None, d)) if "text/class_proj" in fs else None
    text_store = features_dir / "retrieval_text.zarr"
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


def similarity_histogram(a: Tensor, b: Tensor, edges: Tensor, chunk: int = 1024) -> np.ndarray:
    """Density of the cosine similarities of all (a_i, b_j) pairs over the bins given by `edges`."""
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    bn = F.normalize(b.float(), dim=-1)  # (Nb, D)
    for part in a.float().split(chunk):
        sims = (F.normalize(part, dim=-1) @ bn.T).flatten().clamp(float(edges[0]), float(edges[-1]))  # (c * Nb,)
        counts += torch.histogram(sims, bins=edges).hist.double()
    width = float(edges[1] - edges[0])
    return (counts / max(float(counts.sum()), 1.0) / width).numpy()


def _metrics(q: np.ndarray | Tensor, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, chunk: int) -> dict[str, float]:
    return retrieval_metrics(q, ql, g, gl, chunk=chunk).as_dict()


def _by_step(snapshots: np.ndarray, steps: list[int], ql: np.ndarray, g: np.ndarray, gl: np.ndarray,
             chunk: int) -> dict[str, dict[str, float]]:
    """Retrieval metrics of the inverted queries at every recorded step (snapshots (Q, S, D))."""
    return {str(s): _metrics(snapshots[:, i], ql, g, gl, chunk) for i, s in enumerate(steps)}


def _direction_summary(baseline: dict[str, float], by_step: dict[str, dict[str, float]], final_step: int) -> dict:
    best_step = max(by_step, key=lambda s: by_step[s]["map"])
    final = by_step[str(final_step)]
    return {
        "final": final,
        "by_step": by_step,
        "map_gain": final["map"] - baseline["map"],
        "best_step": int(best_step),
        "best_map": by_step[best_step]["map"],
    }


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


def inversion_jobs(model: CLIP, tokenizer: Tokenizer, inputs: RetrievalInputs, cfg: InversionConfig) -> list[InversionJob]:
    """Every inversion the stage runs (what shard planning and shard workers enumerate)."""
    ovi = ovi_job(model, inputs, cfg)
    return [oti_job(model, tokenizer, inputs, cfg)] + ([ovi] if ovi is not None else [])


def prepare_model(model: CLIP, device: torch.device) -> CLIP:
    """The frozen encoder the inversions optimise against."""
    return model.to(device).eval().requires_grad_(False)


def invert_and_evaluate(
    model: CLIP,
    tokenizer: Tokenizer,
    inputs: RetrievalInputs,
    cfg: InversionConfig,
    *,
    out_dir: Path,
    metrics_path: Path,
    map_plot_path: Path,
    similarity_plot_path: Path,
    device: torch.device,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run OTI and OVI block-wise (resumable in `out_dir`), evaluate retrieval, write metrics and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / STORE
    model = prepare_model(model, device)
    chunk = cfg.query_chunk
    summary: dict[str, Any] = {}
    metrics: dict[str, Any] = {}

    # --- OTI: query images -> text side, ranked against raw gallery images
    job = oti_job(model, tokenizer, inputs, cfg)
    qi, targets = job.query_index, job.targets
    ql = inputs.image_query_labels[qi]
    t0 = time.perf_counter()
    oti = run_blocks(store, job.name, targets, job.invert, job.spec, device=device, progress=progress)
    oti.attrs["query_index"] = qi.tolist()
    summary["oti"] = {"queries": len(qi), "seconds": round(time.perf_counter() - t0, 3)}
    g, gl = inputs.image_gallery, inputs.image_gallery_labels
    image_base = _metrics(targets, ql, g, gl, chunk)
    oti_snaps = np.asarray(oti["snapshots"][...])  # (Q, S, D)
    image_dir = _direction_summary(image_base, _by_step(oti_snaps, list(cfg.oti.recorded_steps), ql, g, gl, chunk),
                                   cfg.oti.steps)
    metrics["image"] = {"n_queries": len(qi), "n_gallery": len(g), "image_to_image": image_base,
                        "oti_to_image": image_dir.pop("final"), **image_dir,
                        "oti_final_loss": float(np.mean(oti["losses"][:, -1]))}
    if inputs.class_text is not None:  # reference: one class prompt per class as the query
        classes = np.unique(gl)
        metrics["image"]["class_text_to_image"] = _metrics(inputs.class_text[classes], classes, g, gl, chunk)

    # --- OVI: query texts -> image side, ranked against raw gallery texts
    ovi_rows: dict[str, dict[str, float]] = {}
    text_base: dict[str, float] | None = None
    text_job = ovi_job(model, inputs, cfg)
    if text_job is not None:
        qt, ttargets = text_job.query_index, text_job.targets
        tql = inputs.text_query_groups[qt]
        t0 = time.perf_counter()
        ovi = run_blocks(store, text_job.name, ttargets, text_job.invert, text_job.spec, device=device,
                         progress=progress)
        ovi.attrs["query_index"] = qt.tolist()
        summary["ovi"] = {"queries": len(qt), "seconds": round(time.perf_counter() - t0, 3)}
        tg, tgl = inputs.text_gallery, inputs.text_gallery_groups
        text_base = _metrics(ttargets, tql, tg, tgl, chunk)
        ovi_rows = _by_step(np.asarray(ovi["snapshots"][...]), list(cfg.ovi.recorded_steps), tql, tg, tgl, chunk)
        text_dir = _direction_summary(text_base, ovi_rows, cfg.ovi.steps)
        metrics["text"] = {"n_queries": len(qt), "n_gallery": len(tg), "text_to_text": text_base,
                           "ovi_to_text": text_dir.pop("final"), **text_dir,
                           "ovi_final_loss": float(np.mean(ovi["losses"][:, -1]))}

    write_json(metrics_path, metrics, sort_keys=True)
    _write_map_plot(map_plot_path, image_base, metrics["image"]["by_step"], text_base, ovi_rows)
    _write_similarity_plot(similarity_plot_path, cfg, inputs, targets, oti_snaps, g)
    summary.update({
        "image_to_image_map": image_base["map"],
        "oti_to_image_map": metrics["image"]["oti_to_image"]["map"],
        "text_to_text_map": text_base["map"] if text_base else None,
        "ovi_to_text_map": metrics["text"]["ovi_to_text"]["map"] if text_base else None,
    })
    log.info("inversion: %s", summary)
    return summary


def _write_map_plot(path: Path, image_base: dict, oti_rows: dict, text_base: dict | None, ovi_rows: dict) -> None:
    """mAP vs optimisation step: inverted queries per step, intra-modal baselines as flat lines."""
    steps = sorted({int(s) for s in oti_rows} | {int(s) for s in ovi_rows})
    rows = [
        [
            s,
            _fmt(oti_rows.get(str(s), {}).get("map")),
            _fmt(image_base["map"]),
            _fmt(ovi_rows.get(str(s), {}).get("map")),
            _fmt(text_base["map"] if text_base else None),
        ]
        for s in steps
    ]
    write_csv(path, ["step", "oti_to_image", "image_to_image", "ovi_to_text", "text_to_text"], rows)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def _write_similarity_plot(path: Path, cfg: InversionConfig, inputs: RetrievalInputs, image_queries: np.ndarray,
                           oti_snaps: np.ndarray, gallery: np.ndarray) -> None:
    """Cosine-similarity densities against the gallery images: image-image, text-image, OTI-image at chosen steps.

    Fixed columns cosine, image_image, text_image (when class prompts exist), oti_image (final step), plus one
    oti_image_step{s} column per plotted step.
    """
    edges = torch.linspace(-1.0, 1.0, cfg.histogram_bins + 1)
    g = torch.from_numpy(np.asarray(gallery, dtype=np.float32))
    recorded = list(cfg.oti.recorded_steps)
    columns: dict[str, np.ndarray] = {
        "image_image": similarity_histogram(torch.from_numpy(image_queries), g, edges, cfg.query_chunk)}
    if inputs.class_text is not None:
        columns["text_image"] = similarity_histogram(torch.from_numpy(np.asarray(inputs.class_text, np.float32)), g,
                                                     edges, cfg.query_chunk)
    named = [(f"oti_image_step{s}", s) for s in cfg.plot_steps if s in recorded] + [("oti_image", cfg.oti.steps)]
    for name, step in named:
        snap = torch.from_numpy(np.ascontiguousarray(oti_snaps[:, recorded.index(step)]))
        columns[name] = similarity_histogram(snap, g, edges, cfg.query_chunk)
    centres = ((edges[:-1] + edges[1:]) / 2).numpy()
    rows = [[f"{c:.4f}", *(f"{col[i]:.6f}" for col in columns.values())] for i, c in enumerate(centres)]
    write_csv(path, ["cosine", *columns], rows)


def run_inversion(ctx: Context) -> dict[str, Any]:
    """Stage entry point: resolve inputs and outputs, load the published backbone, invert and evaluate."""
    from pipeline_lib.backbone.load import load_published_backbone

    inputs = load_inputs(ctx.inp("artifacts/features"))  # cheap, so a missing store fails before the model loads
    processes = ctx.cfg.runtime.processes
    if processes > 1 and ctx.device.type == "cpu":  # OTI/OVI blocks of a small model: one core each beats threads
        from pipeline_lib.inversion.shards import invert_shard, plan_shards

        run_shards_in_processes(ctx, plan_shards, invert_shard, processes)
    backbone = load_published_backbone(ctx.inp("artifacts/backbone"), ctx.device)
    return invert_and_evaluate(
        backbone.model,
        backbone.tokenizer,
        inputs,
        ctx.cfg.inversion,
        out_dir=ctx.out(OUT_DIR),
        metrics_path=ctx.out(METRICS),
        map_plot_path=ctx.out(MAP_PLOT),
        similarity_plot_path=ctx.out(SIMILARITY_PLOT),
        device=ctx.device,
        progress=lambda it, total, desc: ctx.progress(it, total=total, desc=desc),
    )
