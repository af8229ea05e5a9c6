"""Images/s of the features extraction path against a bare forward loop of the same model, in one run.

The extraction path is the stage's: PNG files decoded and preprocessed by DataLoader workers, batches through
`encode_image` under inference mode, shard blocks written to a zarr store. The bare loop runs the same forward on
tensors preprocessed beforehand, at the same batch size. Prints one JSON object; `ratio` = bare / extraction
(1.0 = extraction costs nothing beyond the forward; the target is <= 1.25).

    python benchmarks/extract.py --model bf-tiny-vit-32 --images 2000
    python benchmarks/extract.py --model ViT-B-32 --images 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw

from pipeline_lib.backbone.tiny import register_tiny_models
from pipeline_lib.engine.store import ArraySpec, BlockGroup
from pipeline_lib.features.extract import ImageViewsDataset, extract_to_blocks, image_encoder


def render_pngs(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """n simple PNG drawings (a coloured shape on a noisy background) of size x size pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        bg = rng.integers(120, 255, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(bg)
        lo, hi = sorted(rng.integers(size // 8, size - size // 8, 2).tolist())
        hi = max(hi, lo + size // 8)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw = ImageDraw.Draw(img)
        (draw.ellipse if i % 2 else draw.rectangle)((lo, lo, hi, hi), fill=colour)
        path = folder / f"{i:05d}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds for encode_image over preloaded batches (the floor any extraction path can reach)."""
    with torch.inference_mode():
        model.encode_image(batches[0].to(device))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in batches:
            model.encode_image(x.to(device)).float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def extraction_path(model, preprocess, paths, batch_size, workers, device, store: Path) -> float:
    """Seconds for the stage's code path: decode workers + forward + zarr block writes into a fresh store."""
    dim = (
        int(model.visual.proj.shape[1]) if getattr(model.visual, "proj", None) is not None else model.visual.output_dim
    )
    n = len(paths)
    shard = batch_size * max(1, 1024 // batch_size)
    group = BlockGroup.create_or_resume(store, "bench", [ArraySpec("image", (n, dim), "float32")], batch_size, shard)
    dataset = ImageViewsDataset(paths, preprocess)
    with torch.inference_mode():  # warm-up outside the timed region, as for the bare loop
        model.encode_image(
            torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[:batch_size]]).to(device)
        )
    t0 = time.perf_counter()
    stats = extract_to_blocks(
        group,
        dataset,
        image_encoder(model),
        {},
        batch_size=batch_size,
        device=device,
        num_workers=workers,
        amp=False,
        progress=lambda it, **_: it,
    )
    elapsed = time.perf_counter() - t0
    assert stats.forwards == n and group.complete, "extraction did not cover every image"
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bf-tiny-vit-32")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--png-size", type=int, default=0, help="rendered image side (0 = the model's input size)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2, help="alternate both measurements this many times; best kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    register_tiny_models()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None, device=device)
    model.eval()
    size = int(
        model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    )
    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-extract-"))
    try:
        paths = render_pngs(tmp / "png", args.images, args.png_size or size)
        tensors = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])  # (N, 3, H, W)
        batches = list(tensors.split(args.batch_size))
        bare, stage = [], []
        for r in range(args.repeats):  # alternate, so machine load drifts hit both alike
            bare.append(bare_forward(model, batches, device))
            stage.append(
                extraction_path(model, preprocess, paths, args.batch_size, args.workers, device, tmp / f"store{r}.zarr")
            )
        bare_ips, stage_ips = args.images / min(bare), args.images / min(stage)
        print(
            json.dumps(
                {
                    "model": args.model,
                    "device": device.type,
                    "images": args.images,
                    "image_size": size,
                    "png_size": args.png_size or size,
                    "batch_size": args.batch_size,
                    "workers": args.workers,
                    "torch_threads": torch.get_num_threads(),
                    "bare_forward_images_per_s": round(bare_ips, 1),
                    "extraction_images_per_s": round(stage_ips, 1),
                    "ratio": round(bare_ips / stage_ips, 3),
                    "bare_seconds": [round(s, 3) for s in bare],
                    "extraction_seconds": [round(s, 3) for s in stage],
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
