"""The shapes world's vocabulary as data: known factor values, their drawing constants, and the on-disk layout.

Every name a config may list lives here once, so validation, rendering and captions agree on the same tables.
"""

from __future__ import annotations

# Object colours (sRGB 0-255). Saturated and bright on purpose: backgrounds are muted (low saturation and value), so
# an object's colour never disappears into its background.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 185, 60),
    "cyan": (40, 215, 225),
    "blue": (45, 85, 235),
    "purple": (150, 60, 215),
    "pink": (250, 125, 195),
    "white": (245, 245, 245),
    "brown": (150, 90, 40),
}

# Object radius (distance from centre to the farthest vertex) as a fraction of the image side. Kept large enough
# that the shape outline still reads at 32 px.
SIZE_RADIUS: dict[str, float] = {
    "small": 0.16,
    "medium": 0.24,
    "large": 0.33,
}

# Object outlines (drawn by pipeline_lib.data.shapes).
KNOWN_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "diamond")

# Fill patterns: one flat colour, stripes, or a dot grid (darkened object colour on the object colour).
KNOWN_PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")

# Uncaptioned background kinds (the nuisances that make image-image similarity follow more than the object).
KNOWN_BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "blotches", "blocks")

# On-disk layout of artifacts/data (relative to the data stage's output folder).
PRETRAIN_DIR = "pretrain"
PRETRAIN_IMAGES = "pretrain/images.npy"
PRETRAIN_LABELS = "pretrain/labels.parquet"
FEWSHOT_ROOT = "fewshot/shapes"
FEWSHOT_IMAGE_DIR = "images"
FEWSHOT_SPLIT_FILE = "split_zhou_Shapes.json"
FEWSHOT_ATTRIBUTES = "attributes.parquet"  # extra per-image factors (not part of the CoOp format; loaders ignore it)
CZSL_ROOT = "czsl/shapes"
CZSL_SPLIT_DIR = "compositional-split-natural"
CZSL_METADATA = "metadata_compositional-split-natural.t7"
CZSL_IMAGE_DIR = "images"
RETRIEVAL_TEXTS = "retrieval/texts.parquet"
