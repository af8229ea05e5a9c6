"""Tiny open_clip model and synthetic token data shared by the SAM-CZSL model tests (CPU, seconds)."""

from __future__ import annotations

import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

CONTEXT = 16
TINY_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
ATTRS = ["red", "green", "blue"]
OBJS = ["circle", "square", "star"]


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(**TINY_CFG).eval()
    model.requires_grad_(False)
    return model


def tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=CONTEXT)


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
