"""Benchmark: one SeMoBridge-T run and one 1000-trial blend search at ImageNet shape, on random class-structured
features (CLIP never runs). Prints one JSON object.

Training FLOPs are counted analytically from the matmul shapes of each step (forward + backward of the loss terms,
plus the per-step validation matmuls); the machine's fp32 matmul peak is measured in the same process with a large
torch.matmul loop (before and after the run; the larger value is used, so the ratio is conservative).

    python benchmarks/semobridge_t.py                      # 5000 steps, per-step val on 50k queries (slow on CPU)
    python benchmarks/semobridge_t.py --steps 20 --val 5000  # quick check; per-step cost is the same every step
    python benchmarks/semobridge_t.py --steps 100 --validate-every 50  # validation every 50 steps and after the last

Per-step validation ranks every val query, which dominates a CPU step at ImageNet's 50k queries;
`projected_5000_steps_s_by_validate_every` projects a full run for several `fewshot.training.validate_every` values
from the measured step and validation-pass times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.bridge import bridged_prototypes, fit_bridge, image_prototypes
from pipeline_lib.fewshot.config import SearchConfig, TrainingConfig
from pipeline_lib.fewshot.logits import BlendEvaluator, kl_bits, similarity_maps
from pipeline_lib.fewshot.search import search_blend
from pipeline_lib.fewshot.train import InitValidator, train_semobridge_t


def measure_peak_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of repeated (n x n) @ (n x n) matmuls over ~`seconds`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)  # warm-up
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b, out=out)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def make_features(c: int, k: int, v: int, d: int, n_val: int, seed: int = 0) -> dict:
    """Class-structured random features: every class has a text direction; images are a class-dependent mix of it,
    a per-class image offset (the modality gap) and noise, so zero-shot and prototypes are informative but imperfect."""
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(c, d, generator=g), dim=-1)  # (C, D)
    img_offset = F.normalize(torch.randn(c, d, generator=g), dim=-1)  # (C, D)
    gap = F.normalize(torch.randn(d, generator=g), dim=0)  # shared modality-gap direction

    def images(labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(labels.shape[0], d, generator=g) / math.sqrt(d)
        return 10.0 * (0.12 * text[labels] + 0.12 * img_offset[labels] + 0.6 * gap + 1.0 * noise)  # raw, unnormalised

    sup_labels = torch.arange(c).repeat_interleave(k)
    originals = images(sup_labels).reshape(c, k, d)
    views = [originals] + [originals + 2.0 * torch.randn(c, k, d, generator=g) / math.sqrt(d) for _ in range(v - 1)]
    support = torch.cat(views, dim=1)  # (C, K', D): K originals, then the K copies per augment
    val_labels = torch.arange(n_val) % c
    w_txt = torch.randn(d, d, generator=g) / math.sqrt(d)  # singular values spread over ~[0, 2]
    eos_raw = 25.0 * F.normalize(torch.randn(c, d, generator=g), dim=-1)
    return {
        "support": support,
        "text_proj": text,
        "text_eos": F.normalize(eos_raw, dim=-1),
        "eos_raw": eos_raw,
        "w_txt": w_txt,
        "val": images(val_labels),
        "val_labels": val_labels,
    }


def train_flops(c: int, kp: int, dp: int, dt: int, n_val: int, validate: bool) -> float:
    """Matmul FLOPs of one training step (forward + backward) plus its validation."""
    m = c * kp
    fwd = {
        "fw": 2 * m * dp * dt,
        "uw": 2 * m * dt * dp,
        "img": 2 * m * dp * c,
        "cons": 2 * m * dp * c,
        "txte": 2 * c * dt * c,
        "txtp": 2 * c * dp * c,
    }
    # backward: F @ W+ only needs dW+; u~ @ W_txt only du~; img/txte/txtp one trainable side; cons both sides
    bwd = {"fw": 1, "uw": 1, "img": 1, "cons": 2, "txte": 1, "txtp": 1}
    total = sum(f * (1 + bwd[n]) for n, f in fwd.items())
    if validate:
        total += 2 * dp * dt * dp + 2 * n_val * dp * dp + 2 * (2 * n_val * dp * c)  # A, f A, q^ P^T and q P^^T
    return float(total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000, help="training steps (5000 = the paper's run)")
    ap.add_argument("--val", type=int, default=50000, help="val queries used by the per-step validation")
    ap.add_argument("--search-val", type=int, default=50000, help="val queries of the blend search")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--views", type=int, default=2, help="views per shot (E + 1)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--validate-every", type=int, default=1, help="fewshot.training.validate_every (>= 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "shape": {
            "classes": args.classes,
            "shots": args.shots,
            "views": args.views,
            "dim": args.dim,
            "val_per_step": args.val,
            "search_val": args.search_val,
        },
    }
    n_val = max(args.val, args.search_val)
    feats = make_features(args.classes, args.shots, args.views, args.dim, n_val)
    fit = fit_bridge(feats["w_txt"], feats["eos_raw"], 0.3)
    out["bridge"] = fit.summary()
    proto = image_prototypes(feats["support"])
    kl = kl_bits(proto, feats["text_proj"])

    if not args.skip_train:
        peak_before = measure_peak_gflops()
        cfg = TrainingConfig(steps=args.steps, validate_every=args.validate_every)
        val, val_y = feats["val"][: args.val], feats["val_labels"][: args.val]
        validator = InitValidator(val, val_y, feats["text_proj"], proto, kl, cfg.init)
        t0, c0 = time.perf_counter(), time.process_time()
        res = train_semobridge_t(
            feats["support"], feats["w_txt"], fit.pinv, fit.scale, feats["text_proj"], feats["text_eos"], cfg, validator
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak_after = measure_peak_gflops()
        peak = max(peak_before, peak_after)
        kp = feats["support"].shape[1]
        # every validate_every-th step and the last are validated; the last validation needs one extra support
        # bridging (2 matmuls)
        passes = (args.steps - 1) // args.validate_every + 1
        step_flops = train_flops(args.classes, kp, args.dim, args.dim, args.val, False)
        val_flops = train_flops(args.classes, kp, args.dim, args.dim, args.val, True) - step_flops
        flops = args.steps * step_flops + passes * val_flops + 2 * (2 * args.classes * kp * args.dim * args.dim)
        # split the wall time by FLOPs into a training step and a validation pass, to project other intervals
        val_s = wall * passes * val_flops / flops
        step_s = (wall - val_s) / args.steps
        gflops = flops / wall / 1e9
        out["train"] = {
            "steps": args.steps,
            "wall_s": round(wall, 2),
            "process_cpu_s": round(cpu, 2),
            "s_per_step": round(wall / args.steps, 4),
            "gflop_total": round(flops / 1e9, 1),
            "achieved_gflops": round(gflops, 2),
            "peak_gflops_before": round(peak_before, 2),
            "peak_gflops_after": round(peak_after, 2),
            "ratio_to_peak": round(gflops / peak, 3),
            "validate_every": args.validate_every,
            "projected_5000_steps_s": round(wall / args.steps * 5000, 1),
            "projected_5000_steps_s_by_validate_every": {
                str(n): round(5000 * step_s + math.ceil(5000 / n) * val_s, 1) for n in (1, 10, 50, 100)
            },
            "best_val_init_acc": res.best_val_acc,
            "best_step": res.best_step,
            "final_loss": res.curves["total"][-1],
        }

    if not args.skip_search:
        sv, sy = feats["val"][: args.search_val], feats["val_labels"][: args.search_val]
        p_hat = bridged_prototypes(feats["support"], fit.pinv, feats["w_txt"], fit.scale)[0]
        t0 = time.perf_counter()
        maps = similarity_maps(sv, feats["text_proj"], proto, p_hat, fit.pinv, feats["w_txt"])
        t_maps = time.perf_counter() - t0
        s_cfg = SearchConfig(n_trials=args.trials)
        t0 = time.perf_counter()
        ev = BlendEvaluator(
            maps.s1, maps.s2, maps.s3, kl, sy, "all", tuple(s_cfg.prune_topk), s_cfg.prune_kl_topk, s_cfg.chunk_queries
        )
        t_build = time.perf_counter() - t0
        c0 = time.process_time()
        r = search_blend(ev, s_cfg, seed=1)
        trials_cpu = time.process_time() - c0
        zs = float((maps.s1.argmax(1) == sy).float().mean() * 100)
        out["search"] = {
            "trials": args.trials,
            "queries": args.search_val,
            "classes": args.classes,
            "maps_s": round(t_maps, 2),
            "evaluator_build_s": round(t_build, 2),
            "trials_s": round(r.seconds, 2),
            "total_s": round(t_maps + t_build + r.seconds, 2),
            "trials_process_cpu_s": round(trials_cpu, 2),
            "level_rows_per_trial": [round(x / args.trials, 1) for x in ev.level_rows],
            "best_val_acc": r.val_acc,
            "zero_shot_val_acc": zs,
            "full_rescore_fraction": round(r.full_rescore_fraction, 4),
            "levels": [lev.width for lev in ev.levels],
        }
    out["load_average_1m_end"] = os.getloadavg()[0]  # other processes sharing the cores inflate wall times
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
