"""One prepared GPU check: the project's own code paths timed against bare loops, on random weights; prints JSON.

Sections (each runs on its own; one that fails is reported with its error and the others still run):

- `extraction`: images/s of the image encoder through the features stage's code: `features.extract.extract_to_blocks`
  end to end (JPEG decode workers + forward + zarr block writes), and its forward alone (`image_encoder` under
  `torch.inference_mode()` and `autocast_context`: bf16 autocast on CUDA, fp32 on CPU), against a bare fp32
  `encode_image` loop on the same preloaded batches. The stage does not use channels_last; a what-if row measures it.
- `inversion`: OTI (text tower) and OVI (image tower) optimisation steps/s through `run_oti` / `run_ovi` with the
  stage's mixed precision (fp16 autocast + GradScaler on CUDA) and with amp off, against bare fp32 forward+backward
  passes of the same frozen encoder with the same loss and no optimiser.
- `semobridge_t`: `fewshot.train.train_semobridge_t` at ImageNet 16-shot shape (1000 classes, 16 shots x 2 views =
  32000 support views of 16000 images, 512-d, per-step validation on 50000 val queries, ImageNet's last_step) on
  random features: seconds per run for the configured steps (paper: 1:12 per run) and per step.
- `czsl_lora`: one SAM-CZSL training step with LoRA on ViT-L/14 through `czsl.train.train_model` (the +kl row: SA,
  VAC and KL; MIT-States text sizes), images from random pixels; the project trains fp32, a what-if row runs the same
  loop under bf16 autocast.

Timing: every timer starts and stops after `torch.cuda.synchronize()` (CUDA), warm-up iterations run first and are not
timed. Sizes are data (`SCALES`): `full` is sized to finish well under 8 minutes on one H100, `tiny` runs on a CPU in
seconds (the test runs it so this script cannot rot).

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
    python benchmarks/gpu_check.py --scale tiny --device cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

log = logging.getLogger("gpu_check")

TIMING_METHOD = (
    "time.perf_counter around the timed loop; torch.cuda.synchronize() before starting and before stopping each timer "
    "on CUDA; warm-up iterations run first and are excluded"
)
#: Paper's wall time of one ImageNet 16-shot SeMoBridge-T run (spec 6: "took 1:12 to train").
PAPER_SEMOBRIDGE_T_RUN_S = 72.0


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses; one entry per scale in SCALES."""

    clip_model: str  # extraction and inversion backbone (random weights)
    extract_batch: int  # features.batch_size default: 128
    extract_warmup: int  # untimed batches before each forward loop
    extract_batches: int  # timed batches of each forward loop
    extract_images: int  # JPEG files through the stage's extraction path
    extract_workers: int  # DataLoader decode workers of the stage path (0 = in the main process)
    inv_batch: int  # inversion.*.batch_size default: 64
    inv_warmup_steps: int  # untimed optimisation steps (one short run) before each timed run
    oti_steps: int  # OtiConfig default 150
    ovi_steps: int  # OviConfig default 1000; fewer here, the per-step cost is flat
    fs_classes: int  # ImageNet: 1000
    fs_shots: int  # 16-shot
    fs_views: int  # E + 1 = 2 for ImageNet (K' = 2K)
    fs_dim: int  # ViT-B/16 joint space: 512
    fs_val: int  # ImageNet val = test: 50000 queries, validated every step
    fs_steps: int | None  # None = TrainingConfig default (5000, the paper's run)
    fs_warmup_steps: int  # untimed short run first
    fs_train_only_steps: int  # a run without per-step validation, to show the validation's share
    czsl_model: str  # SAM-CZSL backbone: ViT-L-14
    czsl_batch: int | None  # None = CzslConfig default (64, Troika's MIT-States batch; spec 3.4)
    czsl_warmup_steps: int  # untimed steps at the start of the epoch
    czsl_steps: int  # timed steps
    czsl_attrs: int  # MIT-States: 115 attributes
    czsl_objs: int  # 245 objects
    czsl_train_pairs: int  # 1262 train pairs: the composition texts encoded every step


SCALES: dict[str, Sizes] = {
    "full": Sizes(
        clip_model="ViT-B-16", extract_batch=128, extract_warmup=3, extract_batches=30, extract_images=2048,
        extract_workers=min(8, os.cpu_count() or 1), inv_batch=64, inv_warmup_steps=3, oti_steps=150, ovi_steps=100,
        fs_classes=1000, fs_shots=16, fs_views=2, fs_dim=512, fs_val=50000, fs_steps=None, fs_warmup_steps=5,
        fs_train_only_steps=500, czsl_model="ViT-L-14", czsl_batch=None, czsl_warmup_steps=3, czsl_steps=10,
        czsl_attrs=115, czsl_objs=245, czsl_train_pairs=1262,
    ),
    "tiny": Sizes(
        clip_model="bf-tiny-vit-32", extract_batch=2, extract_warmup=1, extract_batches=2, extract_images=2,
        extract_workers=0, inv_batch=2, inv_warmup_steps=1, oti_steps=3, ovi_steps=3, fs_classes=10, fs_shots=2,
        fs_views=2, fs_dim=32, fs_val=40, fs_steps=4, fs_warmup_steps=1, fs_train_only_steps=2,
        czsl_model="bf-tiny-vit-32", czsl_batch=4, czsl_warmup_steps=1, czsl_steps=2, czsl_attrs=4, czsl_objs=3,
        czsl_train_pairs=6,
    ),
}


# ------------------------------------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int) -> float:
    """Seconds for `iters` calls of fn after `warmup` untimed calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return time.perf_counter() - t0


def timed_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call (synchronised on CUDA); the caller runs its warm-up first."""
    return timed(fn, device, warmup=0, iters=1)


def rnd(x: float) -> float:
    """4 significant digits: enough for throughput, keeps the JSON readable; tiny values keep their digits."""
    return float(f"{x:.4g}")


def create_clip(name: str, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """Random-init open_clip model (frozen, eval) and its eval preprocess; tiny project models are registered first."""
    from pipeline_lib.backbone.tiny import register_tiny_models

    register_tiny_models()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return model.to(device).eval().requires_grad_(False), preprocess


def image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# ------------------------------------------------------------------------------------------------------- extraction


def write_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """n smooth random RGB JPEGs (size x size): decoded and resized by the preprocess like real photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BILINEAR)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def run_extraction(sz: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    from PIL import Image

    from pipeline_lib.engine.store import ArraySpec, BlockGroup
    from pipeline_lib.features.extract import ImageViewsDataset, autocast_context, extract_to_blocks, image_encoder

    model, preprocess = create_clip(sz.clip_model, device)
    size = image_size(model)
    b = sz.extract_batch
    images = torch.randn(b, 3, size, size, device=device)  # (B, 3, H, W) preprocessed pixels, preloaded
    encode = image_encoder(model)
    amp = device.type == "cuda"

    def stage_forward() -> None:  # the forward of extract_to_blocks: inference mode + the stage's autocast
        with torch.inference_mode(), autocast_context(device, True):
            encode(images)["image"].float().cpu()

    def bare_fp32() -> None:
        with torch.no_grad():
            model.encode_image(images).float().cpu()

    n_img = b * sz.extract_batches
    t_stage = timed(stage_forward, device, warmup=sz.extract_warmup, iters=sz.extract_batches)
    t_bare = timed(bare_fp32, device, warmup=sz.extract_warmup, iters=sz.extract_batches)

    # the stage's path end to end on image files: decode workers, forward, zarr block writes
    paths = write_jpegs(tmp / "jpg", sz.extract_images, int(size * 256 / 224))
    dim = int(model.visual.output_dim)
    shard = b * max(1, 1024 // b)

    def stage_path(store: Path, subset: list[str]) -> float:
        group = BlockGroup.create_or_resume(store, "bench", [ArraySpec("image", (len(subset), dim), "float32")], b,
                                           shard)
        dataset = ImageViewsDataset(subset, preprocess)
        sync(device)
        t0 = time.perf_counter()
        stats = extract_to_blocks(group, dataset, encode, {}, batch_size=b, device=device, amp=True,
                                  num_workers=sz.extract_workers, progress=lambda it, **_: it)
        sync(device)
        elapsed = time.perf_counter() - t0
        if stats.forwards != len(subset) or not group.complete:
            raise RuntimeError(f"extraction encoded {stats.forwards} of {len(subset)} images")
        return elapsed

    # warm-up: 3 batches start the workers (and the forkserver when one is used) outside the timed run
    stage_path(tmp / "warm.zarr", paths[: min(len(paths), 3 * b)])
    t_path = stage_path(tmp / "timed.zarr", paths)

    # what-if: channels_last (the stage does not use it; only the patch-embedding conv sees the layout)
    model.to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)

    def stage_forward_cl() -> None:
        with torch.inference_mode(), autocast_context(device, True):
            encode(images_cl)["image"].float().cpu()

    t_cl = timed(stage_forward_cl, device, warmup=sz.extract_warmup, iters=sz.extract_batches)
    with Image.open(paths[0]) as im:
        src = im.size
    return {
        "config": {
            "model": sz.clip_model, "image_size": size, "batch_size": b, "timed_batches": sz.extract_batches,
            "warmup_batches": sz.extract_warmup, "stage_path_images": len(paths), "source_jpeg_size": list(src),
            "decode_workers": sz.extract_workers if len(paths) > 2 * b else 0,
            "dtype_stage": "bfloat16 autocast" if amp else "float32 (CPU: autocast off, as the stage)",
            "dtype_bare": "float32", "stage_uses_inference_mode": True, "stage_uses_channels_last": False,
        },
        "metrics": {
            "stage_forward_images_per_s": rnd(n_img / t_stage),
            "bare_fp32_images_per_s": rnd(n_img / t_bare),
            "speedup_stage_vs_bare": rnd(t_bare / t_stage),
            "stage_path_images_per_s": rnd(len(paths) / t_path),
            "whatif_channels_last_images_per_s": rnd(n_img / t_cl),
        },
    }


# -------------------------------------------------------------------------------------------------------- inversion


def bare_steps(encode: Callable[[torch.Tensor], torch.Tensor], leaf: torch.Tensor, targets: torch.Tensor,
               steps: int) -> None:
    """fp32 forward+backward passes of the frozen encoder with the inversion loss (1 - cos), no optimiser."""
    dirs = F.normalize(targets.float(), dim=-1)  # (B, D)
    x = leaf.detach().clone().requires_grad_()
    for _ in range(steps):
        x.grad = None
        feats = encode(x)  # (B, D)
        (1.0 - (F.normalize(feats, dim=-1) * dirs).sum(-1)).mean().backward()


def run_inversion(sz: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    from pipeline_lib.backbone.hooks import pooled_length, text_features_from_embeddings
    from pipeline_lib.inversion.config import OtiConfig, OviConfig
    from pipeline_lib.inversion.oti import prompt_ids, run_oti
    from pipeline_lib.inversion.ovi import run_ovi

    model, _ = create_clip(sz.clip_model, device)
    tokenizer = open_clip.get_tokenizer(sz.clip_model)
    b, size = sz.inv_batch, image_size(model)
    images = torch.randn(b, 3, size, size, device=device)  # (B, 3, H, W)
    with torch.no_grad():
        image_targets = model.encode_image(images)  # (B, D): OTI targets
        text_targets = model.encode_text(tokenizer([f"a photo of thing {i}" for i in range(b)]).to(device))  # (B, D)
    amp = device.type == "cuda"
    out: dict[str, Any] = {"config": {
        "model": sz.clip_model, "batch_size": b, "warmup_steps": sz.inv_warmup_steps,
        "dtype_stage": "float16 autocast + GradScaler" if amp else "float32 (CPU: autocast off, as the stage)",
        "dtype_bare": "float32", "bare": "forward+backward of the frozen tower, same loss, no optimiser",
    }, "metrics": {}}

    oti = OtiConfig(steps=sz.oti_steps, batch_size=b)
    ids, _ = prompt_ids(tokenizer, oti, b)
    ids = ids[:, : pooled_length(model, ids)].to(device)  # (B, L'): the prompt up to its EOS, as OTI runs it
    with torch.no_grad():
        prompt_emb = model.token_embedding(ids)  # (B, L', W)
    ovi = OviConfig(steps=sz.ovi_steps, batch_size=b)
    runs = {
        "oti": (
            oti,
            lambda cfg, use_amp: run_oti(model, tokenizer, image_targets, cfg, seed=0, amp=use_amp),
            lambda steps: bare_steps(lambda x: text_features_from_embeddings(model, x, ids), prompt_emb,
                                     image_targets, steps),
        ),
        "ovi": (
            ovi,
            lambda cfg, use_amp: run_ovi(model, text_targets, cfg, seed=0, amp=use_amp),
            lambda steps: bare_steps(model.encode_image, images, text_targets, steps),
        ),
    }
    for name, (cfg, project, bare) in runs.items():
        warm = cfg.model_copy(update={"steps": sz.inv_warmup_steps})
        project(warm, True)
        t_amp = timed_once(lambda cfg=cfg, project=project: project(cfg, True), device)
        project(warm, False)
        t_fp32 = timed_once(lambda cfg=cfg, project=project: project(cfg, False), device)
        bare(sz.inv_warmup_steps)
        t_bare = timed_once(lambda bare=bare, cfg=cfg: bare(cfg.steps), device)
        out["config"][f"{name}_steps"] = cfg.steps
        out["config"][f"{name}_snapshot_steps"] = list(cfg.recorded_steps)
        out["metrics"].update({
            f"{name}_stage_amp_steps_per_s": rnd(cfg.steps / t_amp),
            f"{name}_stage_fp32_steps_per_s": rnd(cfg.steps / t_fp32),
            f"{name}_bare_fp32_steps_per_s": rnd(cfg.steps / t_bare),
            f"{name}_stage_amp_samples_per_s": rnd(cfg.steps * b / t_amp),
            f"{name}_speedup_amp_vs_bare_fp32": rnd(t_bare / t_amp),
        })
    out["config"]["oti_prompt_positions"] = int(ids.shape[1])
    return out


# ----------------------------------------------------------------------------------------------------- SeMoBridge-T


def fewshot_features(c: int, k: int, v: int, d: int, n_val: int, device: torch.device, seed: int = 0) -> dict:
    """semobridge_t.py's class-structured random features (support views, val queries, W_txt, text), on `device`."""
    from semobridge_t import make_features

    return {name: t.to(device) for name, t in make_features(c, k, v, d, n_val, seed).items()}


def run_semobridge_t(sz: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    from pipeline_lib.fewshot.bridge import fit_bridge, image_prototypes
    from pipeline_lib.fewshot.config import FewshotConfig, TrainingConfig
    from pipeline_lib.fewshot.logits import kl_bits
    from pipeline_lib.fewshot.train import InitValidator, train_semobridge_t

    fcfg = FewshotConfig()
    steps = sz.fs_steps or TrainingConfig().steps
    cfg = TrainingConfig(steps=steps, final_model="last_step")  # ImageNet: last_step, still validated every step
    f = fewshot_features(sz.fs_classes, sz.fs_shots, sz.fs_views, sz.fs_dim, sz.fs_val, device)
    fit = fit_bridge(f["w_txt"].cpu(), f["eos_raw"].cpu(), fcfg.atol)
    pinv = fit.pinv.to(device)
    proto = image_prototypes(f["support"])  # (C, D)
    validator = InitValidator(f["val"], f["val_labels"], f["text_proj"], proto, kl_bits(proto, f["text_proj"]),
                              cfg.init, fcfg.logits, fcfg.search.chunk_queries)

    def train(c: TrainingConfig, val: InitValidator | None) -> None:
        train_semobridge_t(f["support"], f["w_txt"], pinv, fit.scale, f["text_proj"], f["text_eos"], c, val)

    train(cfg.model_copy(update={"steps": sz.fs_warmup_steps}), validator)
    t_run = timed_once(lambda: train(cfg, validator), device)
    plain = cfg.model_copy(update={"steps": sz.fs_train_only_steps, "validate_every": 0})
    t_plain = timed_once(lambda: train(plain, None), device)
    return {
        "config": {
            "classes": sz.fs_classes, "shots": sz.fs_shots, "views_per_shot": sz.fs_views,
            "support_images": sz.fs_classes * sz.fs_shots, "support_views": sz.fs_classes * sz.fs_shots * sz.fs_views,
            "dim": sz.fs_dim, "val_queries_per_step": sz.fs_val, "steps": steps, "warmup_steps": sz.fs_warmup_steps,
            "train_only_steps": sz.fs_train_only_steps, "final_model": cfg.final_model, "dtype": "float32",
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "paper_s_per_run": PAPER_SEMOBRIDGE_T_RUN_S,
        },
        "metrics": {
            "s_per_run": rnd(t_run),
            "s_per_step": rnd(t_run / steps),
            "train_only_s_per_step": rnd(t_plain / sz.fs_train_only_steps),
            "paper_over_ours": rnd(PAPER_SEMOBRIDGE_T_RUN_S / t_run),
        },
    }


# -------------------------------------------------------------------------------------------------------- CZSL LoRA


class StepClock:
    """A token source for `train_model` that runs the LoRA encoder on preloaded pixels and stamps each step's start.

    train_model asks for a batch's tokens first thing in every step and reads the losses back (`.item()`) at its end,
    so the gap between two consecutive calls is exactly one step; each stamp is taken after a synchronize.
    """

    def __init__(self, clip: torch.nn.Module, pixels: torch.Tensor) -> None:
        self.clip, self.pixels, self.stamps = clip, pixels, []

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        from pipeline_lib.czsl.train import encoder_tokens

        sync(self.pixels.device)
        self.stamps.append(time.perf_counter())
        rows = (idx % self.pixels.shape[0]).to(self.pixels.device)
        return encoder_tokens(self.clip, self.pixels[rows])  # (B, 1 + L, D)

    def step_seconds(self, warmup: int) -> list[float]:
        return np.diff(self.stamps)[warmup:].tolist()


def run_czsl_lora(sz: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    from pipeline_lib.czsl.config import CzslConfig
    from pipeline_lib.czsl.lora import apply_lora
    from pipeline_lib.czsl.model import get_variant
    from pipeline_lib.czsl.train import SplitData, build_model, train_model

    batch = sz.czsl_batch or CzslConfig().batch_size
    cfg = CzslConfig(mode="lora", epochs=1, batch_size=batch)
    variant = get_variant("+kl")  # SA + VAC + KL: the most expensive trained row (the bank rows reuse its model)
    clip, _ = create_clip(sz.czsl_model, device)
    tokenizer = open_clip.get_tokenizer(sz.czsl_model)
    lora = apply_lora(clip.visual, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                      targets=cfg.lora_targets)
    clip.visual.train()
    attrs = [f"attr{i}" for i in range(sz.czsl_attrs)]
    objs = [f"obj{i}" for i in range(sz.czsl_objs)]
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(sz.czsl_attrs * sz.czsl_objs, generator=g)[: sz.czsl_train_pairs]
    train_pairs = torch.stack([flat // sz.czsl_objs, flat % sz.czsl_objs], dim=1)  # (P, 2) [attr, obj]
    calls = sz.czsl_warmup_steps + sz.czsl_steps + 1  # + 1: the call after the last timed step closes it
    label = torch.randint(0, sz.czsl_train_pairs, (batch * calls,), generator=g)  # (N,) index into train_pairs
    split = SplitData(attr=train_pairs[label, 0], obj=train_pairs[label, 1], label=label)
    dim = int(clip.visual.output_dim)
    model = build_model(cfg, variant, clip, tokenizer, attrs, objs, dim, device, seed=0)
    size = image_size(clip)
    pixels = torch.randn(batch, 3, size, size, device=device)  # (B, 3, H, W)

    def step_times(autocast_dtype: torch.dtype | None) -> list[float]:
        clock = StepClock(clip, pixels)
        mixed = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with mixed:
            train_model(model, split, train_pairs, cfg, source=clock, val_auc=lambda _m: 0.5, lora_params=lora,
                        progress=lambda it, **_: it, device=device, seed=0)
        return clock.step_seconds(sz.czsl_warmup_steps)

    fp32 = step_times(None)
    whatif = torch.bfloat16 if device.type == "cuda" else None
    mixed = step_times(whatif) if whatif is not None else None
    metrics = {"stage_fp32_s_per_step": rnd(float(np.mean(fp32))), "stage_fp32_images_per_s":
               rnd(batch / float(np.mean(fp32)))}
    if mixed is not None:
        metrics["whatif_bf16_autocast_s_per_step"] = rnd(float(np.mean(mixed)))
        metrics["whatif_bf16_speedup"] = rnd(float(np.mean(fp32)) / float(np.mean(mixed)))
    return {
        "config": {
            "model": sz.czsl_model, "variant": variant.name, "batch_size": batch, "timed_steps": sz.czsl_steps,
            "warmup_steps": sz.czsl_warmup_steps, "lora_rank": cfg.lora_rank, "lora_targets": list(cfg.lora_targets),
            "lora_params": sum(p.numel() for p in lora), "attrs": sz.czsl_attrs, "objs": sz.czsl_objs,
            "train_pairs": sz.czsl_train_pairs, "dtype_stage": "float32 (train_model has no autocast)",
            "step_seconds_fp32": [rnd(s) for s in fp32],
            "batch_size_source": "CzslConfig.batch_size default (Troika MIT-States 64, spec 3.4); the SAM-CZSL "
                                 "spec names no LoRA batch" if sz.czsl_batch is None else "Sizes.czsl_batch",
        },
        "metrics": metrics,
    }


# ------------------------------------------------------------------------------------------------------------ driver

SECTIONS: dict[str, Callable[[Sizes, torch.device, Path], dict[str, Any]]] = {
    "extraction": run_extraction,
    "inversion": run_inversion,
    "semobridge_t": run_semobridge_t,
    "czsl_lora": run_czsl_lora,
}


def list_sections() -> list[str]:
    return list(SECTIONS)


def run_section(name: str, sz: Sizes, device: torch.device) -> dict[str, Any]:
    """One section, isolated: its error (type, message, traceback tail) is the result instead of an exception."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bf-gpu-check-{name}-"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        out: dict[str, Any] = {"ok": True, **SECTIONS[name](sz, device, tmp)}
    except Exception as exc:  # reported in the JSON; the next section still runs
        log.exception("section %s failed", name)
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc().splitlines()[-12:]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    if device.type == "cuda":
        out["peak_cuda_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def environment(device: torch.device, scale: str) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "scale": scale,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "dtypes": {
            "extraction": "bfloat16 autocast (features.extract.autocast_context)" if cuda else "float32",
            "inversion": "float16 autocast + GradScaler (inversion.optimise.invert)" if cuda else "float32",
            "semobridge_t": "float32 (spec 5: no AMP)",
            "czsl_lora": "float32 (train_model); what-if bfloat16 autocast" if cuda else "float32",
            "bare_loops": "float32",
        },
        "weights": "random init (open_clip.create_model_and_transforms(name, pretrained=None))",
        "timing": TIMING_METHOD,
    }


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(choice)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--scale", choices=list(SCALES), default="full", help="full: sized for one H100; tiny: CPU seconds")
    ap.add_argument("--out", type=Path, help="also write the JSON here (rewritten after every section)")
    ap.add_argument("--only", nargs="+", choices=list_sections(), help="run only these sections")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = pick_device(args.device)
    sz = SCALES[args.scale]
    report: dict[str, Any] = {"env": environment(device, args.scale), "sizes": asdict(sz), "sections": {}}
    t0 = time.perf_counter()
    for name in args.only or list_sections():
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        report["sections"][name] = run_section(name, sz, device)
        report["total_wall_s"] = round(time.perf_counter() - t0, 2)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(s["ok"] for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
