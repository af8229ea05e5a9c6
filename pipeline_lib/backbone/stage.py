"""Stage entry points: `backbone` (pretrain the tiny CLIP or record a real one) and `diagnose` (modality gap).

They only resolve paths and params and write outputs; the work lives in pretrain.py, load.py and diagnostics.py.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_lib import diagnostics as dg
from pipeline_lib.backbone.config import BackboneConfig

logger = logging.getLogger(__name__)

BACKBONE_OUT = "artifacts/backbone"
BACKBONE_METRICS = "metrics/backbone.json"
BACKBONE_PLOT = "plots/backbone_loss.csv"
DIAGNOSE_OUT = "artifacts/diagnose"
GAP_METRICS = "metrics/gap.json"
GAP_PLOT = "plots/gap_similarity.csv"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _write_csv(path: Path, columns: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run_backbone(ctx: Any) -> dict[str, Any]:
    """Pretrain the tiny CLIP on the shapes corpus (model.pt + spec), or record a real backbone's spec + fingerprint."""
    # Imported here, not at module level: `diagnose` shares this module and needs neither open_clip nor the model.
    from pipeline_lib.backbone.load import create_backbone, model_fingerprint, save_published_backbone
    from pipeline_lib.backbone.pretrain import ATTRIBUTES, CHECKPOINT_FILE, init_tiny_backbone, load_corpus, pretrain

    loss_columns = ("step", "loss", "lr", "logit_scale", *(f"zs_{a}" for a in ATTRIBUTES))
    cfg: BackboneConfig = ctx.cfg.backbone
    device = torch.device(ctx.device)
    out_dir = ctx.out(BACKBONE_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if not cfg.trains_here:
        backbone = create_backbone(cfg.model, cfg.pretrained, cfg.force_quick_gelu, device)
        spec = save_published_backbone(backbone, out_dir, save_weights=False)
        summary = {
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "quick_gelu": backbone.quick_gelu,
            "fingerprint": spec["fingerprint"],
            "trained": False,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        _write_csv(ctx.out(BACKBONE_PLOT), loss_columns, [])
        _write_json(ctx.out(BACKBONE_METRICS), summary)
        return summary

    corpus = load_corpus(Path(ctx.inp("artifacts/data")) / "pretrain")
    backbone = init_tiny_backbone(cfg.model, cfg.train.seed, device)
    result = pretrain(
        backbone.model,
        backbone.tokenizer,
        corpus,
        cfg.train,
        out_dir,
        model_name=cfg.model,
        device=device,
        progress=ctx.progress,
    )
    (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # resumable state is not part of the published output
    backbone.model.eval()
    backbone.fingerprint = model_fingerprint(backbone.model)
    spec = save_published_backbone(backbone, out_dir, save_weights=True)
    summary = {
        "model": cfg.model,
        "pretrained": None,
        "fingerprint": spec["fingerprint"],
        "trained": True,
        "steps": result.steps,
        "final_loss": round(result.final_loss, 5),
        "zero_shot": {k: round(v, 4) for k, v in result.zero_shot.items()},
        "chance": {k: round(v, 4) for k, v in result.chance.items()},
        "held_out_images": result.held_out,
        "corpus_images": len(corpus.labels),
        "resumed_from_step": result.resumed_from,
        "train_seconds": round(result.seconds, 2),
        "steps_per_second": round(result.steps_run / result.seconds, 3) if result.seconds > 0 else None,
        "seconds": round(time.perf_counter() - t0, 2),
        "device": device.type,
    }
    _write_csv(ctx.out(BACKBONE_PLOT), loss_columns, result.rows)
    _write_json(ctx.out(BACKBONE_METRICS), summary)
    logger.info("backbone pretrained: zero-shot %s (chance %s)", summary["zero_shot"], summary["chance"])
    return summary


def gap_report(store: Path, cfg: Any) -> tuple[dict[str, Any], list[dict[str, float]], dict[str, Any]]:
    """(metrics, histogram rows, details) of the few-shot feature store at `store` (artifacts/features/fewshot.zarr)."""
    from pipeline_lib.store import read_array

    if not Path(store).exists():
        raise FileNotFoundError(f"feature store {store} not found: run the features stage first")
    image = read_array(store, f"{cfg.split}/image")  # (N, D)
    labels = read_array(store, f"{cfg.split}/label")  # (N,)
    train = read_array(store, "train/image")  # (Ntr, D)
    train_labels = read_array(store, "train/label")
    class_text = read_array(store, "text/class_proj")  # (C, D)
    prompt_text = read_array(store, "text/prompt_proj")  # (C, M, D)
    text_projection = read_array(store, "clip/text_projection")  # (W, D)
    n_classes = len(class_text)

    spectrum = dg.projection_spectrum(text_projection, cfg.weak_atol)
    energy = dg.energy_shares(image, text_projection, cfg.weak_atol)
    gap = dg.gap_summary(image, labels, class_text, prompt_text)
    map_ii = dg.retrieval_map(image, labels, image, labels, exclude_self=True)
    map_ti = dg.retrieval_map(class_text, np.arange(n_classes), image, labels)
    zero_shot = dg.zero_shot_accuracy(image, labels, class_text)
    max_shots = int(np.bincount(train_labels, minlength=n_classes).min())
    shots = [k for k in cfg.shots if k <= max_shots]
    if len(shots) < len(cfg.shots):
        logger.warning(
            "shots %s skipped: the train split has only %d images in its smallest class",
            sorted(set(cfg.shots) - set(shots)),
            max_shots,
        )
    protos = dg.prototype_accuracy(train, train_labels, image, labels, n_classes, shots, cfg.seeds)

    metrics = {
        "split": cfg.split,
        "images": len(image),
        "classes": n_classes,
        **{k: round(v, 4) for k, v in gap.items()},
        "text_projection": {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in spectrum.items() if k != "singular_values"
        },
        "energy": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in energy.items()},
        "retrieval_map": {"image_to_image": round(map_ii, 4), "class_text_to_image": round(map_ti, 4)},
        "zero_shot_accuracy": round(zero_shot, 4),
        "prototype_accuracy": {f"{k}_shot": round(v["mean"], 4) for k, v in protos.items()},
        "prototype_accuracy_std": {f"{k}_shot": round(v["std"], 4) for k, v in protos.items()},
    }
    hist = dg.similarity_histograms(image, labels, class_text, prompt_text, cfg.bins, cfg.histogram_images)
    details = {"singular_values": spectrum["singular_values"], "prototypes": {str(k): v for k, v in protos.items()}}
    return metrics, hist, details


def run_diagnose(ctx: Any) -> dict[str, Any]:
    """Modality-gap diagnostics of the few-shot feature store: metrics/gap.json + plots/gap_similarity.csv."""
    cfg = ctx.cfg.backbone.diagnose
    store = Path(ctx.inp("artifacts/features")) / "fewshot.zarr"
    metrics, hist, details = gap_report(store, cfg)
    out_dir = ctx.out(DIAGNOSE_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "gap_details.json", {**metrics, **details})
    _write_json(ctx.out(GAP_METRICS), metrics)
    _write_csv(ctx.out(GAP_PLOT), ["cosine", "image_text", "image_image", "text_text"], hist)
    return metrics
