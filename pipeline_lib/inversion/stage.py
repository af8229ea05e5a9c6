"""The inversion stages: OTI on one image-retrieval dataset's query images (`oti@<dataset>`), OVI on one
text-retrieval dataset's query texts (`ovi@<dataset>`), and inter- vs intra-modal retrieval.

Image retrieval reads the dataset's few-shot feature store (by default test images query train images, relevant = same
class); each query image's feature is inverted into a pseudo-word (OTI) whose text feature is ranked against the raw
gallery image features and compared with plain image->image ranking. Text retrieval reads the dataset's
retrieval-text store; each query text's feature is inverted into pseudo-patches (OVI) whose image feature is ranked
against the raw gallery text features and compared with text->text. Retrieval is measured at every recorded
optimisation step, because the inverted features drift back toward their own modality the longer they are optimised.

Each instance's queries are split into validation and test queries (`inversion.evaluate`): the step reported as
selected is chosen on validation mAP alone, and every reported retrieval number (metrics JSON, mAP-vs-step plot) is a
mean over the test queries. Per-query AP of both methods at every step, both splits, goes to `outputs.PER_QUERY_AP`
in the output folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline_lib.data.revisited import RevisitedGroundTruth
from pipeline_lib.diagnose.retrieval import retrieval_metrics
from pipeline_lib.diagnose.revisited import revisited_metrics
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.engine.parallel import run_shards_in_processes
from pipeline_lib.inversion.config import InversionConfig
from pipeline_lib.inversion.evaluate import direction_split, evaluate_direction, write_per_query
from pipeline_lib.inversion.jobs import (
    STORE,
    ImageRetrieval,
    InversionJob,
    TextRetrieval,
    instance_config,
    instance_job,
    load_instance_inputs,
    prepare_model,
)
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
            if "revisited" in full:  # revisited Oxford / Paris: the protocol's mAP per difficulty
                out[side]["revisited"] = {m: {k: _round(v) for k, v in by.items() if k.startswith("map_")}
                                          for m, by in full["revisited"].items()}
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _metrics(q: np.ndarray | Tensor, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, chunk: int) -> dict[str, float]:
    return retrieval_metrics(q, ql, g, gl, chunk=chunk).as_dict()


def _invert(job: InversionJob, store: Path, device: torch.device, progress: Progress | None) -> tuple[Any, float]:
    """Run the job's blocks (resumable in `store`); its group and the seconds it took."""
    t0 = time.perf_counter()
    group = run_blocks(store, job.name, job.targets, job.invert, job.spec, device=device, progress=progress).group
    group.attrs["query_index"] = job.query_index.tolist()
    return group, round(time.perf_counter() - t0, 3)


def oti_and_evaluate(job: InversionJob, inputs: ImageRetrieval, cfg: InversionConfig, out: Outputs,
                     device: torch.device, progress: Progress | None = None) -> dict[str, Any]:
    """OTI of the query images, ranked against the raw gallery images (and image->image): metrics, per-query AP and
    plots."""
    group, seconds = _invert(job, out.folder / STORE, device, progress)
    qi, targets = job.query_index, job.targets
    ql, g, gl = inputs.query_labels[qi], inputs.gallery, inputs.gallery_labels
    snaps = np.asarray(group["snapshots"][...])  # (Q, S, D)
    gt = None if inputs.ground_truth is None else inputs.ground_truth.subset(qi)
    is_val = direction_split("image", ql, cfg.val_fraction, cfg.seed)
    metrics, frame = evaluate_direction(
        "image", "image_to_image", "oti_to_image", targets, snaps, cfg.oti.recorded_steps, cfg.oti.steps, ql, g, gl,
        qi, is_val=is_val, chunk=cfg.query_chunk, own=inputs.own(qi), relevant=None if gt is None else gt.medium())
    metrics["oti_final_loss"] = float(np.mean(group["losses"][:, -1]))
    if gt is not None:
        metrics["revisited"] = _revisited(gt, targets, snaps, metrics, cfg, g, ~is_val)
    if inputs.class_text is not None:  # reference: one class prompt per class as the query (no query split)
        classes = np.unique(gl)
        metrics["class_text_to_image"] = _metrics(inputs.class_text[classes], classes, g, gl, cfg.query_chunk)
    out.write({"image": metrics}, frame, "oti_to_image", "image_to_image")
    _write_similarity_plot(out.plots[1], cfg, inputs, targets, snaps, g)
    return _summary("oti", len(qi), seconds, metrics, "image_to_image", "oti_to_image")


def ovi_and_evaluate(job: InversionJob, inputs: TextRetrieval, cfg: InversionConfig, out: Outputs,
                     device: torch.device, progress: Progress | None = None) -> dict[str, Any]:
    """OVI of the query texts, ranked against the raw gallery texts (and text->text): metrics, per-query AP, plot."""
    group, seconds = _invert(job, out.folder / STORE, device, progress)
    qt = job.query_index
    ql, g, gl = inputs.query_groups[qt], inputs.gallery, inputs.gallery_groups
    relevant = None if inputs.relevant is None else inputs.relevant.subset(qt)
    metrics, frame = evaluate_direction(
        "text", "text_to_text", "ovi_to_text", job.targets, np.asarray(group["snapshots"][...]),
        cfg.ovi.recorded_steps, cfg.ovi.steps, ql, g, gl, qt,
        is_val=direction_split("text", ql, cfg.val_fraction, cfg.seed), chunk=cfg.query_chunk, relevant=relevant)
    metrics["ovi_final_loss"] = float(np.mean(group["losses"][:, -1]))
    out.write({"text": metrics}, frame, "ovi_to_text", "text_to_text")
    return _summary("ovi", len(qt), seconds, metrics, "text_to_text", "ovi_to_text")


def _revisited(gt: RevisitedGroundTruth, targets: np.ndarray, snaps: np.ndarray, metrics: dict[str, Any],
               cfg: InversionConfig, gallery: np.ndarray, is_test: np.ndarray) -> dict[str, dict[str, float | None]]:
    """The revisited protocol's mAP (Easy / Medium / Hard) and mP@k over the test queries: image->image, OTI at the
    final and at the validation-selected step (the headline `map` of a revisited set is plain AP against its Easy +
    Hard images; these are the numbers its papers report)."""
    steps = list(cfg.oti.recorded_steps)
    test = np.flatnonzero(is_test)
    sub = gt.subset(test)
    rows = {"image_to_image": targets, "oti_to_image": snaps[:, steps.index(cfg.oti.steps)],
            "oti_to_image_selected": snaps[:, steps.index(metrics["selected_step"])]}
    out = {name: revisited_metrics(q[test], gallery, sub, chunk=cfg.query_chunk) for name, q in rows.items()}
    return {name: {k: None if v != v else v for k, v in m.items()} for name, m in out.items()}  # NaN: no positive


def _summary(name: str, queries: int, seconds: float, metrics: dict[str, Any], baseline: str, inverted: str
             ) -> dict[str, Any]:
    """The manifest summary of an instance: test-query mAPs only."""
    summary = {name: {"queries": queries, "seconds": seconds}, f"{baseline}_map": metrics[baseline]["map"],
               f"{inverted}_map": metrics[inverted]["map"], f"{name}_selected_step": metrics["selected_step"]}
    log.info("%s: %s", name, summary)
    return summary


@dataclass(frozen=True)
class Outputs:
    """Where an instance writes: its output folder, metrics file and plots (mAP vs step first)."""

    folder: Path
    metrics: Path
    plots: tuple[Path, ...]

    def write(self, retrieval: dict[str, Any], frame: pl.DataFrame, inverted: str, baseline: str) -> None:
        """Every retrieval number, the metrics a reader compares, per-query AP and the mAP-vs-step plot."""
        write_json(self.folder / RETRIEVAL, retrieval, sort_keys=True)
        write_json(self.metrics, headline(retrieval), sort_keys=True)
        write_per_query(self.folder / PER_QUERY_AP, [frame])
        (side,) = retrieval.values()
        _write_map_plot(self.plots[0], side, inverted, baseline)


def _write_map_plot(path: Path, side: dict[str, Any], inverted: str, baseline: str) -> None:
    """mAP vs optimisation step over the *test* queries: the inverted queries per step, the intra-modal baseline flat.

    The curve is shown for reading, not for selection: the selected step (`selected_step` in the metrics) is chosen on
    the validation queries' mAP (`by_step.val`).
    """
    by_step = side["by_step"]["test"]
    rows = [[s, _fmt(by_step[str(s)]), _fmt(side[baseline]["map"])] for s in sorted(int(s) for s in by_step)]
    write_csv(path, ["step", inverted, baseline], rows)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def _write_similarity_plot(path: Path, cfg: InversionConfig, inputs: ImageRetrieval, image_queries: np.ndarray,
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


def run_oti(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point of `oti@<dataset>`: invert its query images and evaluate image retrieval."""
    return _run(ctx, (ctx.plot("oti_map_vs_step"), ctx.plot("inversion_similarity")))


def run_ovi(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point of `ovi@<dataset>`: invert its query texts and evaluate text retrieval."""
    return _run(ctx, (ctx.plot("ovi_map_vs_step"),))


def _run(ctx: StageContext, plots: tuple[Path, ...]) -> dict[str, Any]:
    """Resolve inputs and outputs, load the published backbone, invert (in worker processes when asked) and evaluate."""
    from pipeline_lib.backbone.load import load_published_backbone

    inputs = load_instance_inputs(ctx)  # cheap, so a missing store fails before the model loads
    cfg = instance_config(ctx)  # and a backbone without a reference P
    processes = ctx.cfg.runtime.processes
    if processes > 1 and ctx.device.type == "cpu":  # OTI/OVI blocks of a small model: one core each beats threads
        run_shards_in_processes(ctx, plan_shards, invert_shard, processes)
    backbone = load_published_backbone(ctx.input("backbone"), ctx.device)
    model = prepare_model(backbone.model, ctx.device)
    job = instance_job(model, backbone.tokenizer, inputs, cfg)
    out = Outputs(ctx.output(), ctx.metrics(), plots)
    progress: Progress = lambda it, total, desc: ctx.progress(it, total=total, desc=desc)  # noqa: E731
    if isinstance(inputs, ImageRetrieval):
        return oti_and_evaluate(job, inputs, cfg, out, ctx.device, progress)
    return ovi_and_evaluate(job, inputs, cfg, out, ctx.device, progress)
