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


def _seconds(step: Callable[[], Any], calls: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _rate(step: Callable[[], Any], samples: int, batches: int, device: torch.device) -> float:
    """Samples per second of `step` after one warm-up call (allocation, kernel selection)."""
    step()
    return samples * batches / _seconds(step, batches, device)


def _step_rate(run: Callable[[int], Any], queries: int, device: torch.device) -> float:
    """Query-steps per second of an inversion: a 3-step run minus a 1-step run, so its set-up (prompt tokens,
    initialisation, the final features) is not counted as optimisation."""
    run(1)  # warm-up
    return queries * 2 / max(_seconds(lambda: run(3), 1, device) - _seconds(lambda: run(1), 1, device), 1e-9)


def probe(cfg: Config, batches: int = 2) -> Probe:
    """Rates at the stages' batch sizes on a GPU; on a CPU (where a ViT-B/16 forward takes a fraction of a second
    per image) at 8 images, once, and at most 32 inversion queries, so the probe stays within seconds to a minute.
    Times are one process's: stages that spread work over `runtime.processes` or a cluster finish sooner."""
    from pipeline_lib.backbone.load import create_backbone
    from pipeline_lib.inversion.oti import run_oti
    from pipeline_lib.inversion.ovi import run_ovi

    device = resolve_device(cfg)
    bb = create_backbone(cfg.backbone.model, None, cfg.backbone.force_quick_gelu, device)
    model = bb.model
    cuda = device.type == "cuda"
    n = cfg.features.batch_size if cuda else min(cfg.features.batch_size, 8)
    batches = batches if cuda else 1
    images = torch.randn(n, 3, bb.image_size, bb.image_size, device=device)
    inv = cfg.inversion
    n_inv = inv.oti.batch_size if cuda else min(inv.oti.batch_size, 32)
    width = int(model.text_projection.shape[1])
    targets = torch.nn.functional.normalize(torch.randn(n_inv, width, device=device), dim=-1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.features.amp and cuda else nullcontext()

    def oti(steps: int) -> None:
        oti_cfg = inv.oti.model_copy(update={"steps": steps, "snapshot_steps": (steps,), "batch_size": n_inv})
        run_oti(model, bb.tokenizer, targets, oti_cfg, seed=0, amp=inv.amp)

    def ovi(steps: int) -> None:
        ovi_cfg = inv.ovi.model_copy(update={"steps": steps, "snapshot_steps": (steps,), "batch_size": n_inv})
        run_ovi(model, targets, ovi_cfg, seed=0, amp=inv.amp)

    def image_forward() -> None:
        with torch.no_grad(), amp:
            model.encode_image(images)

    def image_train() -> None:
        model.zero_grad(set_to_none=True)
        model.encode_image(images).float().pow(2).mean().backward()

    rates = {IMAGE_FORWARD: _rate(image_forward, n, batches, device),
             IMAGE_TRAIN: _rate(image_train, n, batches, device)}
    model.zero_grad(set_to_none=True)
    rates[OTI_STEPS] = _step_rate(oti, n_inv, device)
    rates[OVI_STEPS] = _step_rate(ovi, n_inv, device)
    return Probe(rates, device.type, n)
