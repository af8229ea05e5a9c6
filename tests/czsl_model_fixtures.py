"""Synthetic token data and a tiny CZSL benchmark shared by the SAM-CZSL model tests (CPU, seconds)."""

from __future__ import annotations

import torch
from model_fixtures import tiny_clip, tiny_tokenizer

ATTRS = ["red", "green", "blue"]
OBJS = ["circle", "square", "star"]


def synthetic_tokens(n: int, seed: int = 0, n_tokens: int = 9, dim: int = 128) -> dict[str, torch.Tensor]:
    """Tokens whose patch 1 carries the attr direction and patch 2 the obj direction (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(len(ATTRS) + len(OBJS), dim, generator=torch.Generator().manual_seed(123))
    attr = torch.randint(0, len(ATTRS), (n,), generator=g)
    obj = torch.randint(0, len(OBJS), (n,), generator=g)
    tokens = 0.3 * torch.randn(n, n_tokens, dim, generator=g)
    tokens[:, 1] += basis[attr]
    tokens[:, 2] += basis[len(ATTRS) + obj]
    tokens[:, 0] += 0.5 * (basis[attr] + basis[len(ATTRS) + obj])
    return {"tokens": tokens, "attr": attr, "obj": obj}


# A 3 x 3 CZSL benchmark in the standard layout: every attr and obj keeps a training pair; unseen val and test pairs
# are disjoint; val/test pair files also list seen pairs.
TRAIN_PAIRS = [("red", "circle"), ("red", "square"), ("green", "square"), ("green", "star"), ("blue", "circle"),
               ("blue", "star")]
VAL_PAIRS = [("red", "circle"), ("green", "square"), ("red", "star")]
TEST_PAIRS = [("green", "star"), ("blue", "circle"), ("green", "circle"), ("blue", "square")]
RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_czsl_layout(root, per_pair: dict[str, int] | None = None, seed: int = 0):
    """Write pair files, metadata .t7 and 32 px PNGs; returns the root."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    per_pair = per_pair or {"train": 12, "val": 6, "test": 6}
    root = Path(root)
    split_dir = root / "compositional-split-natural"
    split_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = []
    for split, pairs in (("train", TRAIN_PAIRS), ("val", VAL_PAIRS), ("test", TEST_PAIRS)):
        (split_dir / f"{split}_pairs.txt").write_text("".join(f"{a} {o}\n" for a, o in pairs))
        for a, o in pairs:
            folder = root / "images" / f"{a}_{o}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_pair[split]):
                rel = f"{a}_{o}/{split}_{i}.png"
                img = np.clip(np.array(RGB[a])[None, None] + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / "images" / rel)
                meta.append({"image": rel, "attr": a, "obj": o, "set": split})
    torch.save(meta, root / "metadata_compositional-split-natural.t7")
    return root


def tokens_for(ds, split: str, seed: int = 0) -> torch.Tensor:
    """Synthetic tokens (N, 9, 128) for a loaded dataset split (attr in patch 1, obj in patch 2)."""
    df = ds.split(split)
    n = df.height
    g = torch.Generator().manual_seed(seed + {"train": 0, "val": 1, "test": 2}[split])
    basis = torch.randn(len(ds.attrs) + len(ds.objs), 128, generator=torch.Generator().manual_seed(123))
    attr = torch.from_numpy(df["attr_idx"].to_numpy().copy())
    obj = torch.from_numpy(df["obj_idx"].to_numpy().copy())
    tokens = 0.3 * torch.randn(n, 9, 128, generator=g)
    tokens[:, 1] += basis[attr]
    tokens[:, 2] += basis[len(ds.attrs) + obj]
    tokens[:, 0] += 0.5 * (basis[attr] + basis[len(ds.attrs) + obj])
    return tokens


def make_bench(tmp_root):
    """The 3 x 3 benchmark on disk, loaded (closed world), with synthetic tokens and image paths per split."""
    from pathlib import Path
    from types import SimpleNamespace

    from pipeline_lib.czsl.data import load_czsl_dataset
    from pipeline_lib.czsl.train import SplitData

    root = write_czsl_layout(Path(tmp_root) / "shapes")
    ds = load_czsl_dataset(root, "closed")
    splits = {}
    for s in ("train", "val", "test"):
        df = ds.split(s)
        splits[s] = SplitData(
            attr=torch.from_numpy(df["attr_idx"].to_numpy().copy()),
            obj=torch.from_numpy(df["obj_idx"].to_numpy().copy()),
            label=torch.from_numpy(df["pair_idx"].to_numpy().copy()), tokens=tokens_for(ds, s),
            paths=df["path"].to_list(),
        )
    return SimpleNamespace(root=root, ds=ds, splits=splits, clip=tiny_clip(), tok=tiny_tokenizer())
