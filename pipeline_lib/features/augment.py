"""Deterministic offline augmentation of train views (SeMoBridge spec 1.3).

Each view draws its randomness from its own generator seeded by (seed, image index, view), never from a global RNG,
so a view is the same whichever worker, batch or resumed run produces it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pipeline_lib.features.config import AugmentConfig


def view_generator(seed: int, index: int, view: int) -> torch.Generator:
    """A torch generator private to one (seed, image index, view)."""
    state = np.random.SeedSequence([seed, index, view]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=g))


def _crop_box(width: int, height: int, scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a square random-resized crop, torchvision's sampling with ratio (1, 1)."""
    area = width * height
    for _ in range(10):
        side = round(math.sqrt(area * _uniform(g, *scale)))
        if 0 < side <= width and 0 < side <= height:
            top = int(torch.randint(0, height - side + 1, (1,), generator=g))
            left = int(torch.randint(0, width - side + 1, (1,), generator=g))
            return top, left, side, side
    side = min(width, height)  # fall back to a centre crop, as torchvision does
    return (height - side) // 2, (width - side) // 2, side, side


def _color_jitter(img: Image.Image, cfg: AugmentConfig, g: torch.Generator) -> Image.Image:
    """ColorJitter: the four adjustments in a random order, each with a random factor."""
    order = torch.randperm(4, generator=g).tolist()
    b = _uniform(g, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
    c = _uniform(g, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
    s = _uniform(g, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
    h = _uniform(g, -cfg.hue, cfg.hue)
    for op in order:
        if op == 0 and cfg.brightness > 0:
            img = F.adjust_brightness(img, b)
        elif op == 1 and cfg.contrast > 0:
            img = F.adjust_contrast(img, c)
        elif op == 2 and cfg.saturation > 0:
            img = F.adjust_saturation(img, s)
        elif op == 3 and cfg.hue > 0:
            img = F.adjust_hue(img, h)
    return img


def augment_view(img: Image.Image, cfg: AugmentConfig, seed: int, index: int, view: int, size: int) -> Image.Image:
    """View `view` of image `index`: view 0 is the image itself; others run crop -> flips -> colour jitter.

    `size` is the crop's output side (the model's input size), as RandomResizedCrop(224) is in the spec.
    """
    if view == 0:
        return img
    g = view_generator(seed, index, view)
    if cfg.rrc_scale is not None:
        top, left, h, w = _crop_box(img.width, img.height, cfg.rrc_scale, g)
        img = F.resized_crop(img, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC)
    if cfg.random_flip and bool(torch.rand(1, generator=g) < 0.5):
        img = F.horizontal_flip(img)
    if cfg.horizontal_flip:
        img = F.horizontal_flip(img)
    if cfg.color_jitter:
        img = _color_jitter(img, cfg, g)
    return img
