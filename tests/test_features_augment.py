"""Offline view augmentation: deterministic per (seed, image, view), independent of call order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline_lib.datasets.config import ClassificationDataset, DatasetsConfig
from pipeline_lib.features.augment import augment_view, view_generator
from pipeline_lib.features.config import AugmentConfig, FeaturesConfig


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    ImageDraw.Draw(img).ellipse((6, 6, 20, 24), fill=(250, 20, 20))
    return img


FULL = AugmentConfig(rrc_scale=(0.5, 1.0), random_flip=True, color_jitter=True)


def test_view_zero_is_the_image() -> None:
    img = _image()
    assert augment_view(img, FULL, seed=0, index=3, view=0, size=32) is img


def test_views_are_deterministic_and_order_free() -> None:
    img = _image()
    order_a = [np.asarray(augment_view(img, FULL, 7, i, v, 32)) for i in range(3) for v in (1, 2)]
    order_b = {(i, v): np.asarray(augment_view(img, FULL, 7, i, v, 32)) for i in reversed(range(3)) for v in (2, 1)}
    for k, (i, v) in enumerate((i, v) for i in range(3) for v in (1, 2)):
        np.testing.assert_array_equal(order_a[k], order_b[(i, v)])


def test_views_differ_across_view_index_and_seed() -> None:
    img = _image()
    a = np.asarray(augment_view(img, FULL, 0, 0, 1, 32))
    assert a.shape == (32, 32, 3)
    assert not np.array_equal(a, np.asarray(augment_view(img, FULL, 0, 0, 2, 32)))
    assert not np.array_equal(a, np.asarray(augment_view(img, FULL, 1, 0, 1, 32)))
    assert not np.array_equal(a, np.asarray(img))


def test_generator_streams_are_private() -> None:
    import torch

    a = torch.rand(4, generator=view_generator(0, 5, 1))
    torch.manual_seed(123)  # the global RNG must not matter
    b = torch.rand(4, generator=view_generator(0, 5, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(4, generator=view_generator(0, 1, 5)))


def test_deterministic_mirror_and_output_size() -> None:
    img = _image()
    cfg = AugmentConfig(rrc_scale=None, random_flip=False, horizontal_flip=True)
    np.testing.assert_array_equal(np.asarray(augment_view(img, cfg, 0, 0, 1, 32)), np.asarray(img)[:, ::-1])
    crop = augment_view(img, AugmentConfig(rrc_scale=(0.3, 0.5)), 0, 0, 1, 48)
    assert crop.size == (48, 48)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="rrc_scale"):
        AugmentConfig(rrc_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="multiple"):
        FeaturesConfig(rows_per_chunk=100, rows_per_shard=250)
    with pytest.raises(ValueError, match="class slot"):
        ClassificationDataset(templates=["no slot here"])
    with pytest.raises(ValueError, match="lower-case"):
        DatasetsConfig(classification={"Oxford-Pets": ClassificationDataset()})
    with pytest.raises(ValueError):
        FeaturesConfig(unknown_key=1)
