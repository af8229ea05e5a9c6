"""Samples/s of OTI and OVI against the bare forward+backward passes of the frozen encoder, in one run.

OTI / OVI run exactly as the stage does (hooked native forward, AdamW, snapshots, loss curves, fp32 recompute of the
final features; fp16 autocast + GradScaler on CUDA). The bare loop runs the same number of forward+backward passes of
the same encoder on the same batch with a plain leaf input and the same cosine loss, and nothing else: for the text
tower the input token embeddings of the prompt up to its EOS (through `text_features_from_embeddings`, the positions
OTI runs: `hooks.pooled_length`), for the image tower the pixels (through `encode_image`). Prints one JSON object;
`overhead` = bare samples/s / inversion samples/s
(1.0 = the inversion costs nothing beyond the encoder; the target is <= 1.15), from process CPU time on a CPU (a
shared machine's load barely moves it; `overhead_wall` is the wall-clock ratio) and from wall time on CUDA.

    python benchmarks/inversion.py --model bf-tiny-vit-32 --batch-size 64 --oti-steps 150 --ovi-steps 150
    python benchmarks/inversion.py --model ViT-B-32 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline_lib.backbone.hooks import pooled_length, text_features_from_embeddings
from pipeline_lib.backbone.tiny import register_tiny_models
from pipeline_lib.inversion.config import OtiConfig, OviConfig
from pipeline_lib.inversion.oti import prompt_ids, run_oti
from pipeline_lib.inversion.ovi import run_ovi


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """Best wall and process-CPU time per function over `repeats` interleaved rounds after one warm-up round.

    Interleaving puts each inversion next to its bare loop in time, so load from other processes on a shared machine
    hits both alike; best-of discards rounds that were interrupted. On a CPU the process time (this process's own
    CPU seconds) is far less disturbed by other processes than the wall time.
    """
    best = {name: {"wall": float("inf"), "cpu": float("inf")} for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if round_ > 0:
                best[name] = {"wall": min(best[name]["wall"], wall), "cpu": min(best[name]["cpu"], cpu)}
    return best


def bare_loop(encode: Callable[[Tensor], Tensor], leaf: Tensor, targets: Tensor, steps: int, amp: bool) -> None:
    """`steps` forward+backward passes of the frozen encoder with the inversion's loss, and nothing else."""
    use_amp = amp and leaf.device.type == "cuda"
    target_dirs = F.normalize(targets.float(), dim=-1)
    x = leaf.detach().requires_grad_()
    for _ in range(steps):
        x.grad = None
        with torch.autocast(leaf.device.type, dtype=torch.float16, enabled=use_amp):
            feats = encode(x)
        (1.0 - (F.normalize(feats.float(), dim=-1) * target_dirs).sum(-1)).mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bf-tiny-vit-32", help="open_clip model name (random weights)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--oti-steps", type=int, default=150)
    parser.add_argument("--ovi-steps", type=int, default=150, help="reference: 1000; fewer keeps CPU runs short")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    register_tiny_models()
    device = torch.device(args.device)
    amp = not args.no_amp
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).to(device).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(args.model)
    b = args.batch_size
    h, w = model.visual.image_size
    images = torch.randn(b, 3, h, w, device=device)  # (B, 3, H, W)
    with torch.no_grad():
        image_targets = model.encode_image(images)  # (B, D)
        text_targets = model.encode_text(tokenizer([f"a photo of a thing number {i}" for i in range(b)]).to(device))

    # snapshots as in the default config, scaled to the step count used here
    def snaps(steps: int, default: tuple[int, ...], default_steps: int) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(s * steps / default_steps)) for s in default}))

    oti_cfg = OtiConfig(
        steps=args.oti_steps, batch_size=b, snapshot_steps=snaps(args.oti_steps, OtiConfig().snapshot_steps, 150)
    )
    ovi_cfg = OviConfig(
        steps=args.ovi_steps, batch_size=b, snapshot_steps=snaps(args.ovi_steps, OviConfig().snapshot_steps, 1000)
    )

    ids, _ = prompt_ids(tokenizer, oti_cfg, b)
    ids = ids[:, : pooled_length(model, ids)].to(device)  # (B, L'): the prompt up to its EOS, as OTI runs it
    with torch.no_grad():
        prompt_embeddings = model.token_embedding(ids)  # (B, L, W)
    t = timed(
        {
            "oti": lambda: run_oti(model, tokenizer, image_targets, oti_cfg, seed=0, amp=amp),
            "oti_bare": lambda: bare_loop(
                lambda x: text_features_from_embeddings(model, x, ids),
                prompt_embeddings,
                image_targets,
                args.oti_steps,
                amp,
            ),
            "ovi": lambda: run_ovi(model, text_targets, ovi_cfg, seed=0, amp=amp),
            "ovi_bare": lambda: bare_loop(model.encode_image, images, text_targets, args.ovi_steps, amp),
        },
        device,
        args.repeats,
    )

    clock = "cpu" if device.type == "cpu" else "wall"

    def entry(inv: dict[str, float], bare: dict[str, float], cfg: OtiConfig | OviConfig) -> dict[str, object]:
        return {
            "steps": cfg.steps,
            "snapshot_steps": list(cfg.recorded_steps),
            "samples_per_s": round(b / inv[clock], 3),
            "bare_samples_per_s": round(b / bare[clock], 3),
            "seconds_per_step": round(inv[clock] / cfg.steps, 6),
            "bare_seconds_per_step": round(bare[clock] / cfg.steps, 6),
            "overhead": round(inv[clock] / bare[clock], 4),
            "overhead_wall": round(inv["wall"] / bare["wall"], 4),
        }

    print(
        json.dumps(
            {
                "model": args.model,
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "threads": torch.get_num_threads(),
                "batch_size": b,
                "oti_prompt_positions": f"{ids.shape[1]} of {model.context_length}",
                "clock": clock,
                "amp": amp and device.type == "cuda",
                "oti": entry(t["oti"], t["oti_bare"], oti_cfg),
                "ovi": entry(t["ovi"], t["ovi_bare"], ovi_cfg),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
