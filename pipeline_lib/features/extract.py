"""Batched image feature extraction into resumable block groups.

DataLoader workers decode and preprocess images (PIL work only) while the main process runs the forward pass and
writes finished blocks. Workers never touch zarr: zarr's sync API drives an asyncio loop on a thread of the parent,
and a forked child that used zarr could deadlock on it; a child that only decodes images is safe to fork, and fork
starts workers in milliseconds where spawn re-imports torch in each. `start_method="spawn"` is there for platforms
without fork or datasets that need it. Batches never straddle blocks and always start at a block's first row, so a
resumed run computes every block with exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline_lib.engine.parallel import worker_start_method
from pipeline_lib.engine.store import BlockGroup
from pipeline_lib.features.augment import augment_view
from pipeline_lib.features.config import AugmentConfig

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]
# Workers overlap decoding with the forward pass only from the second batch on; for a group of a batch or two,
# starting them costs more than it saves.
MIN_BATCHES_FOR_WORKERS = 2
#: What a worker imports to unpickle its dataset (preloaded once when workers come from a forkserver).
WORKER_MODULES = ("torch", "PIL.Image", "torchvision.transforms", __name__)


def quiet_progress() -> bool:
    """Progress bars are off under CI=true (logs stay readable in CI)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def default_progress(iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
    """tqdm over `iterable`, silent under CI=true."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet_progress(), leave=False)


def _load_rgb(path: str) -> Image.Image:
    from pipeline_lib.data.images import load_rgb

    return load_rgb(path)


class ToUint8Tensor:
    """PIL RGB/L image -> uint8 (C, H, W): ToTensor without the float conversion (done later, on the batch)."""

    def __call__(self, pic: Image.Image) -> Tensor:
        if pic.mode not in ("RGB", "L"):
            raise ValueError(f"expected an RGB or L image before the tensor step, got mode {pic.mode!r}")
        x = np.asarray(pic, np.uint8).reshape(pic.size[1], pic.size[0], len(pic.getbands()))  # (H, W, C)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (C, H, W)


class BatchNormalize:
    """The ToTensor + Normalize tail of a preprocess, applied to a uint8 batch (B, C, H, W).

    Same elementwise float32 ops as torchvision's per-image ToTensor (x / 255) and Normalize ((x - mean) / std), so the
    result is bit-identical, while workers ship 4x smaller uint8 batches and the main process (or the GPU) normalises
    a whole batch in one op instead of paying per-image tensor overhead.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).div(255)  # (B, C, H, W)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


def split_preprocess(preprocess: Callable) -> tuple[Callable[[Image.Image], Tensor], BatchNormalize | None]:
    """(per-image part, batch tail): a torchvision Compose ending in ToTensor + Normalize is split there.

    Anything else (a custom callable, a Compose of another shape) runs whole per image, with no batch tail.
    """
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = getattr(preprocess, "transforms", None)
    if (
        isinstance(preprocess, Compose)
        and steps is not None
        and len(steps) >= 2
        and type(steps[-2]).__name__ in {"ToTensor", "MaybeToTensor"}
        and isinstance(steps[-2], ToTensor)
        and type(steps[-1]) is Normalize
    ):
        return Compose([*steps[:-2], ToUint8Tensor()]), BatchNormalize(steps[-1].mean, steps[-1].std)
    return preprocess, None


class ImageViewsDataset(Dataset):
    """Item i -> (i, views (V, 3, H, W)): image `paths[i]` decoded, augmented per view, then the model's preprocess
    (its ToTensor + Normalize tail deferred to `finish`, on the whole batch; see BatchNormalize).

    View 0 is the plain image; view j > 0 is augmented with randomness from (seed, i, j) only, where i is the row in
    the split list (or `view_ids[i]`, the image's index in its whole split when only some images are encoded), so
    results do not depend on batching, workers, resumption or which other images are encoded.
    """

    def __init__(
        self,
        paths: Sequence[str],
        preprocess: Callable[[Image.Image], Tensor],
        views: int = 1,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        crop_size: int = 224,
        split: bool = True,
        view_ids: Sequence[int] | None = None,
    ) -> None:
        if views < 1:
            raise ValueError(f"views={views}: expected >= 1")
        if views > 1 and augment is None:
            raise ValueError(f"views={views} needs an augmentation recipe")
        self.paths = list(paths)
        self.transform, self.batch_tail = split_preprocess(preprocess) if split else (preprocess, None)
        self.views = views
        self.augment = augment
        self.seed = seed
        self.crop_size = crop_size
        self.view_ids = None if view_ids is None else [int(v) for v in view_ids]
        if self.view_ids is not None and len(self.view_ids) != len(self.paths):
            raise ValueError(f"{len(self.view_ids)} view ids for {len(self.paths)} images")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        img = _load_rgb(self.paths[i])
        index = i if self.view_ids is None else self.view_ids[i]
        out = [
            self.transform(augment_view(img, self.augment, self.seed, index, v, self.crop_size) if v else img)
            for v in range(self.views)
        ]
        return i, torch.stack(out)  # (V, 3, H, W), uint8 when a batch tail finishes the preprocess

    def finish(self, batch: Tensor) -> Tensor:
        """Apply the batch tail of the preprocess (identity when the preprocess ran whole per image)."""
        return self.batch_tail(batch) if self.batch_tail is not None else batch


class BlockBatchSampler(Sampler[list[int]]):
    """Batches of row ids covering the given blocks in order; each block is cut into batches from its first row."""

    def __init__(self, block_rows: Sequence[tuple[int, int]], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.block_rows = list(block_rows)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.block_rows:
            for b in range(start, stop, self.batch_size):
                yield list(range(b, min(b + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.block_rows)


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; CPU always runs fp32 (the reference numerics)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def image_encoder(model: nn.Module, tokens: bool = False) -> Callable[[Tensor], dict[str, Tensor]]:
    """A batch function images (B, 3, H, W) -> {"image": (B, D)[, "tokens": (B, 1 + N, D)]}.

    Features are raw post-projection `encode_image` outputs (not normalised). With tokens, one forward pass gives both:
    the pooled output is read from the image tower while the token hook runs.
    """
    if not tokens:
        return lambda images: {"image": model.encode_image(images)}

    from pipeline_lib.backbone.hooks import image_token_features

    def encode(images: Tensor) -> dict[str, Tensor]:
        pooled: list[Tensor] = []
        handle = model.visual.register_forward_hook(lambda _m, _i, out: pooled.append(out))
        try:
            toks = image_token_features(model, images)  # (B, 1 + N, D)
        finally:
            handle.remove()
        image = pooled[-1][0] if isinstance(pooled[-1], tuple) else pooled[-1]  # (B, D), = encode_image
        return {"image": image, "tokens": toks}

    return encode


@dataclass(frozen=True)
class BlockDone:
    """What encoding one block took, handed to `on_block` right after the block is written and marked done."""

    block: int
    images: int  # source images (rows) of the block
    forwards: int  # images through the model (images x views)
    seconds: float  # wall time since the previous block was written (or since the loader started, for the first)


@dataclass
class ExtractStats:
    """What one extraction call did (for metrics)."""

    images: int = 0  # source images encoded in this call
    forwards: int = 0  # images through the model (images x views)
    blocks_written: int = 0
    blocks_skipped: int = 0  # already done by an earlier (killed) run
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.forwards / self.seconds if self.seconds > 0 else 0.0


def extract_to_blocks(
    group: BlockGroup,
    dataset: ImageViewsDataset,
    encode: Callable[[Tensor], dict[str, Tensor]],
    row_arrays: dict[str, np.ndarray],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    amp: bool = True,
    views_key: str | None = None,
    progress: Progress | None = None,
    desc: str = "features",
    on_block: Callable[[BlockDone], None] | None = None,
    start_method: str | None = None,
    blocks: Sequence[int] | None = None,
) -> ExtractStats:
    """Encode every pending block of `group` (or of `blocks`, a shard worker's share) and write it.

    `row_arrays` are per-sample arrays known up front (labels, indices), sliced into each block. With `views_key`, the
    dataset yields V views per image: all of them go to `views_key` (N, V, D) and view 0 to "image" (N, D). `on_block`
    gets a BlockDone after each block is marked done (the stage records it; tests use it to simulate a kill).
    """
    wanted = range(group.n_blocks) if blocks is None else blocks
    pending = sorted(set(group.pending()).intersection(wanted))
    stats = ExtractStats(blocks_skipped=len(set(wanted)) - len(pending))
    if not pending:
        return stats
    progress = progress or default_progress
    sampler = BlockBatchSampler([group.rows(b) for b in pending], batch_size)
    if len(sampler) <= MIN_BATCHES_FOR_WORKERS:
        num_workers = 0
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        multiprocessing_context=(start_method or worker_start_method(WORKER_MODULES)) if num_workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    t0 = time.perf_counter()
    t_block = t0
    block_iter = iter(pending)
    block = next(block_iter)
    start, stop = group.rows(block)
    parts: dict[str, list[np.ndarray]] = {}
    filled = start
    with torch.inference_mode(), autocast_context(device, amp):
        for rows, views in progress(loader, total=len(sampler), desc=desc):
            if int(rows[0]) != filled:
                raise RuntimeError(f"batch starts at row {int(rows[0])}, expected {filled}: sampler out of order")
            bsz, n_views = views.shape[:2]
            flat = dataset.finish(views.to(device, non_blocking=True).flatten(0, 1))  # (B * V, 3, H, W)
            out = encode(flat)
            for name, t in out.items():
                arr = t.float().cpu().numpy().reshape(bsz, n_views, *t.shape[1:])  # (B, V, ...)
                if views_key is not None and name == "image":
                    parts.setdefault(views_key, []).append(arr)
                parts.setdefault(name, []).append(arr[:, 0])
            filled += bsz
            stats.forwards += bsz * n_views
            stats.images += bsz
            if filled == stop:
                data = {k: np.concatenate(v) for k, v in parts.items()}
                data.update({k: v[start:stop] for k, v in row_arrays.items()})
                group.write_block(block, data)
                stats.blocks_written += 1
                parts = {}
                if on_block is not None:
                    now = time.perf_counter()
                    on_block(BlockDone(block, stop - start, (stop - start) * n_views, now - t_block))
                    t_block = time.perf_counter()  # the callback's own time is not the next block's
                block = next(block_iter, None)
                if block is not None:
                    start, stop = group.rows(block)
                    filled = start
    stats.seconds = time.perf_counter() - t0
    return stats


def stats_dict(stats: ExtractStats, **extra: Any) -> dict[str, Any]:
    """JSON-ready summary of an ExtractStats."""
    return {
        "images": stats.images,
        "forwards": stats.forwards,
        "blocks_written": stats.blocks_written,
        "blocks_skipped": stats.blocks_skipped,
        "seconds": round(stats.seconds, 3),
        "images_per_s": round(stats.images_per_s, 1),
        **extra,
    }
