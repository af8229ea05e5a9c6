"""Throughput of the configured backbone's architecture on the configured device, measured in a few seconds.

The probe builds the architecture with random weights (a pretrained one runs at the same speed, and nothing is
downloaded) and times, on random inputs, the work the costly stages do: image forwards (feature extraction), image
forward + backward through every weight (pretraining, LoRA), and a few OTI and OVI steps with the configured
inversion settings (the stages' own functions). Rates are samples (or query-steps) per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from pipeline_lib.engine.config import Config
from pipeline_lib.engine.context import resolve_device

#: Kinds of work a rate is measured for (`Work.parts` kinds that get a time estimate).
IMAGE_FORWARD, IMAGE_TRAIN = "image forwards", "image fwd+bwd"
OTI_STEPS, OVI_STEPS = "OTI query-steps", "OVI query-steps"


@dataclass(frozen=True)
class Probe:
    """Measured rates by kind of work, and where they were measured."""

    rates: dict[str, float]  # samples per second
    device: str
    batch: int


def architecture(cfg: Config) -> dict[str, int]:
    """Embedding width and tokens per image (class token + patches) of the configured model, from its config."""
    import open_clip

    from pipeline_lib.backbone.load import register_tiny_models

    register_tiny_models()
    config = open_clip.get_model_config(cfg.backbone.model)
    if config is None:
        raise ValueError(f"backbone.model = {cfg.backbone.model!r}: no open_clip config to plan with")
    vision = config["vision_cfg"]
    grid = int(vision["image_size"]) // int(vision["patch_size"])
    return {"embed_dim": int(config["embed_dim"]), "tokens": 1 + grid * grid}


def _rate(step: Callable[[], Any], samples: int, batches: int, device: torch.device) -> float:
    if device.type == "cuda":
        step()  # warm-up: allocation, kernel selection (a CPU has none worth a second call)
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples * batches / (time.perf_counter() - start)


def probe(cfg: Config, batches: int = 2) -> Probe:
    """Rates at the stages' batch sizes on a GPU; on a CPU (where a ViT-B/16 forward takes a fraction of a second
    per image) at 4 images and 8 inversion queries, once each, so the probe stays within seconds to a minute."""
    from pipeline_lib.backbone.load import create_backbone
    from pipeline_lib.inversion.oti import run_oti
    from pipeline_lib.inversion.ovi import run_ovi

    device = resolve_device(cfg)
    bb = create_backbone(cfg.backbone.model, None, cfg.backbone.force_quick_gelu, device)
    model = bb.model
    cuda = device.type == "cuda"
    n = cfg.features.batch_size if cuda else min(cfg.features.batch_size, 4)
    batches = batches if cuda else 1
    images = torch.randn(n, 3, bb.image_size, bb.image_size, device=device)
    inv = cfg.inversion
    n_inv = inv.oti.batch_size if cuda else min(inv.oti.batch_size, 8)
    width = int(model.text_projection.shape[1])
    targets = torch.nn.functional.normalize(torch.randn(n_inv, width, device=device), dim=-1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.features.amp and cuda else nullcontext()
    steps = 2 if cuda else 1
    oti_cfg = inv.oti.model_copy(update={"steps": steps, "snapshot_steps": (steps,), "batch_size": n_inv})
    ovi_cfg = inv.ovi.model_copy(update={"steps": steps, "snapshot_steps": (steps,), "batch_size": n_inv})

    def image_forward() -> None:
        with torch.no_grad(), amp:
            model.encode_image(images)

    def image_train() -> None:
        model.zero_grad(set_to_none=True)
        model.encode_image(images).float().pow(2).mean().backward()

    rates = {IMAGE_FORWARD: _rate(image_forward, n, batches, device),
             IMAGE_TRAIN: _rate(image_train, n, batches, device)}
    model.zero_grad(set_to_none=True)
    rates[OTI_STEPS] = _rate(lambda: run_oti(model, bb.tokenizer, targets, oti_cfg, seed=0, amp=inv.amp),
                             n_inv * steps, 1, device)
    rates[OVI_STEPS] = _rate(lambda: run_ovi(model, targets, ovi_cfg, seed=0, amp=inv.amp), n_inv * steps, 1, device)
    return Probe(rates, device.type, n)
