"""The `inversion` stage: OTI on query images, OVI on query texts, and inter- vs intra-modal retrieval.

Image retrieval uses the few-shot feature store (test split = queries, train split = gallery); each query image's
feature is inverted into a pseudo-word (OTI) whose text feature is ranked against the raw gallery image features and
compared with plain image->image ranking. Text retrieval uses the retrieval-text store: each query text's feature is
inverted into pseudo-patches (OVI) whose image feature is ranked against the raw gallery text features and compared
with text->text. Retrieval is measured at every recorded optimisation step, because the inverted features drift back
toward their own modality the longer they are optimised.

Each direction's queries are split into validation and test queries (`inversion.evaluate`): the step reported as
selected is chosen on validation mAP alone, and every reported retrieval number (metrics JSON, mAP-vs-step plot) is a
mean over the test queries. Per-query AP of every method at every step, both splits, goes to `outputs.PER_QUERY_AP` in
the output folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import Tensor

from pipeline_lib.diagnose.retrieval import retrieval_metrics
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.engine.parallel import run_shards_in_processes
from pipeline_lib.inversion.config import InversionConfig
from pipeline_lib.inversion.evaluate import direction_split, evaluate_direction, write_per_query
from pipeline_lib.inversion.jobs import (
    STORE,
    RetrievalInputs,
    load_inputs,
    oti_job,
    ovi_job,
    prepare_model,
)
from pipeline_lib.inversion.oti import Tokenizer
from pipeline_lib.inversion.outputs import PER_QUERY_AP, RETRIEVAL
from pipeline_lib.inversion.runner import Progress, run_blocks
from pipeline_lib.inversion.shards import invert_shard, plan_shards

log = logging.getLogger(__name__)


def similarity_histogram(a: Tensor, b: Tensor, edges: Tensor, chunk: int = 1024) -> np.ndarray:
    """Density of the cosine similarities of all (a_i, b_j) pairs over the bins given by `edges`."""
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    bn = F.normalize(b.float(), dim=-1)  # (Nb, D)
    for part in a.float().split(chunk):
        sims = (F.normalize(part, dim=-1) @ bn.T).flatten().clamp(float(edges[0]), float(edges[-1]))  # (c * Nb,)
        counts += torch.histogram(sims, bins=edges).hist.double()
    width = float(edges[1] - edges[0])
    return (counts / max(float(counts.sum()), 1.0) / width).numpy()


#: Per direction: (intra-modal baseline, inverted method); the metrics file keeps their test mAP at the final and the
#: validation-selected step, and that step.
DIRECTIONS = {"image": ("image_to_image", "oti_to_image"), "text": ("text_to_text", "ovi_to_text")}


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The test-query mAPs a reader compares, nested as in RETRIEVAL (so `{side}.{method}.map` reads the same)."""
    out: dict[str, Any] = {}
    for side, (baseline, inverted) in DIRECTIONS.items():
        if side in metrics:
            full = metrics[side]
            out[side] = {m: {"map": round(full[m]["map"], 4)} for m in (baseline, inverted, f"{inverted}_selected")}
            out[side]["selected_step"] = full["selected_step"]
    return out


def _metrics(q: np.ndarray | Tensor, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, chunk: int) -> dict[str, float]:
    return retrieval_metrics(q, ql, g, gl, chunk=chunk).as_dict()


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
    """Run OTI and OVI block-wise (resumable in `out_dir`), evaluate retrieval, write metrics, per-query AP, plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / STORE
    model = prepare_model(model, device)
    chunk = cfg.query_chunk
    summary: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    frames: list[pl.DataFrame] = []  # per-query AP

    # --- OTI: query images -> text side, ranked against raw gallery images
    job = oti_job(model, tokenizer, inputs, cfg)
    qi, targets = job.query_index, job.targets
    ql = inputs.image_query_labels[qi]
    t0 = time.perf_counter()
    oti = run_blocks(store, job.name, targets, job.invert, job.spec, device=device, progress=progress).group
    oti.attrs["query_index"] = qi.tolist()
    summary["oti"] = {"queries": len(qi), "seconds": round(time.perf_counter() - t0, 3)}
    g, gl = inputs.image_gallery, inputs.image_gallery_labels
    oti_snaps = np.asarray(oti["snapshots"][...])  # (Q, S, D)
    metrics["image"], frame = evaluate_direction(
        "image", "image_to_image", "oti_to_image", targets, oti_snaps, cfg.oti.recorded_steps, cfg.oti.steps, ql, g,
        gl, qi, is_val=direction_split("image", ql, cfg.val_fraction, cfg.seed), chunk=chunk)
    metrics["image"]["oti_final_loss"] = float(np.mean(oti["losses"][:, -1]))
    frames.append(frame)
    if inputs.class_text is not None:  # reference: one class prompt per class as the query (no query split)
        classes = np.unique(gl)
        metrics["image"]["class_text_to_image"] = _metrics(inputs.class_text[classes], classes, g, gl, chunk)

    # --- OVI: query texts -> image side, ranked against raw gallery texts
    text_job = ovi_job(model, inputs, cfg)
    if text_job is not None:
        qt, ttargets = text_job.query_index, text_job.targets
        tql = inputs.text_query_groups[qt]
        t0 = time.perf_counter()
        ovi = run_blocks(store, text_job.name, ttargets, text_job.invert, text_job.spec, device=device,
                         progress=progress).group
        ovi.attrs["query_index"] = qt.tolist()
        summary["ovi"] = {"queries": len(qt), "seconds": round(time.perf_counter() - t0, 3)}
        tg, tgl = inputs.text_gallery, inputs.text_gallery_groups
        metrics["text"], frame = evaluate_direction(
            "text", "text_to_text", "ovi_to_text", ttargets, np.asarray(ovi["snapshots"][...]),
            cfg.ovi.recorded_steps, cfg.ovi.steps, tql, tg, tgl, qt,
            is_val=direction_split("text", tql, cfg.val_fraction, cfg.seed), chunk=chunk)
        metrics["text"]["ovi_final_loss"] = float(np.mean(ovi["losses"][:, -1]))
        frames.append(frame)

    write_json(out_dir / RETRIEVAL, metrics, sort_keys=True)
    write_json(metrics_path, headline(metrics), sort_keys=True)
    write_per_query(out_dir / PER_QUERY_AP, frames)
    _write_map_plot(map_plot_path, metrics["image"], metrics.get("text"))
    _write_similarity_plot(similarity_plot_path, cfg, inputs, targets, oti_snaps, g)
    text = metrics.get("text")
    summary.update({  # test queries only
        "image_to_image_map": metrics["image"]["image_to_image"]["map"],
        "oti_to_image_map": metrics["image"]["oti_to_image"]["map"],
        "oti_selected_step": metrics["image"]["selected_step"],
        "text_to_text_map": text["text_to_text"]["map"] if text else None,
        "ovi_to_text_map": text["ovi_to_text"]["map"] if text else None,
        "ovi_selected_step": text["selected_step"] if text else None,
    })
    log.info("inversion: %s", summary)
    return summary


def _write_map_plot(path: Path, image: dict[str, Any], text: dict[str, Any] | None) -> None:
    """mAP vs optimisation step over the *test* queries: inverted queries per step, intra-modal baselines flat.

    The curve is shown for reading, not for selection: the selected step (`selected_step` in the metrics) is chosen on
    the validation queries' mAP (`by_step.val`).
    """
    oti_rows = image["by_step"]["test"]
    ovi_rows = text["by_step"]["test"] if text else {}
    steps = sorted({int(s) for s in oti_rows} | {int(s) for s in ovi_rows})
    rows = [
        [
            s,
            _fmt(oti_rows.get(str(s))),
            _fmt(image["image_to_image"]["map"]),
            _fmt(ovi_rows.get(str(s))),
            _fmt(text["text_to_text"]["map"] if text else None),
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


def run_inversion(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point: resolve inputs and outputs, load the published backbone, invert and evaluate."""
    from pipeline_lib.backbone.load import load_published_backbone

    # cheap, so a missing store fails before the model loads
    inputs = load_inputs(ctx.input("features_fewshot"), ctx.input("features_text"))
    processes = ctx.cfg.runtime.processes
    if processes > 1 and ctx.device.type == "cpu":  # OTI/OVI blocks of a small model: one core each beats threads
        run_shards_in_processes(ctx, plan_shards, invert_shard, processes)
    backbone = load_published_backbone(ctx.input("backbone"), ctx.device)
    return invert_and_evaluate(
        backbone.model,
        backbone.tokenizer,
        inputs,
        ctx.cfg.inversion,
        out_dir=ctx.output(),
        metrics_path=ctx.metrics(),
        map_plot_path=ctx.plot("inversion_map_vs_step"),
        similarity_plot_path=ctx.plot("inversion_similarity"),
        device=ctx.device,
        progress=lambda it, total, desc: ctx.progress(it, total=total, desc=desc),
    )
