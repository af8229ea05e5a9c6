"""Small open_clip models shared by the model-level tests (hooks, inversion, retrieval, features, CZSL): the team's
tiny architecture from `pipeline_lib.backbone.tiny`, randomly initialised, so nothing is downloaded (CPU, seconds)."""

from __future__ import annotations

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from pipeline_lib.backbone.tiny import tiny_model_config

TINY_NAME = "bf-tiny-vit-32"
#: The team's tiny ViT (32 px, patch 4 -> 8x8 grid, avg pooling; text width 128, context 16, embed 128).
TINY_CFG = tiny_model_config(TINY_NAME)
TINY_CONTEXT = TINY_CFG["text_cfg"]["context_length"]
TINY_IMAGE_SIZE = TINY_CFG["vision_cfg"]["image_size"]


def tiny_clip(seed: int = 0, **vision_overrides: object) -> CLIP:
    """The tiny CLIP, randomly initialised, in eval mode with frozen fp32 weights (vision settings overridable)."""
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
