"""OVI: optimise P pseudo-patches, repeated over the ViT's patch grid, so the image feature matches a query text's.

The pseudo-patches live in the space of the patch embeddings (output of `visual.conv1`, width W, before the class
token, positional embeddings and ln_pre); everything downstream is the frozen model's native image forward.
"""

from __future__ import annotations

import logging

import torch
from open_clip.model import CLIP
from torch import Tensor

from pipeline_lib.backbone.hooks import check_image_tower, image_features_from_patch_embeddings
from pipeline_lib.inversion.config import OviConfig
from pipeline_lib.inversion.optimise import Encoder, InversionOutput, invert_with_config

log = logging.getLogger(__name__)


def expansion_index(num_patches: int, grid_tokens: int) -> Tensor:
    """(N,) nearest-neighbour map from N grid positions to P pseudo-patches: position i uses floor(i * P / N).

    An explicit gather (rather than F.interpolate) keeps the backward deterministic and makes the layout explicit:
    contiguous runs, e.g. P=2, N=49 -> 25 positions use patch 0, 24 use patch 1.
    """
    if not 1 <= num_patches <= grid_tokens:
        raise ValueError(f"num_patches={num_patches} must be between 1 and the grid's {grid_tokens} patch positions")
    return torch.arange(grid_tokens) * num_patches // grid_tokens  # (N,)


def grid_tokens(model: CLIP) -> int:
    """Number of patch positions N of the model's image grid."""
    gh, gw = check_image_tower(model).grid_size
    return int(gh) * int(gw)


def ovi_encoder(model: CLIP, num_patches: int) -> Encoder:
    """pseudo-patches (B, P, W) -> image features (B, D) with the patches expanded over the grid."""
    index = expansion_index(num_patches, grid_tokens(model))

    def encode(pseudo: Tensor) -> Tensor:
        patches = pseudo[:, index.to(pseudo.device)]  # (B, N, W)
        return image_features_from_patch_embeddings(model, patches)  # (B, D)

    return encode


def run_ovi(model: CLIP, text_features: Tensor, cfg: OviConfig, *, seed: int, amp: bool = True) -> InversionOutput:
    """Invert a batch of text features (B, D) into pseudo-patches (B, P, W) and their image features."""
    width = check_image_tower(model).conv1.out_channels
    encode = ovi_encoder(model, cfg.num_patches)
    return invert_with_config(encode, text_features, (cfg.num_patches, width), cfg, seed=seed, amp=amp)  # (B, P, W)


@torch.no_grad()
def ovi_features(model: CLIP, patches: Tensor, cfg: OviConfig, chunk: int = 256) -> Tensor:
    """fp32 image features (N, D) of saved pseudo-patches (N, P, W), recomputed in chunks on the model's device."""
    device = check_image_tower(model).conv1.weight.device
    encode = ovi_encoder(model, cfg.num_patches)
    out = [encode(part.to(device)).float().cpu() for part in patches.split(chunk)]
    return torch.cat(out) if out else torch.empty(0, model.visual.output_dim)
