"""Write the whole shapes world to disk in the formats real datasets use.

Layout under `out_dir` (the data stage's artifacts/data):
  pretrain/images.npy, pretrain/labels.parquet      contrastive corpus (uint8 (N, S, S, 3) + one label row per image)
  fewshot/shapes/                                   CoOp format: images/<class>/<file>.png + split_zhou_Shapes.json
  czsl/shapes/                                      standard CZSL layout (attr = colour.pattern, obj = shape)
  retrieval/texts.parquet                           text retrieval: text, group (meaning), split (query | gallery)

Every image and text is a pure function of (seed, stream, index): each dataset draws from its own stream, so changing
one dataset's size never changes another dataset's content.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline_lib.data import vocab
from pipeline_lib.data.captions import paraphrases
from pipeline_lib.data.config import DataConfig
from pipeline_lib.data.generate import Progress, Renderer
from pipeline_lib.data.shapes import ImageSpec, RenderSettings, sample_spec, shape_contrast_group

logger = logging.getLogger(__name__)

# Random streams, one per dataset (part of every key, so datasets never share draws).
STREAM_PRETRAIN = 1
STREAM_PRETRAIN_GROUPS = 2
STREAM_FEWSHOT = 3
STREAM_CZSL_PAIRS = 4
STREAM_CZSL_IMAGES = 5
STREAM_RETRIEVAL = 6

_SPLITS = ("train", "val", "test")


def _spec_columns(specs: Sequence[ImageSpec]) -> dict[str, list[Any]]:
    """Label and nuisance columns shared by the pretraining and few-shot tables."""
    return {
        "shape": [s.shape for s in specs],
        "colour": [s.colour for s in specs],
        "pattern": [s.pattern for s in specs],
        "size": [s.size for s in specs],
        "background": [s.background for s in specs],
        "x": [s.x for s in specs],
        "y": [s.y for s in specs],
        "rotation": [s.rotation for s in specs],
        "distractors": [s.distractors for s in specs],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining corpus


def pretrain_specs(cfg: DataConfig) -> tuple[list[ImageSpec], list[int]]:
    """Specs and group ids of the pretraining corpus.

    A fraction `contrast_fraction` of the corpus (rounded down to whole groups) forms shape-contrast groups:
    len(shapes) consecutive rows identical but for their shape, sharing a group id >= 0. The other rows are
    independent draws (group -1). Groups and single images are interleaved in a seeded order, so any contiguous
    slice of the corpus (an eval subset, a smoke run) is a fair mix of both.
    """
    group_len = len(cfg.shapes)
    n_groups = int(cfg.contrast_fraction * cfg.pretrain_images) // group_len
    n_single = cfg.pretrain_images - n_groups * group_len
    units = [(g, True) for g in range(n_groups)] + [(i, False) for i in range(n_single)]
    order = np.random.default_rng([cfg.seed, STREAM_PRETRAIN, 0]).permutation(len(units))
    specs: list[ImageSpec] = []
    groups: list[int] = []
    for u in order:
        index, grouped = units[int(u)]
        if grouped:
            specs.extend(shape_contrast_group(cfg, (cfg.seed, STREAM_PRETRAIN_GROUPS, index)))
            groups.extend([index] * group_len)
        else:
            specs.append(sample_spec(cfg, (cfg.seed, STREAM_PRETRAIN, 1, index)))
            groups.append(-1)
    return specs, groups


def write_pretrain(cfg: DataConfig, out_dir: Path, renderer: Renderer) -> dict[str, int]:
    specs, groups = pretrain_specs(cfg)
    folder = out_dir / vocab.PRETRAIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    size = cfg.image_size
    images = np.lib.format.open_memmap(
        out_dir / vocab.PRETRAIN_IMAGES, mode="w+", dtype=np.uint8, shape=(len(specs), size, size, 3)
    )
    renderer.to_array(specs, images, desc="pretrain")
    images.flush()
    del images
    table = pl.DataFrame({"index": list(range(len(specs))), **_spec_columns(specs), "group": groups}).with_columns(
        pl.col("index", "distractors", "group").cast(pl.Int64)
    )
    for factor, values in (
        ("shape", cfg.shapes),
        ("colour", cfg.colours),
        ("pattern", cfg.patterns),
        ("size", cfg.sizes),
    ):
        ids = {v: i for i, v in enumerate(values)}
        table = table.with_columns(pl.col(factor).replace_strict(ids, return_dtype=pl.Int64).alias(f"{factor}_id"))
    table.write_parquet(out_dir / vocab.PRETRAIN_LABELS)
    n_grouped = sum(1 for g in groups if g >= 0)
    return {"images": len(specs), "grouped_images": n_grouped, "groups": n_grouped // len(cfg.shapes)}


# ---------------------------------------------------------------------------------------------------------------------
# Few-shot classification (CoOp format)


def fewshot_specs(cfg: DataConfig) -> dict[str, list[tuple[str, ImageSpec]]]:
    """Per split: (relpath under images/, spec), class-major in label order (label = index in cfg.shapes)."""
    per_class = {
        "train": cfg.fewshot_train_per_class,
        "val": cfg.fewshot_val_per_class,
        "test": cfg.fewshot_test_per_class,
    }
    out: dict[str, list[tuple[str, ImageSpec]]] = {}
    for split_id, split in enumerate(_SPLITS):
        rows = []
        for label, shape in enumerate(cfg.shapes):
            for k in range(per_class[split]):
                spec = sample_spec(cfg, (cfg.seed, STREAM_FEWSHOT, split_id, label, k), shape=shape)
                rows.append((f"{shape}/{split}_{k:04d}.png", spec))
        out[split] = rows
    return out


def write_fewshot(cfg: DataConfig, out_dir: Path, renderer: Renderer) -> dict[str, int]:
    root = out_dir / vocab.FEWSHOT_ROOT
    images = root / vocab.FEWSHOT_IMAGE_DIR
    for shape in cfg.shapes:
        (images / shape).mkdir(parents=True, exist_ok=True)
    label_of = {shape: i for i, shape in enumerate(cfg.shapes)}
    plan = fewshot_specs(cfg)
    rows = [(split, relpath, spec) for split in _SPLITS for relpath, spec in plan[split]]
    renderer.to_pngs([r[2] for r in rows], [images / r[1] for r in rows], desc="few-shot")
    split_json = {
        split: [[relpath, label_of[spec.shape], spec.shape] for relpath, spec in plan[split]] for split in _SPLITS
    }
    (root / vocab.FEWSHOT_SPLIT_FILE).write_text(json.dumps(split_json, indent=0))
    specs = [r[2] for r in rows]
    attributes = pl.DataFrame(
        {
            "relpath": [r[1] for r in rows],
            "split": [r[0] for r in rows],
            "label": [label_of[s.shape] for s in specs],
            **_spec_columns(specs),
        }
    ).with_columns(pl.col("label", "distractors").cast(pl.Int64))
    attributes.write_parquet(root / vocab.FEWSHOT_ATTRIBUTES)
    return {"classes": len(cfg.shapes), **{split: len(plan[split]) for split in _SPLITS}}


# ---------------------------------------------------------------------------------------------------------------------
# CZSL (standard layout)


@dataclass(frozen=True)
class CzslPairs:
    """Pair lists of the CZSL split (each (attr, obj), attr-major in vocabulary order)."""

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]  # seen + unseen
    test: list[tuple[str, str]]  # seen + unseen
    val_unseen: list[tuple[str, str]]
    test_unseen: list[tuple[str, str]]


def czsl_attributes(cfg: DataConfig) -> list[str]:
    """CZSL attribute names, colour-major: "red.solid", "red.striped", ... (a dot reads as a space in prompts)."""
    return [f"{colour}.{pattern}" for colour in cfg.colours for pattern in cfg.czsl_patterns]


def czsl_pairs(cfg: DataConfig) -> CzslPairs:
    """Choose unseen pairs spread over attributes and shapes, keeping at least one training pair for each.

    One random pair per attribute and one per shape is protected; unseen pairs are then taken greedily, each time the
    candidate whose attribute and shape keep the largest share of their pairs seen (random tie-break), and dealt to
    val and test so that each shape has as many unseen pairs in one as in the other (within one). Val and test unseen
    pairs are disjoint. The seen pairs listed in val/test are training pairs chosen so that no unseen pair is the only
    candidate with its attribute or its shape (otherwise one primitive would identify it: a test of that primitive,
    not of the composition), then so that every shape has as many candidates as the others (within one). Shapes are
    what the backbone recognises least well, so a split with more pairs of a hard shape is a harder split: balancing
    them builds val and test alike, and val then predicts test.
    """
    attrs, objs = czsl_attributes(cfg), cfg.shapes
    rng = np.random.default_rng([cfg.seed, STREAM_CZSL_PAIRS])
    obj_perm, attr_perm = rng.permutation(len(objs)), rng.permutation(len(attrs))
    protected = {(a, int(obj_perm[a % len(objs)])) for a in range(len(attrs))}
    protected |= {(int(attr_perm[o % len(attrs)]), o) for o in range(len(objs))}
    candidates = [p for p in itertools.product(range(len(attrs)), range(len(objs))) if p not in protected]
    order = {p: int(r) for p, r in zip(candidates, rng.permutation(len(candidates)), strict=True)}
    seen_per_attr = [len(objs)] * len(attrs)
    seen_per_obj = [len(attrs)] * len(objs)
    chosen: list[tuple[int, int]] = []
    for _ in range(cfg.czsl_val_unseen_pairs + cfg.czsl_test_unseen_pairs):

        def keep(p: tuple[int, int]) -> tuple[float, float, int]:
            """Share of its pairs still seen, for the pair's colour and shape: take from the best-covered first."""
            attr_share, obj_share = seen_per_attr[p[0]] / len(objs), seen_per_obj[p[1]] / len(attrs)
            return min(attr_share, obj_share), attr_share + obj_share, -order[p]

        best = max(candidates, key=keep)
        candidates.remove(best)
        chosen.append(best)
        seen_per_attr[best[0]] -= 1
        seen_per_obj[best[1]] -= 1
    val_unseen, test_unseen = _deal(chosen, cfg.czsl_val_unseen_pairs, cfg.czsl_test_unseen_pairs)
    train = sorted(set(itertools.product(range(len(attrs)), range(len(objs)))) - set(chosen))
    val_seen = _covering_seen_pairs(val_unseen, train, cfg.czsl_val_seen_pairs, rng)
    test_seen = _covering_seen_pairs(test_unseen, train, cfg.czsl_test_seen_pairs, rng)

    def names(pairs: Sequence[tuple[int, int]]) -> list[tuple[str, str]]:
        return [(attrs[a], objs[o]) for a, o in sorted(pairs)]

    return CzslPairs(
        train=names(train),
        val=names(val_seen + val_unseen),
        test=names(test_seen + test_unseen),
        val_unseen=names(val_unseen),
        test_unseen=names(test_unseen),
    )


def _deal(chosen: list[tuple[int, int]], n_val: int, n_test: int) -> tuple[list, list]:
    """Deal pairs in order: to the split with fewer pairs of the pair's shape so far, then to the one with the larger
    share still to fill (val first on ties); a full split takes no more."""
    val: list[tuple[int, int]] = []
    test: list[tuple[int, int]] = []
    for pair in chosen:
        if len(val) >= n_val or len(test) >= n_test:
            (test if len(val) >= n_val else val).append(pair)
            continue
        shape_val, shape_test = (sum(p[1] == pair[1] for p in split) for split in (val, test))
        share_val, share_test = (n_val - len(val)) / n_val, (n_test - len(test)) / n_test
        (val if (shape_val, -share_val) <= (shape_test, -share_test) else test).append(pair)
    return sorted(val), sorted(test)


def identifying_primitives(unseen: Sequence[tuple], candidates: Sequence[tuple]) -> list[tuple[tuple, str]]:
    """(unseen pair, "attr" | "obj") for each unseen pair that is the only candidate with that attribute or object."""
    out = []
    for pair in unseen:
        for side, name in ((0, "attr"), (1, "obj")):
            if sum(c[side] == pair[side] for c in candidates) == 1:
                out.append((pair, name))
    return out


def _covering_seen_pairs(
    unseen: list[tuple[int, int]], train: list[tuple[int, int]], n: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """n training pairs to list beside `unseen`: first those sharing a primitive only one unseen pair has, then those
    of the shape with the fewest candidates so far (random among equals), so every shape is about equally represented.

    Raises when n is too small for every unseen pair to share its colour and its shape with another candidate.
    """
    pool = [train[int(i)] for i in rng.permutation(len(train))]
    picked: list[tuple[int, int]] = []
    while len(picked) < n:
        lonely = identifying_primitives(unseen, unseen + picked)
        need_attr = {p[0] for p, side in lonely if side == "attr"}
        need_obj = {p[1] for p, side in lonely if side == "obj"}
        shapes = [c[1] for c in unseen + picked]
        # first best in the shuffled pool: covers a lonely primitive, else brings the rarest shape up
        best = max(pool, key=lambda p: ((p[0] in need_attr) + (p[1] in need_obj), -shapes.count(p[1])))
        pool.remove(best)
        picked.append(best)
    lonely = identifying_primitives(unseen, unseen + picked)
    if lonely:
        raise ValueError(
            f"{n} seen pairs beside {len(unseen)} unseen ones leave {len(lonely)} unseen pairs identifiable by one "
            "primitive; list more seen pairs (data.czsl_val_seen_pairs / data.czsl_test_seen_pairs)"
        )
    return picked


def write_czsl(cfg: DataConfig, out_dir: Path, renderer: Renderer) -> dict[str, Any]:
    import torch  # only here: the rest of the data package must not need torch

    root = out_dir / vocab.CZSL_ROOT
    split_dir = root / vocab.CZSL_SPLIT_DIR
    images = root / vocab.CZSL_IMAGE_DIR
    split_dir.mkdir(parents=True, exist_ok=True)
    pairs = czsl_pairs(cfg)
    for name, pair_list in (("train", pairs.train), ("val", pairs.val), ("test", pairs.test)):
        (split_dir / f"{name}_pairs.txt").write_text("".join(f"{a} {o}\n" for a, o in pair_list))

    lighting = (cfg.czsl_hue_jitter_deg, cfg.czsl_shade_jitter)
    attr_index = {a: i for i, a in enumerate(czsl_attributes(cfg))}
    per_pair = {"train": cfg.czsl_train_per_pair, "val": cfg.czsl_val_per_pair, "test": cfg.czsl_test_per_pair}
    entries: list[tuple[str, str, str, str, ImageSpec]] = []  # (set, attr, obj, file name, spec)
    for set_id, (name, pair_list) in enumerate((("train", pairs.train), ("val", pairs.val), ("test", pairs.test))):
        for attr, obj in pair_list:
            for k in range(per_pair[name]):
                colour, pattern = attr.split(".")
                key = (cfg.seed, STREAM_CZSL_IMAGES, set_id, attr_index[attr], cfg.shapes.index(obj), k)
                spec = sample_spec(cfg, key, lighting, colour=colour, pattern=pattern, shape=obj)
                entries.append((name, attr, obj, f"{name}_{k:04d}.png", spec))
    # Images with set "NA", as in the real releases; every loader must skip them.
    for k in range(cfg.czsl_na_images):
        spec = sample_spec(cfg, (cfg.seed, STREAM_CZSL_IMAGES, 3, 0, 0, k), lighting, pattern=cfg.czsl_patterns[0])
        entries.append(("NA", f"{spec.colour}.{spec.pattern}", spec.shape, f"na_{k:04d}.png", spec))

    for attr, obj in {(e[1], e[2]) for e in entries}:
        (images / f"{attr}_{obj}").mkdir(parents=True, exist_ok=True)
    renderer.to_pngs([e[4] for e in entries], [images / f"{e[1]}_{e[2]}" / e[3] for e in entries], desc="czsl")
    metadata = [
        {"image": f"{attr}_{obj}/{file}", "attr": attr, "obj": obj, "set": name} for name, attr, obj, file, _ in entries
    ]
    # The legacy (non-zip) format: byte-identical across runs (the zip format embeds a random serialization id) and
    # what the released .t7 files use; torch.load(weights_only=True) reads it.
    torch.save(metadata, root / vocab.CZSL_METADATA, _use_new_zipfile_serialization=False)
    counts = {name: sum(1 for e in entries if e[0] == name) for name in ("train", "val", "test", "NA")}
    return {
        "attrs": len(czsl_attributes(cfg)),
        "objs": len(cfg.shapes),
        "train_pairs": len(pairs.train),
        "val_pairs": {"seen": len(pairs.val) - len(pairs.val_unseen), "unseen": len(pairs.val_unseen)},
        "test_pairs": {"seen": len(pairs.test) - len(pairs.test_unseen), "unseen": len(pairs.test_unseen)},
        "images": counts,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Text retrieval


def retrieval_table(cfg: DataConfig) -> pl.DataFrame:
    """Paraphrase groups: per meaning, `retrieval_queries_per_meaning` queries and the rest in the gallery."""
    rng = np.random.default_rng([cfg.seed, STREAM_RETRIEVAL])
    meanings = list(itertools.product(cfg.shapes, cfg.colours, cfg.patterns, cfg.sizes))
    picked = sorted(rng.choice(len(meanings), cfg.retrieval_meanings, replace=False).tolist())
    n_query, n_gallery = cfg.retrieval_queries_per_meaning, cfg.retrieval_gallery_per_meaning
    rows: dict[str, list[Any]] = {k: [] for k in ("text", "group", "split", "shape", "colour", "pattern", "size")}
    for group, index in enumerate(picked):
        shape, colour, pattern, size = meanings[index]
        labels = {"shape": shape, "colour": colour, "pattern": pattern, "size": size}
        texts = paraphrases(labels, n_query + n_gallery, rng, {"colour": cfg.colours, "shape": cfg.shapes},
                            cfg.retrieval_reorder_prob, cfg.retrieval_distractor_prob)
        for j, text in enumerate(texts):
            rows["text"].append(text)
            rows["group"].append(group)
            rows["split"].append("query" if j < n_query else "gallery")
            for factor, value in labels.items():
                rows[factor].append(value)
    return pl.DataFrame(rows).with_columns(pl.col("group").cast(pl.Int64))


def write_retrieval(cfg: DataConfig, out_dir: Path) -> dict[str, int]:
    table = retrieval_table(cfg)
    path = out_dir / vocab.RETRIEVAL_TEXTS
    path.parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(path)
    return {
        "meanings": cfg.retrieval_meanings,
        "queries": int((table["split"] == "query").sum()),
        "gallery": int((table["split"] == "gallery").sum()),
    }


# ---------------------------------------------------------------------------------------------------------------------


def write_shapes_world(
    cfg: DataConfig, out_dir: Path, progress: Progress | None = None, workers: int = 1
) -> dict[str, Any]:
    """Write every dataset of the shapes world under out_dir (replacing earlier copies); returns counts and timings.

    `workers` rendering processes never change the bytes written (serial == parallel), so it is a runtime setting.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in (vocab.PRETRAIN_DIR, vocab.FEWSHOT_ROOT.split("/")[0], vocab.CZSL_ROOT.split("/")[0], "retrieval"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)  # a crashed earlier attempt may have left partial files
    seconds: dict[str, float] = {}
    summary: dict[str, Any] = {}
    started = time.perf_counter()
    with Renderer(RenderSettings.from_config(cfg), workers=workers, progress=progress) as renderer:
        for name, write in (
            ("pretrain", lambda: write_pretrain(cfg, out_dir, renderer)),
            ("fewshot", lambda: write_fewshot(cfg, out_dir, renderer)),
            ("czsl", lambda: write_czsl(cfg, out_dir, renderer)),
            ("retrieval", lambda: write_retrieval(cfg, out_dir)),
        ):
            t0 = time.perf_counter()
            summary[name] = write()
            seconds[name] = round(time.perf_counter() - t0, 3)
            logger.info("data: wrote %s in %.1f s: %s", name, seconds[name], summary[name])
    seconds["total"] = round(time.perf_counter() - started, 3)
    n_images = (
        summary["pretrain"]["images"]
        + sum(summary["fewshot"][s] for s in _SPLITS)
        + sum(summary["czsl"]["images"].values())
    )
    summary["images_total"] = n_images
    summary["seconds"] = seconds
    summary["images_per_second"] = round(n_images / max(seconds["total"], 1e-9), 1)
    summary["workers"] = workers
    return summary
