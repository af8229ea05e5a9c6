"""Stage entry point of `backbone`: pretrain the tiny CLIP, or record a real backbone's spec and weight fingerprint.

It only resolves paths and params and writes outputs; the work lives in pretrain.py and load.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from pipeline_lib.backbone.config import BackboneConfig
from pipeline_lib.backbone.load import create_backbone, model_fingerprint, save_published_backbone
from pipeline_lib.backbone.pretrain import ATTRIBUTES, CHECKPOINT_FILE, init_tiny_backbone, load_corpus, pretrain
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json

logger = logging.getLogger(__name__)


def run_backbone(ctx: StageContext) -> dict[str, Any]:
    """Pretrain the tiny CLIP on the shapes corpus (model.pt + spec), or record a real backbone's spec + fingerprint."""
    loss_columns = ("step", "loss", "lr", "logit_scale", *(f"zs_{a}" for a in ATTRIBUTES))
    cfg: BackboneConfig = ctx.cfg.backbone
    device = torch.device(ctx.device)
    out_dir = ctx.output()
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
        write_csv(ctx.plot("backbone_loss"), loss_columns, [])
        write_json(ctx.metrics(), {}, sort_keys=True)  # nothing measured: the spec and fingerprint are the manifest's
        return summary

    corpus = load_corpus(ctx.input("data") / "pretrain")
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
    write_csv(ctx.plot("backbone_loss"), loss_columns, result.rows)
    headline = {"final_loss": summary["final_loss"], "zero_shot": summary["zero_shot"]}
    write_json(ctx.metrics(), headline, sort_keys=True)  # the rest (spec, timings) is the manifest's summary
    logger.info("backbone pretrained: zero-shot %s (chance %s)", summary["zero_shot"], summary["chance"])
    return summary
