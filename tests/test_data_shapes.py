"""The renderer: deterministic per key, pinned factors leave other draws alone, serial == parallel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import tiny_data_config

from pipeline_lib.data.config import DataConfig
from pipeline_lib.data.generate import Renderer
from pipeline_lib.data.shapes import RenderSettings, render, render_batch, sample_spec, shape_contrast_group
from pipeline_lib.data.vocab import KNOWN_BACKGROUNDS, KNOWN_PATTERNS, KNOWN_SHAPES

CFG = DataConfig()
SETTINGS = RenderSettings.from_config(CFG)


def test_same_key_gives_identical_bytes_and_other_keys_differ() -> None:
    a = render(sample_spec(CFG, (0, 1, 5)), SETTINGS)
    b = render(sample_spec(CFG, (0, 1, 5)), SETTINGS)
    c = render(sample_spec(CFG, (1, 1, 5)), SETTINGS)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_pinning_a_factor_leaves_every_other_draw_unchanged() -> None:
    free = sample_spec(CFG, (0, 1, 7))
    for shape in CFG.shapes:
        pinned = sample_spec(CFG, (0, 1, 7), shape=shape)
        assert dataclasses.replace(pinned, shape=free.shape) == free
    with pytest.raises(ValueError, match="only the factors"):
        sample_spec(CFG, (0, 1, 7), background="flat")


def test_shape_contrast_group_differs_only_in_shape() -> None:
    group = shape_contrast_group(CFG, (0, 2, 3))
    assert [s.shape for s in group] == list(CFG.shapes)
    assert len({dataclasses.replace(s, shape="circle") for s in group}) == 1
    images = render_batch(group, SETTINGS)  # (6, 32, 32, 3)
    assert len({im.tobytes() for im in images}) == len(group)  # the shapes do change the pixels


def test_every_known_shape_pattern_and_background_renders_visibly() -> None:
    settings = RenderSettings(image_size=32, supersample=4, pixel_noise=0.0)
    for i, (shape, pattern, background) in enumerate(
        zip(KNOWN_SHAPES, KNOWN_PATTERNS * 3, KNOWN_BACKGROUNDS * 2, strict=False)
    ):
        cfg = CFG.model_copy(update={"backgrounds": (background,), "max_distractors": 0})
        spec = sample_spec(cfg, (0, 9, i), shape=shape, pattern=pattern, colour="yellow")
        image = render(spec, settings).astype(int)
        centre = image[int(spec.y * 32), int(spec.x * 32)]
        # yellow (245, 225, 40) or its dark pattern shade sits at the object centre for solid fills (rings are hollow)
        if pattern == "solid" and shape != "ring":
            assert np.abs(centre - [245, 225, 40]).max() <= 2, (shape, background, centre)
        # the object covers a clear share of the image
        yellowish = (image[..., 0] > 150) & (image[..., 1] > 140) & (image[..., 2] < 100)
        assert yellowish.mean() > 0.04, (shape, pattern, background)


def test_lighting_shifts_hue_and_dims_within_the_configured_range() -> None:
    from pipeline_lib.data.shapes import object_rgb

    specs = [sample_spec(CFG, (0, 11, i), (20.0, 0.3), colour="red") for i in range(200)]
    assert all(-20.0 <= s.hue_shift <= 20.0 and 0.7 <= s.shade <= 1.0 for s in specs)
    assert max(s.hue_shift for s in specs) > 15 and min(s.shade for s in specs) < 0.75  # the range is used
    dim = next(s for s in specs if s.shade < 0.75)
    assert max(object_rgb(dim)) < 0.76 * 225 + 1  # red's value 225 dimmed
    plain = sample_spec(CFG, (0, 11, 0), colour="red")
    assert object_rgb(plain) == (225, 35, 35)
    assert plain.shape == specs[0].shape and plain.seed == specs[0].seed  # lighting moves no other draw


def test_noise_and_supersampling_follow_the_settings() -> None:
    spec = sample_spec(CFG, (0, 1, 1))
    clean = render(spec, RenderSettings(32, 4, 0.0))
    noisy = render(spec, RenderSettings(32, 4, 0.05))
    diff = noisy.astype(float) - clean.astype(float)
    assert 5 < diff.std() < 20  # ~0.05 * 255 where not clipped
    big = render(spec, RenderSettings(48, 1, 0.0))
    assert big.shape == (48, 48, 3)


def test_parallel_rendering_equals_serial(tmp_path: Path) -> None:
    cfg = tiny_data_config()
    settings = RenderSettings.from_config(cfg)
    specs = [sample_spec(cfg, (0, 1, i)) for i in range(40)]
    serial = np.empty((40, 32, 32, 3), np.uint8)
    parallel = np.empty_like(serial)
    with Renderer(settings, workers=1, chunk=7) as renderer:
        renderer.to_array(specs, serial)
    with Renderer(settings, workers=2, chunk=7) as renderer:
        renderer.to_array(specs, parallel)
        paths = [tmp_path / f"{i}.png" for i in range(len(specs))]
        assert renderer.to_pngs(specs, paths) == len(specs)
    assert serial.tobytes() == parallel.tobytes()
    assert serial.tobytes() == render_batch(specs, settings).tobytes()
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(paths[3])), serial[3])


def test_renderer_rejects_a_wrong_output_buffer() -> None:
    specs = [sample_spec(CFG, (0, 1, i)) for i in range(2)]
    with Renderer(SETTINGS) as renderer, pytest.raises(ValueError, match="expected \\(2, 32, 32, 3\\) uint8"):
        renderer.to_array(specs, np.empty((2, 16, 16, 3), np.uint8))


def _render_in_daemon(queue) -> None:  # runs in a daemonic child process
    cfg = tiny_data_config()
    specs = [sample_spec(cfg, (0, 1, i)) for i in range(4)]
    out = np.empty((4, 32, 32, 3), np.uint8)
    with Renderer(RenderSettings.from_config(cfg), workers=2) as renderer:
        renderer.to_array(specs, out)
    queue.put(out.tobytes())


def test_daemonic_process_renders_without_a_pool() -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_render_in_daemon, args=(queue,), daemon=True)
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    cfg = tiny_data_config()
    expected = render_batch([sample_spec(cfg, (0, 1, i)) for i in range(4)], RenderSettings.from_config(cfg))
    assert got == expected.tobytes()
