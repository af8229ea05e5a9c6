"""Image groups of the feature stores, and the extraction state a stage run shares with its shard workers.

A group's blocks may be encoded by the stage process, by shard workers on a cluster (`features.shards`) or by an
earlier run of the same instance that was killed. Whoever writes a block also leaves a small record of it (rows,
forwards, seconds) in the instance's scratch folder, outside the published stores (whose bytes must not depend on
timings), so the stage's metrics count the work of every block wherever it ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_lib.engine.io import write_json
from pipeline_lib.engine.store import PLAN_ATTR, ArraySpec, BlockGroup
from pipeline_lib.features.config import AugmentConfig, FeaturesConfig
from pipeline_lib.features.extract import BlockDone, ExtractStats, ImageViewsDataset, extract_to_blocks, image_encoder

#: Called after every finished block with (store name, group, block).
BlockHook = Callable[[str, str, int], None]


@dataclass(frozen=True)
class ImageGroup:
    """One image group of a store: the images to encode, their per-row arrays and what else decides its content."""

    store: Path
    name: str
    paths: list[str]
    rows: dict[str, np.ndarray]
    plan: dict[str, Any]
    views: int = 1
    tokens: bool = False
    view_ids: tuple[int, ...] | None = None  # each image's index in its whole split (augmentation seeds); None = row
    augment: AugmentConfig | None = None  # the recipe of its augmented views; None: the run's `features.augment`
    part: str = ""  # the store's folder inside the instance output, when it writes several stores (support: k{shots})

    @property
    def key(self) -> str:
        """How shards name the group, e.g. "fewshot.zarr/train" or "k4/support.zarr/train"."""
        return "/".join(x for x in (self.part, self.store.name, self.name) if x)


@dataclass(frozen=True)
class GroupWork:
    """The encoding behind one finished group, wherever its blocks ran; `blocks_*` are what this call did."""

    images: int  # source images of the group's done blocks
    forwards: int  # images x views
    timed_forwards: int  # forwards of the blocks whose record was found (a kill between flag and record loses one)
    seconds: float  # summed encoding time of those blocks, over every process that encoded them
    blocks_written: int
    blocks_skipped: int

    @property
    def images_per_s(self) -> float:
        return self.timed_forwards / self.seconds if self.seconds > 0 else 0.0


def image_dim(model: torch.nn.Module) -> int:
    """Width of the model's image features."""
    proj = getattr(model.visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    dim = getattr(model.visual, "output_dim", None)
    if dim is None:
        raise ValueError(f"cannot tell the image feature width of {type(model.visual).__name__}")
    return int(dim)


def check_tokens_supported(model: torch.nn.Module) -> None:
    """Patch tokens need a ViT image tower without attentional pooling."""
    from pipeline_lib.backbone.hooks import UnsupportedBackbone, check_image_tower

    try:
        visual = check_image_tower(model)
        if visual.attn_pool is not None:
            raise UnsupportedBackbone("attentional pooling has no per-token joint-space features")
    except UnsupportedBackbone as e:
        raise ValueError(f"features.patch_tokens=true needs a ViT image tower ({e}); set it to false") from e


class ExtractionRun:
    """Shared state of one stage run (or one shard worker): backbone, config, device, worker count, progress, and where
    block records go (`records`, None: none kept) and who hears of finished blocks (`on_block`)."""

    def __init__(self, backbone: Any, cfg: FeaturesConfig, device: torch.device, num_workers: int, progress: Any,
                 root: Path | None = None, records: Path | None = None, on_block: BlockHook | None = None):
        self.root = root  # the project folder: sources under it are recorded relative to it
        self.backbone = backbone
        self.cfg = cfg
        self.device = device
        self.num_workers = num_workers
        self.progress = progress
        self.records = records
        self.on_block = on_block
        self.work: list[GroupWork] = []  # one per image group this run finished

    def plan(self, **extra: Any) -> dict[str, Any]:
        """What decides a block group's content; a group built for another plan is rebuilt."""
        c = self.cfg
        return {
            "backbone": self.backbone.fingerprint,
            "dtype": c.dtype,
            "amp": c.amp and self.device.type == "cuda",
            **extra,
        }

    def _augment(self, g: ImageGroup) -> AugmentConfig | None:
        return (g.augment or self.cfg.augment) if g.views > 1 else None

    def layout(self, g: ImageGroup) -> tuple[list[ArraySpec], dict[str, Any]]:
        """The group's array specs and its full block plan."""
        c, model = self.cfg, self.backbone.model
        n = len(g.paths)
        dim = image_dim(model)
        specs = [ArraySpec("image", (n, dim), c.dtype)]
        specs += [ArraySpec(k, (n, *v.shape[1:]), str(v.dtype)) for k, v in g.rows.items()]
        if g.views > 1:
            specs.append(ArraySpec("views", (n, g.views, dim), c.dtype))
        if g.tokens:
            n_tok = 1 + int(np.prod(model.visual.grid_size))
            specs.append(ArraySpec("tokens", (n, n_tok, dim), c.dtype))
        augment = self._augment(g)
        plan = {
            **g.plan,
            "views": g.views,
            "tokens": g.tokens,
            "seed": c.seed if g.views > 1 else None,
            "augment": augment.model_dump() if augment else None,
        }
        return specs, plan

    def open_group(self, g: ImageGroup, create: bool = True) -> BlockGroup:
        """Create or resume the group's block store; a shard worker (create=False) only opens what the coordinator
        created, so metadata has one writer."""
        specs, plan = self.layout(g)
        opener = BlockGroup.create_or_resume if create else BlockGroup.resume
        return opener(g.store, g.name, specs, self.cfg.rows_per_chunk, self.cfg.rows_per_shard, plan=plan)

    def _record_dir(self, g: ImageGroup) -> Path | None:
        return None if self.records is None else self.records / g.key

    def _block_done(self, g: ImageGroup, bg: BlockGroup) -> Callable[[BlockDone], None]:
        """Record each finished block (before the hook, so a hook that stops the run keeps the record)."""
        plan, folder = bg.group.attrs.get(PLAN_ATTR), self._record_dir(g)

        def done(d: BlockDone) -> None:
            if folder is not None:
                record = {"plan": plan, "images": d.images, "forwards": d.forwards, "seconds": round(d.seconds, 6)}
                write_json(folder / f"{d.block}.json", record)
            if self.on_block is not None:
                self.on_block(g.store.name, g.name, d.block)

        return done

    def extract(self, g: ImageGroup, bg: BlockGroup, blocks: Sequence[int] | None = None) -> ExtractStats:
        """Extract the group's pending blocks (all of them, or those among `blocks`); what this call did."""
        c = self.cfg
        dataset = ImageViewsDataset(
            g.paths, self.backbone.preprocess, g.views, self._augment(g), c.seed, self.backbone.image_size,
            view_ids=g.view_ids,
        )
        return extract_to_blocks(
            bg,
            dataset,
            image_encoder(self.backbone.model, g.tokens),
            g.rows,
            batch_size=c.batch_size,
            device=self.device,
            num_workers=self.num_workers,
            amp=c.amp,
            views_key="views" if g.views > 1 else None,
            progress=self.progress,
            desc=g.key,
            on_block=self._block_done(g, bg),
            blocks=blocks,
        )

    def group_work(self, g: ImageGroup, bg: BlockGroup, stats: ExtractStats) -> GroupWork:
        """The work behind the group's done blocks: counts from the block plan, times from the block records."""
        plan, folder = bg.group.attrs.get(PLAN_ATTR), self._record_dir(g)
        images = timed = 0
        seconds = 0.0
        for block in np.flatnonzero(bg.done_mask()).tolist():
            start, stop = bg.rows(block)
            images += stop - start
            path = None if folder is None else folder / f"{block}.json"
            if path is not None and path.is_file():
                record = json.loads(path.read_text())
                if record.get("plan") == plan:  # a record of a block written for another plan is stale
                    timed += int(record["forwards"])
                    seconds += float(record["seconds"])
        return GroupWork(images, images * g.views, timed, seconds, stats.blocks_written, stats.blocks_skipped)

    def image_group(self, g: ImageGroup) -> dict[str, Any]:
        """Create/resume one image group, extract its pending blocks, and summarise the group's work."""
        bg = self.open_group(g)
        work = self.group_work(g, bg, self.extract(g, bg))
        self.work.append(work)
        specs, _ = self.layout(g)
        return {
            "images": work.images,
            "forwards": work.forwards,
            "blocks_written": work.blocks_written,
            "blocks_skipped": work.blocks_skipped,
            "seconds": round(work.seconds, 3),
            "images_per_s": round(work.images_per_s, 1),
            "rows": len(g.paths),
            "shapes": {s.name: list(s.shape) for s in specs},
        }
