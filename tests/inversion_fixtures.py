"""Small open_clip models shared by the hooks / inversion / retrieval tests (no downloads, CPU, seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

TINY_CONTEXT = 16

#: A real open_clip CLIP at the size of the team's tiny ViT (32 px, patch 4 -> 8x8 grid; text width 128, context 16).
TINY_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": TINY_CONTEXT, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}


def tiny_clip(seed: int = 0, **vision_overrides: object) -> CLIP:
    """A randomly initialised tiny CLIP in eval mode with frozen fp32 weights."""
    torch.manual_seed(seed)
    cfg = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], **vision_overrides}}
    model = CLIP(**cfg).eval()
    model.requires_grad_(False)
    return model


def tiny_tokenizer() -> SimpleTokenizer:
    """CLIP's BPE tokenizer padded/truncated to the tiny context length (the vocabulary ships with open_clip)."""
    return SimpleTokenizer(context_length=TINY_CONTEXT)


def standard_clip(name: str) -> CLIP:
    """A standard open_clip architecture with random weights (pretrained=None: nothing is downloaded)."""
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    model.requires_grad_(False)
    return model


def one_thread() -> Iterator[None]:
    """Generator for an autouse fixture: one intra-op thread. On a shared, oversubscribed 2-core machine two
    threads stall each other on these tiny tensors (measured 20-40x slower per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
