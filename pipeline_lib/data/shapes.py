"""Procedural shapes-world images: one captioned object (shape, colour, pattern, size) on uncaptioned nuisances.

An image is fully described by an `ImageSpec`: the captioned factors, the nuisance draws (background kind, position,
rotation, number of distractors) and a seed for the render-time randomness (background detail, distractor placement,
pixel noise). Specs are drawn from a counter-based key (seed, stream, index), so any subset of a dataset can be
rendered in any process, in any order, and gives the same bytes. The module imports only numpy and PIL, so spawned
worker processes start quickly.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline_lib.data.vocab import COLOUR_RGB, KNOWN_BACKGROUNDS, KNOWN_PATTERNS, KNOWN_SHAPES, SIZE_RADIUS

if TYPE_CHECKING:
    from pipeline_lib.data.config import DataConfig

FACTORS: tuple[str, ...] = ("shape", "colour", "pattern", "size")


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines one image's pixels."""

    shape: str
    colour: str
    pattern: str
    size: str
    background: str
    x: float  # object centre, fraction of the image width
    y: float  # object centre, fraction of the image height
    rotation: float  # degrees, counter-clockwise
    distractors: int  # number of uncaptioned blobs behind the object
    seed: tuple[int, ...]  # render-time randomness (background detail, distractor placement, pixel noise)
    hue_shift: float = 0.0  # degrees added to the object colour's hue (lighting: colour names are not pixel values)
    shade: float = 1.0  # factor on the object colour's HSV value (<= 1: dimmer lighting)

    def labels(self) -> dict[str, str]:
        """The captioned factors."""
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern, "size": self.size}


@dataclass(frozen=True)
class RenderSettings:
    """How specs become pixels (picklable, so worker processes need no config object)."""

    image_size: int  # output side in pixels
    supersample: int  # draw at image_size * supersample, then box-filter down (anti-aliasing)
    pixel_noise: float  # std of additive Gaussian pixel noise, as a fraction of the 0-255 range

    @classmethod
    def from_config(cls, cfg: DataConfig) -> RenderSettings:
        return cls(image_size=cfg.image_size, supersample=cfg.supersample, pixel_noise=cfg.pixel_noise)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling specs


def sample_spec(cfg: DataConfig, key: Sequence[int], lighting: tuple[float, float] = (0.0, 0.0),
                **fixed: str) -> ImageSpec:
    """Draw one spec from `key` (e.g. (seed, stream, index)); `fixed` pins factors (e.g. shape="star").

    `lighting` = (hue jitter in degrees, shade jitter): the object colour's hue moves by up to +-the first, its value
    drops by up to the second (the CZSL set's lighting; other datasets keep the named colours).

    Every factor is drawn even when pinned, so pinning one factor never shifts the draws of the others: two specs
    from the same key that pin different shapes differ only in shape (the shape-contrast groups rely on this).
    """
    unknown = set(fixed) - set(FACTORS)
    if unknown:
        raise ValueError(f"cannot pin {sorted(unknown)}: only the factors {list(FACTORS)} can be fixed")
    rng = np.random.default_rng([int(k) for k in key])
    drawn = {
        "shape": cfg.shapes[rng.integers(len(cfg.shapes))],
        "colour": cfg.colours[rng.integers(len(cfg.colours))],
        "pattern": cfg.patterns[rng.integers(len(cfg.patterns))],
        "size": cfg.sizes[rng.integers(len(cfg.sizes))],
    }
    drawn.update(fixed)
    background = cfg.backgrounds[rng.integers(len(cfg.backgrounds))]
    jitter = cfg.position_jitter
    x, y = 0.5 + rng.uniform(-jitter, jitter, size=2)
    rotation = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    distractors = int(rng.integers(0, cfg.max_distractors + 1))
    render_seed = tuple(int(v) for v in rng.integers(0, 2**31 - 1, size=2))
    hue_jitter, shade_jitter = lighting
    hue_shift = float(rng.uniform(-1.0, 1.0)) * hue_jitter  # drawn at any setting, so the setting moves no other draw
    shade = 1.0 - float(rng.uniform(0.0, 1.0)) * shade_jitter
    # Keep the object mostly inside the frame: its centre stays at least 85% of its radius from every edge.
    margin = 0.85 * SIZE_RADIUS[drawn["size"]]
    x = float(np.clip(x, margin, 1.0 - margin))
    y = float(np.clip(y, margin, 1.0 - margin))
    return ImageSpec(
        shape=drawn["shape"],
        colour=drawn["colour"],
        pattern=drawn["pattern"],
        size=drawn["size"],
        background=background,
        x=x,
        y=y,
        rotation=rotation,
        distractors=distractors,
        seed=render_seed,
        hue_shift=hue_shift,
        shade=shade,
    )


def shape_contrast_group(cfg: DataConfig, key: Sequence[int]) -> list[ImageSpec]:
    """One spec per shape in `cfg.shapes`, identical in everything else (colour, pattern, size and all nuisances)."""
    base = sample_spec(cfg, key)
    return [replace(base, shape=shape) for shape in cfg.shapes]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def _muted_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """n low-saturation, dark-to-mid colours, uint8 (n, 3): backgrounds never compete with the object colours."""
    hue, sat, val = rng.uniform(0, 1, n), rng.uniform(0.0, 0.45, n), rng.uniform(0.12, 0.55, n)  # (n,) each
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6  # (n, 3): HSV -> RGB in closed form
    rgb = val[:, None] * (1 - sat[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))  # (n, 3)
    return (rgb * 255).astype(np.uint8)


def _muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = _muted_colours(rng, 1)[0]
    return int(r), int(g), int(b)


@lru_cache(maxsize=8)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (X, Y) of a side x side canvas, read-only and shared between calls."""
    coords = np.arange(side, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(coords, coords)  # (H, W) each
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _background_flat(side: int, rng: np.random.Generator) -> Image.Image:
    return Image.new("RGB", (side, side), _muted_colour(rng))


def _background_gradient(side: int, rng: np.random.Generator) -> Image.Image:
    ends = _muted_colours(rng, 2).astype(np.float32)  # (2, 3) start and end colours
    angle = rng.uniform(0, 2 * math.pi)
    small = 16  # a linear ramp survives bilinear upsampling exactly; computing it small is ~16x cheaper
    xs, ys = _grid(small)
    t = ((xs / small - 0.5) * math.cos(angle) + (ys / small - 0.5) * math.sin(angle)) / math.sqrt(2) + 0.5  # (h, w)
    pixels = ends[0] + np.clip(t, 0, 1)[..., None] * (ends[1] - ends[0])  # (h, w, 3)
    ramp = Image.fromarray(pixels.astype(np.uint8), "RGB")
    return ramp.resize((side, side), Image.Resampling.BILINEAR)


def _background_blotches(side: int, rng: np.random.Generator) -> Image.Image:
    canvas = Image.new("RGB", (side, side), _muted_colour(rng))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, side, size=2)
        rx, ry = rng.uniform(0.08, 0.3, size=2) * side
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_muted_colour(rng))
    return canvas


def _background_blocks(side: int, rng: np.random.Generator) -> Image.Image:
    cells = int(rng.choice([4, 8]))
    tiles = _muted_colours(rng, cells * cells).reshape(cells, cells, 3)  # (cells, cells, 3)
    return Image.fromarray(tiles, "RGB").resize((side, side), Image.Resampling.NEAREST)


BACKGROUNDS: dict[str, Callable[[int, np.random.Generator], Image.Image]] = {
    "flat": _background_flat,
    "gradient": _background_gradient,
    "blotches": _background_blotches,
    "blocks": _background_blocks,
}


# An outline is a list of parts: ("polygon", vertices, is_hole) or ("ellipse", (x0, y0, x1, y1), is_hole), in
# canvas pixels. The same parts fill the object's mask and draw the rim that keeps a patterned outline readable.
Part = tuple[str, Any, bool]
Outline = Callable[[float, float, float, float], list[Part]]  # (cx, cy, radius, theta) -> parts


def _polygon(cx: float, cy: float, radii: Sequence[float], angles: Sequence[float]) -> list[tuple[float, float]]:
    """Vertices at (radius, angle) around a centre; angles in radians, y pointing down as in image coordinates."""
    return [(cx + r * math.cos(a), cy - r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]


def _circle_box(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


def _regular(n: int, phase: float) -> Outline:
    def outline(cx: float, cy: float, r: float, theta: float) -> list[Part]:
        angles = [theta + phase + 2 * math.pi * k / n for k in range(n)]
        return [("polygon", _polygon(cx, cy, [r] * n, angles), False)]

    return outline


def _circle(cx: float, cy: float, r: float, theta: float) -> list[Part]:
    return [("ellipse", _circle_box(cx, cy, 0.85 * r), False)]  # 0.85: similar area to the polygons


def _ring(cx: float, cy: float, r: float, theta: float) -> list[Part]:
    return [("ellipse", _circle_box(cx, cy, r), False), ("ellipse", _circle_box(cx, cy, 0.5 * r), True)]


def _triangle(cx: float, cy: float, r: float, theta: float) -> list[Part]:
    r = 1.12 * r  # a triangle covers the least of its circumcircle; enlarge it towards the others' area
    cy = cy + 0.25 * r  # centre the bounding box rather than the circumcentre
    angles = [theta + math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]
    return [("polygon", _polygon(cx, cy, [r] * 3, angles), False)]


def _star(cx: float, cy: float, r: float, theta: float) -> list[Part]:
    radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    angles = [theta + math.pi / 2 + math.pi * k / 5 for k in range(10)]
    return [("polygon", _polygon(cx, cy, radii, angles), False)]


def _cross(cx: float, cy: float, r: float, theta: float) -> list[Part]:
    arm, half = 0.95 * r, 0.33 * r  # arm reach and half-width of each bar
    corners = [(half, arm), (half, half), (arm, half), (arm, -half), (half, -half), (half, -arm)]
    local = corners + [(-u, -v) for u, v in corners]  # 12 vertices, point-symmetric
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    return [("polygon", [(cx + u * cos_t - v * sin_t, cy - (u * sin_t + v * cos_t)) for u, v in local], False)]


SHAPES: dict[str, Outline] = {
    "circle": _circle,
    "square": _regular(4, math.pi / 4),
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "ring": _ring,
    "hexagon": _regular(6, 0.0),
    "diamond": _regular(4, 0.0),
}


def _outline_parts(spec: ImageSpec, side: int) -> list[Part]:
    radius = SIZE_RADIUS[spec.size] * side
    return SHAPES[spec.shape](spec.x * side, spec.y * side, radius, math.radians(spec.rotation))


def _fill_mask(parts: list[Part], side: int) -> Image.Image:
    """The object's coverage (L image, 255 inside); holes are cut after the solid parts."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for kind, geometry, hole in sorted(parts, key=lambda part: part[2]):
        getattr(draw, kind)(geometry, fill=0 if hole else 255)
    return mask


def _draw_rim(draw: ImageDraw.ImageDraw, parts: list[Part], colour: tuple[int, int, int], width: int) -> None:
    """A band of the plain object colour along every edge (inside the mask), so a pattern never eats the outline."""
    for kind, geometry, hole in parts:
        if kind == "ellipse":
            x0, y0, x1, y1 = geometry
            grow = width if hole else 0  # a hole's rim lies outside the hole, on the object
            draw.ellipse((x0 - grow, y0 - grow, x1 + grow, y1 + grow), outline=colour, width=width)
        else:
            closed = list(geometry) + [geometry[0]]
            draw.line(closed, fill=colour, width=2 * width, joint="curve")  # centred: half of it is inside


assert set(SHAPES) == set(KNOWN_SHAPES), "every known shape needs a drawer"
assert set(BACKGROUNDS) == set(KNOWN_BACKGROUNDS), "every known background needs a painter"
assert set(KNOWN_PATTERNS) == {"solid", "striped", "dotted"}, "_texture handles exactly these patterns"


def object_rgb(spec: ImageSpec) -> tuple[int, int, int]:
    """The object's colour under the image's lighting: the named colour with its hue shifted and value scaled."""
    r, g, b = (c / 255.0 for c in COLOUR_RGB[spec.colour])
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    rgb = colorsys.hsv_to_rgb((hue + spec.hue_shift / 360.0) % 1.0, sat, val * spec.shade)
    return (round(rgb[0] * 255), round(rgb[1] * 255), round(rgb[2] * 255))


def _texture(spec: ImageSpec, parts: list[Part], side: int, image_size: int) -> Image.Image:
    """The object's fill: its colour, with darker stripes or dots laid out in the object's own (rotated) frame."""
    base = object_rgb(spec)
    texture = Image.new("RGB", (side, side), base)
    if spec.pattern == "solid":
        return texture
    dark = tuple(int(0.3 * c) for c in base)
    draw = ImageDraw.Draw(texture)
    scale = side / image_size  # canvas pixels per output pixel
    cx, cy = spec.x * side, spec.y * side
    reach = 1.2 * SIZE_RADIUS[spec.size] * side  # covers the object (the mask cuts the pattern to its outline)
    theta = math.radians(spec.rotation)
    cos_t, sin_t = math.cos(theta), math.sin(theta)

    def to_image(u: float, v: float) -> tuple[float, float]:
        """Object frame (u right, v down when unrotated) -> canvas pixels; rotation is counter-clockwise."""
        return cx + u * cos_t + v * sin_t, cy - u * sin_t + v * cos_t

    if spec.pattern == "striped":
        period = max(4.0, image_size / 8) * scale  # two output pixels dark, two light at 32 px
        for k in range(-math.ceil(reach / period), math.ceil(reach / period) + 1):
            top, bottom = k * period, k * period + period / 2
            corners = [(-reach, top), (reach, top), (reach, bottom), (-reach, bottom)]
            draw.polygon([to_image(u, v) for u, v in corners], fill=dark)
    else:  # dotted
        spacing = max(5.0, image_size * 5 / 32) * scale
        radius = 0.3 * spacing
        steps = math.ceil(reach / spacing)
        for i in range(-steps, steps + 1):
            for j in range(-steps, steps + 1):
                x, y = to_image((i + 0.5) * spacing, (j + 0.5) * spacing)
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=dark)
    _draw_rim(draw, parts, base, width=max(1, round(scale)))
    return texture


def _draw_distractors(canvas: Image.Image, spec: ImageSpec, rng: np.random.Generator) -> None:
    """Small saturated blobs of any hue, placed away from the object so they never hide it."""
    side = canvas.size[0]
    draw = ImageDraw.Draw(canvas)
    object_r = SIZE_RADIUS[spec.size]
    for _ in range(spec.distractors):
        rx, ry = rng.uniform(0.05, 0.1, size=2)
        colour = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        candidates = rng.uniform(0.08, 0.92, size=(10, 2))  # (10, 2) positions; the first one clear of the object
        clear = np.hypot(candidates[:, 0] - spec.x, candidates[:, 1] - spec.y) > object_r + max(rx, ry)  # (10,)
        bx, by = candidates[int(np.argmax(clear))] if clear.any() else candidates[-1]
        box = ((bx - rx) * side, (by - ry) * side, (bx + rx) * side, (by + ry) * side)
        draw.ellipse(box, fill=tuple(int(c * 255) for c in colour))


def render(spec: ImageSpec, settings: RenderSettings) -> np.ndarray:
    """Draw one image: uint8 array (S, S, 3)."""
    size, side = settings.image_size, settings.image_size * settings.supersample
    background_rng, distractor_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(list(spec.seed)).spawn(3)
    )
    canvas = BACKGROUNDS[spec.background](side, background_rng)
    _draw_distractors(canvas, spec, distractor_rng)
    parts = _outline_parts(spec, side)
    canvas.paste(_texture(spec, parts, side, size), (0, 0), _fill_mask(parts, side))
    if settings.supersample > 1:
        canvas = canvas.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(canvas, dtype=np.float32)  # (S, S, 3)
    if settings.pixel_noise > 0:
        pixels = pixels + noise_rng.normal(0.0, settings.pixel_noise * 255.0, size=pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_batch(specs: Sequence[ImageSpec], settings: RenderSettings) -> np.ndarray:
    """Draw many images: uint8 array (N, S, S, 3)."""
    out = np.empty((len(specs), settings.image_size, settings.image_size, 3), dtype=np.uint8)
    for i, spec in enumerate(specs):
        out[i] = render(spec, settings)
    return out
