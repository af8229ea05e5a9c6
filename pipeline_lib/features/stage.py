"""The `features` stage: every CLIP feature later stages need, extracted once into zarr stores.

Stores (under artifacts/features/, layout in pipeline_lib.engine.store):
  fewshot.zarr         {train,val,test}/image|label|index, train/views, text/*, clip/*
  czsl.zarr            {train,val,test}/image|attr|obj|pair[|tokens]
  retrieval_text.zarr  {query,gallery}/text|group
Image groups are written in resumable shard blocks: a killed run continues from its last finished block and ends
with the same arrays as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import zarr

from pipeline_lib.features.config import AugmentConfig, FeaturesConfig
from pipeline_lib.features.extract import (
    ExtractStats,
    ImageViewsDataset,
    extract_to_blocks,
    image_encoder,
    stats_dict,
)
from pipeline_lib.features.text import (
    class_prompts,
    class_text_features,
    default_templates,
    encode_texts,
    logit_scale,
    text_projection,
)
from pipeline_lib.engine.store import ArraySpec, BlockGroup, file_count, provenance, write_whole

log = logging.getLogger(__name__)

FEATURES_OUT = "artifacts/features"
METRICS_OUT = "metrics/features.json"
SPLITS = ("train", "val", "test")

# Called after every finished block with (store name, group, block); tests set it to simulate a kill.
after_block: Callable[[str, str, int], None] | None = None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_source(root: Path, data_dir: Path, configured: str | None, default_rel: str) -> Path:
    """A dataset location: the data stage's default under `data_dir`, or the user's path (relative to the project)."""
    if configured is None:
        return data_dir / default_rel
    p = Path(configured).expanduser()
    return p if p.is_absolute() else root / p


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

    @property
    def key(self) -> str:
        """How shards name the group, e.g. "fewshot.zarr/train"."""
        return f"{self.store.name}/{self.name}"


class ExtractionRun:
    """Shared state of one stage run (or one shard worker): backbone, config, device, worker count, progress, stats."""

    def __init__(self, backbone: Any, cfg: FeaturesConfig, device: torch.device, num_workers: int, progress: Any,
                 root: Path | None = None):
        self.root = root  # the project folder: sources under it are recorded relative to it
        self.backbone = backbone
        self.cfg = cfg
        self.device = device
        self.num_workers = num_workers
        self.progress = progress
        self.stats: list[ExtractStats] = []

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
        return self.cfg.augment if g.views > 1 else None

    def _layout(self, g: ImageGroup) -> tuple[list[ArraySpec], dict[str, Any]]:
        """The group's array specs and its full block plan."""
        c, model = self.cfg, self.backbone.model
        n = len(g.paths)
        dim = _image_dim(model)
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
        specs, plan = self._layout(g)
        opener = BlockGroup.create_or_resume if create else BlockGroup.resume
        return opener(g.store, g.name, specs, self.cfg.rows_per_chunk, self.cfg.rows_per_shard, plan=plan)

    def extract(self, g: ImageGroup, bg: BlockGroup, blocks: Sequence[int] | None = None) -> dict[str, Any]:
        """Extract the group's pending blocks (all of them, or those among `blocks`)."""
        c = self.cfg
        dataset = ImageViewsDataset(
            g.paths, self.backbone.preprocess, g.views, self._augment(g), c.seed, self.backbone.image_size
        )
        store = g.store.name
        stats = extract_to_blocks(
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
            on_block=(lambda b: after_block(store, g.name, b)) if after_block else None,
            blocks=blocks,
        )
        self.stats.append(stats)
        specs, _ = self._layout(g)
        return stats_dict(stats, rows=len(g.paths), shapes={s.name: list(s.shape) for s in specs})

    def image_group(self, g: ImageGroup) -> dict[str, Any]:
        """Create/resume one image group and extract its pending blocks."""
        return self.extract(g, self.open_group(g))


def _image_dim(model: torch.nn.Module) -> int:
    proj = getattr(model.visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    dim = getattr(model.visual, "output_dim", None)
    if dim is None:
        raise ValueError(f"cannot tell the image feature width of {type(model.visual).__name__}")
    return int(dim)


def _check_tokens_supported(model: torch.nn.Module) -> None:
    from pipeline_lib.backbone.hooks import UnsupportedBackbone, check_image_tower

    try:
        visual = check_image_tower(model)
        if visual.attn_pool is not None:
            raise UnsupportedBackbone("attentional pooling has no per-token joint-space features")
    except UnsupportedBackbone as e:
        raise ValueError(f"features.patch_tokens=true needs a ViT image tower ({e}); set it to false") from e


# ------------------------------------------------------------------------------------------------------ few-shot


def load_fewshot_source(cfg: FeaturesConfig, source: Path) -> Any:
    """The CoOp dataset at `source`, with a clear error naming the param when its split file is missing."""
    from pipeline_lib.data.coop import load_coop_dataset

    src = cfg.fewshot
    if not (source / src.split_file).is_file():
        raise FileNotFoundError(f"few-shot split file {source / src.split_file} not found (features.fewshot.root)")
    return load_coop_dataset(source, src.split_file, src.image_dir)


def fewshot_groups(run: ExtractionRun, store: Path, ds: Any, source: Path) -> list[ImageGroup]:
    """The few-shot store's image groups: one per split present (CoOp files may omit val), views on train."""
    c = run.cfg
    image_root = (source / c.fewshot.image_dir).resolve()
    groups = []
    for split in [s for s in SPLITS if s in ds.splits]:
        df = ds.split(split)
        paths = df["path"].to_list()
        rel = [os.path.relpath(p, image_root) for p in paths]  # content identity, independent of where data lives
        labels = df["label"].to_numpy().astype(np.int64)
        rows = {"label": labels, "index": np.arange(len(paths), dtype=np.int64)}
        plan = run.plan(split=_digest([rel, labels.tolist()]))
        groups.append(ImageGroup(store, split, paths, rows, plan, views=c.views if split == "train" else 1))
    return groups


def write_fewshot_store(run: ExtractionRun, store: Path, source: Path, root: Path) -> dict[str, Any]:
    """fewshot.zarr: text side first (cheap, catches template errors early), then the three image splits."""
    c = run.cfg
    ds = load_fewshot_source(c, source)
    templates = list(c.templates) if c.templates is not None else default_templates(c.fewshot.dataset_name)
    cupl_path = resolve_source(root, root, c.cupl_file, "") if c.cupl_file else None
    prompts = class_prompts(ds.classnames, templates, cupl_path)

    top = zarr.open_group(str(store), mode="a")
    model = run.backbone.model
    text = class_text_features(model, run.backbone.tokenizer, prompts, run.device, c.batch_size, c.amp)
    tg = top.require_group("text")
    for name in (
        "class_proj",
        "class_proj_raw",
        "class_eos",
        "class_eos_raw",
        "prompt_proj",
        "prompt_eos",
        "prompt_count",
    ):
        write_whole(tg, name, getattr(text, name))
    cg = top.require_group("clip")
    write_whole(cg, "text_projection", text_projection(model))
    write_whole(cg, "logit_scale", np.asarray(logit_scale(model), dtype=np.float32))

    out: dict[str, Any] = {"classes": len(ds.classnames), "prompts_per_class": text.prompt_count.tolist()}
    for g in fewshot_groups(run, store, ds, source):
        out[g.name] = run.image_group(g)
    top.attrs.update(
        {
            "classnames": list(ds.classnames),
            "templates": templates,
            "cupl_file": str(cupl_path) if cupl_path else None,
            "prompt_padding": "text/prompt_* rows past text/prompt_count[c] are NaN",
            "logit_scale": "exp(logit_scale), the multiplier on cosines",
            "views": "train/views[:, 0] is the un-augmented image (= train/image); views 1.. are offline augmentations",
            "provenance": _provenance(run, source),
        }
    )
    return out


# ---------------------------------------------------------------------------------------------------------- CZSL


def load_czsl_source(run: ExtractionRun, source: Path) -> Any:
    """The closed-world CZSL dataset at `source` (patch tokens checked against the backbone first)."""
    from pipeline_lib.czsl.data import load_czsl_dataset

    if run.cfg.patch_tokens:
        _check_tokens_supported(run.backbone.model)
    return load_czsl_dataset(source, "closed")


def czsl_groups(run: ExtractionRun, store: Path, ds: Any) -> list[ImageGroup]:
    """The CZSL store's image groups, one per split, with closed-world labels and optional patch tokens."""
    groups = []
    for split in SPLITS:
        df = ds.split(split)
        rows = {
            "attr": df["attr_idx"].to_numpy().astype(np.int64),
            "obj": df["obj_idx"].to_numpy().astype(np.int64),
            "pair": df["world_pair_idx"].to_numpy().astype(np.int64),
        }
        plan = run.plan(split=_digest([df["image"].to_list(), {k: v.tolist() for k, v in rows.items()}]))
        groups.append(ImageGroup(store, split, df["path"].to_list(), rows, plan, tokens=run.cfg.patch_tokens))
    return groups


def write_czsl_store(run: ExtractionRun, store: Path, source: Path) -> dict[str, Any]:
    """czsl.zarr: closed-world labels (pair indexes attrs['pairs']), image features and optional patch tokens."""
    ds = load_czsl_source(run, source)
    out: dict[str, Any] = {"attrs": len(ds.attrs), "objs": len(ds.objs), "pairs": len(ds.pairs)}
    for g in czsl_groups(run, store, ds):
        out[g.name] = run.image_group(g)
    top = zarr.open_group(str(store), mode="a")
    top.attrs.update(
        {
            "name": ds.name,
            "attrs": list(ds.attrs),
            "objs": list(ds.objs),
            "pairs": [list(p) for p in ds.pairs],
            "train_pairs": [list(p) for p in ds.train_pairs],
            "val_pairs": [list(p) for p in ds.val_pairs],
            "test_pairs": [list(p) for p in ds.test_pairs],
            "pair_index": "pair indexes attrs['pairs'] (closed world: sorted union of the three pair files)",
            "provenance": _provenance(run, source),
        }
    )
    return out


# ------------------------------------------------------------------------------------------------ text retrieval


def write_retrieval_text_store(run: ExtractionRun, store: Path, source: Path) -> dict[str, Any]:
    """retrieval_text.zarr: raw projected features of query and gallery texts, and their meaning groups."""
    if not source.is_file():
        raise FileNotFoundError(f"text retrieval table {source} not found (features.retrieval_text.path)")
    df = pl.read_parquet(source)
    missing = {"text", "group", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{source} lacks columns {sorted(missing)}; expected text, group, split")
    bad = set(df["split"].unique().to_list()) - {"query", "gallery"}
    if bad:
        raise ValueError(f"{source}: split values {sorted(bad)}; expected 'query' or 'gallery'")
    group_names: list[str] | None = None
    if df["group"].dtype.is_integer():
        groups = df["group"].cast(pl.Int64).to_numpy()
    else:
        group_names = sorted(str(g) for g in df["group"].unique().to_list())
        lookup = {g: i for i, g in enumerate(group_names)}
        groups = np.array([lookup[str(g)] for g in df["group"].to_list()], dtype=np.int64)
    c, model = run.cfg, run.backbone.model
    dim = text_projection(model).shape[1]
    out: dict[str, Any] = {}
    splits = df["split"].to_numpy()
    for split in ("query", "gallery"):
        mask = splits == split
        texts = df.filter(pl.col("split") == split)["text"].to_list()
        n = len(texts)
        bg = BlockGroup.create_or_resume(
            store,
            split,
            [ArraySpec("text", (n, dim), c.dtype), ArraySpec("group", (n,), "int64")],
            c.rows_per_chunk,
            c.rows_per_shard,
            plan=run.plan(split=_digest([texts, groups[mask].tolist()])),
        )
        t0 = time.perf_counter()
        for b in bg.pending():
            start, stop = bg.rows(b)
            feats, _ = encode_texts(
                model, run.backbone.tokenizer, texts[start:stop], run.device, c.batch_size, eos=False, amp=c.amp
            )
            bg.write_block(b, {"text": feats, "group": groups[mask][start:stop]})
            if after_block:
                after_block(store.name, split, b)
        out[split] = {"rows": n, "seconds": round(time.perf_counter() - t0, 3)}
    top = zarr.open_group(str(store), mode="a")
    top.attrs.update({"group_names": group_names, "provenance": _provenance(run, source)})
    return out


# --------------------------------------------------------------------------------------------------------- stage


def _provenance(run: ExtractionRun, source: Path, **extra: Any) -> dict[str, Any]:
    """Store attributes; a source inside the project is recorded relative to it, so the same data in another
    checkout gives the same bytes (and downstream stages stay reusable)."""
    b = run.backbone
    root = run.root.resolve() if run.root is not None else None
    where = source.resolve()
    label = where.relative_to(root).as_posix() if root is not None and where.is_relative_to(root) else str(where)
    return provenance(
        backbone={"name": b.name, "pretrained": b.pretrained, "fingerprint": b.fingerprint},
        features=run.cfg.model_dump(mode="json"),
        source=label,
        **extra,
    )


def sources(ctx: Any) -> dict[str, Path]:
    """Where each enabled store's data lives, by store name (the data stage's defaults unless params say otherwise)."""
    cfg: FeaturesConfig = ctx.cfg.features
    root, data_dir = Path(ctx.root), ctx.inp("artifacts/data")
    found = {"fewshot.zarr": resolve_source(root, data_dir, cfg.fewshot.root, "fewshot/shapes")}
    if cfg.czsl.enabled:
        found["czsl.zarr"] = resolve_source(root, data_dir, cfg.czsl.root, "czsl/shapes")
    if cfg.retrieval_text.enabled:
        found["retrieval_text.zarr"] = resolve_source(root, data_dir, cfg.retrieval_text.path, "retrieval/texts.parquet")
    return found


def extraction_run(ctx: Any, num_workers: int | None = None) -> ExtractionRun:
    """The published backbone (eval mode) on the context's device, with the features params of `ctx`."""
    from pipeline_lib.backbone.load import load_published_backbone

    device = torch.device(ctx.device)
    backbone = load_published_backbone(ctx.inp("artifacts/backbone"), device)
    backbone.model.eval()
    workers = ctx.cfg.runtime.num_workers if num_workers is None else num_workers
    return ExtractionRun(backbone, ctx.cfg.features, device, workers, ctx.progress, Path(ctx.root))


def image_groups(run: ExtractionRun, ctx: Any) -> list[ImageGroup]:
    """Every image group the stage writes, in order: what shard planning and shard workers enumerate."""
    out_dir, found = ctx.out(FEATURES_OUT), sources(ctx)
    groups = fewshot_groups(run, out_dir / "fewshot.zarr", load_fewshot_source(run.cfg, found["fewshot.zarr"]),
                            found["fewshot.zarr"])
    if "czsl.zarr" in found:
        groups += czsl_groups(run, out_dir / "czsl.zarr", load_czsl_source(run, found["czsl.zarr"]))
    return groups


def run_features(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see module docstring); writes every enabled store and returns the summary also written to
    metrics/features.json."""
    t0 = time.perf_counter()
    out_dir = ctx.out(FEATURES_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = extraction_run(ctx)
    found = sources(ctx)
    summary: dict[str, Any] = {"device": run.device.type, "backbone": run.backbone.name}
    summary["fewshot"] = write_fewshot_store(run, out_dir / "fewshot.zarr", found["fewshot.zarr"], Path(ctx.root))
    if "czsl.zarr" in found:
        summary["czsl"] = write_czsl_store(run, out_dir / "czsl.zarr", found["czsl.zarr"])
    if "retrieval_text.zarr" in found:
        summary["retrieval_text"] = write_retrieval_text_store(
            run, out_dir / "retrieval_text.zarr", found["retrieval_text.zarr"]
        )

    forwards = sum(s.forwards for s in run.stats)
    seconds = sum(s.seconds for s in run.stats)
    summary["images_encoded"] = forwards
    summary["images_per_s"] = round(forwards / seconds, 1) if seconds > 0 else 0.0
    summary["blocks_skipped"] = sum(s.blocks_skipped for s in run.stats)
    summary["files"] = {p.name: file_count(p) for p in sorted(out_dir.glob("*.zarr"))}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    metrics = ctx.out(METRICS_OUT)
    metrics.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info(
        "features: %d images encoded at %.1f img/s in %.1f s", forwards, summary["images_per_s"], summary["seconds"]
    )
    return summary
