"""The `features` stage: every CLIP feature later stages need, extracted once into zarr stores.

Stores (under artifacts/features/, layout in pipeline_lib.store):
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import zarr

from pipeline_lib.features.config import FeaturesConfig
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
from pipeline_lib.store import ArraySpec, BlockGroup, file_count, provenance, write_whole

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


class _Run:
    """Shared state of one stage run: backbone, config, device, worker count, progress and collected stats."""

    def __init__(self, backbone: Any, cfg: FeaturesConfig, device: torch.device, num_workers: int, progress: Any):
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

    def image_group(
        self,
        store: Path,
        group: str,
        paths: list[str],
        row_arrays: dict[str, np.ndarray],
        *,
        views: int = 1,
        tokens: bool = False,
        plan: dict[str, Any],
    ) -> dict[str, Any]:
        """Create/resume one image group and extract its pending blocks."""
        c, model = self.cfg, self.backbone.model
        n = len(paths)
        dim = _image_dim(model)
        specs = [ArraySpec("image", (n, dim), c.dtype)]
        specs += [ArraySpec(k, (n, *v.shape[1:]), str(v.dtype)) for k, v in row_arrays.items()]
        if views > 1:
            specs.append(ArraySpec("views", (n, views, dim), c.dtype))
        if tokens:
            n_tok = 1 + int(np.prod(model.visual.grid_size))
            specs.append(ArraySpec("tokens", (n, n_tok, dim), c.dtype))
        augment = c.augment if views > 1 else None
        bg = BlockGroup.create_or_resume(
            store,
            group,
            specs,
            c.rows_per_chunk,
            c.rows_per_shard,
            plan={
                **plan,
                "views": views,
                "tokens": tokens,
                "seed": c.seed if views > 1 else None,
                "augment": augment.model_dump() if augment else None,
            },
        )
        dataset = ImageViewsDataset(paths, self.backbone.preprocess, views, augment, c.seed, self.backbone.image_size)
        name = Path(store).name
        stats = extract_to_blocks(
            bg,
            dataset,
            image_encoder(model, tokens),
            row_arrays,
            batch_size=c.batch_size,
            device=self.device,
            num_workers=self.num_workers,
            amp=c.amp,
            views_key="views" if views > 1 else None,
            progress=self.progress,
            desc=f"{name}/{group}",
            on_block=(lambda b: after_block(name, group, b)) if after_block else None,
        )
        self.stats.append(stats)
        return stats_dict(stats, rows=n, shapes={s.name: list(s.shape) for s in specs})


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


def write_fewshot_store(run: _Run, store: Path, source: Path, root: Path) -> dict[str, Any]:
    """fewshot.zarr: text side first (cheap, catches template errors early), then the three image splits."""
    from pipeline_lib.data.coop import load_coop_dataset

    c = run.cfg
    src = c.fewshot
    if not (source / src.split_file).is_file():
        raise FileNotFoundError(f"few-shot split file {source / src.split_file} not found (features.fewshot.root)")
    ds = load_coop_dataset(source, src.split_file, src.image_dir)
    templates = list(c.templates) if c.templates is not None else default_templates(src.dataset_name)
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
    image_root = (source / src.image_dir).resolve()
    for split in [s for s in SPLITS if s in ds.splits]:  # CoOp files may omit val
        df = ds.split(split)
        paths = df["path"].to_list()
        rel = [os.path.relpath(p, image_root) for p in paths]  # content identity, independent of where data lives
        labels = df["label"].to_numpy().astype(np.int64)
        rows = {"label": labels, "index": np.arange(len(paths), dtype=np.int64)}
        views = c.views if split == "train" else 1
        out[split] = run.image_group(
            store, split, paths, rows, views=views, plan=run.plan(split=_digest([rel, labels.tolist()]))
        )
    top.attrs.update(
        {
            "classnames": list(ds.classnames),
            "templates": templates,
            "cupl_file": str(cupl_path) if cupl_path else None,
            "prompt_padding": "text/prompt_* rows past text/prompt_count[c] are NaN",
            "logit_scale": "exp(logit_scale), the multiplier on cosines",
            "views": "train/views[:, 0] is the un-augmented image (= train/image); views 1.. are offline augmentations",
            "provenance": _provenance(run, source=str(source)),
        }
    )
    return out


# ---------------------------------------------------------------------------------------------------------- CZSL


def write_czsl_store(run: _Run, store: Path, source: Path) -> dict[str, Any]:
    """czsl.zarr: closed-world labels (pair indexes attrs['pairs']), image features and optional patch tokens."""
    from pipeline_lib.czsl.data import load_czsl_dataset

    c = run.cfg
    if c.patch_tokens:
        _check_tokens_supported(run.backbone.model)
    ds = load_czsl_dataset(source, "closed")
    out: dict[str, Any] = {"attrs": len(ds.attrs), "objs": len(ds.objs), "pairs": len(ds.pairs)}
    for split in SPLITS:
        df = ds.split(split)
        rows = {
            "attr": df["attr_idx"].to_numpy().astype(np.int64),
            "obj": df["obj_idx"].to_numpy().astype(np.int64),
            "pair": df["world_pair_idx"].to_numpy().astype(np.int64),
        }
        plan = run.plan(split=_digest([df["image"].to_list(), {k: v.tolist() for k, v in rows.items()}]))
        out[split] = run.image_group(store, split, df["path"].to_list(), rows, tokens=c.patch_tokens, plan=plan)
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
            "provenance": _provenance(run, source=str(source)),
        }
    )
    return out


# ------------------------------------------------------------------------------------------------ text retrieval


def write_retrieval_text_store(run: _Run, store: Path, source: Path) -> dict[str, Any]:
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
    top.attrs.update({"group_names": group_names, "provenance": _provenance(run, source=str(source))})
    return out


# --------------------------------------------------------------------------------------------------------- stage


def _provenance(run: _Run, **extra: Any) -> dict[str, Any]:
    b = run.backbone
    return provenance(
        backbone={"name": b.name, "pretrained": b.pretrained, "fingerprint": b.fingerprint},
        features=run.cfg.model_dump(mode="json"),
        **extra,
    )


def run_features(ctx: Any) -> dict[str, Any]:
    """Stage entry point (see module docstring); returns the summary also written to metrics/features.json."""
    from pipeline_lib.backbone.load import load_published_backbone

    t0 = time.perf_counter()
    cfg: FeaturesConfig = ctx.cfg.features
    device = torch.device(ctx.device)
    out_dir = ctx.out(FEATURES_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = ctx.inp("artifacts/data")
    backbone = load_published_backbone(ctx.inp("artifacts/backbone"), device)
    return extract_all(ctx, backbone, cfg, device, out_dir, data_dir, t0)


def extract_all(
    ctx: Any, backbone: Any, cfg: FeaturesConfig, device: torch.device, out_dir: Path, data_dir: Path, t0: float
) -> dict[str, Any]:
    """Write every enabled store and metrics/features.json."""
    backbone.model.eval()
    run = _Run(backbone, cfg, device, ctx.cfg.runtime.num_workers, ctx.progress)
    root = Path(ctx.root)
    summary: dict[str, Any] = {"device": device.type, "backbone": backbone.name}

    fewshot_src = resolve_source(root, data_dir, cfg.fewshot.root, "fewshot/shapes")
    summary["fewshot"] = write_fewshot_store(run, out_dir / "fewshot.zarr", fewshot_src, root)
    if cfg.czsl.enabled:
        czsl_src = resolve_source(root, data_dir, cfg.czsl.root, "czsl/shapes")
        summary["czsl"] = write_czsl_store(run, out_dir / "czsl.zarr", czsl_src)
    if cfg.retrieval_text.enabled:
        text_src = resolve_source(root, data_dir, cfg.retrieval_text.path, "retrieval/texts.parquet")
        summary["retrieval_text"] = write_retrieval_text_store(run, out_dir / "retrieval_text.zarr", text_src)

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
