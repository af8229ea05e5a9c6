"""Tiny open_clip architectures for the shapes world, registered with open_clip's own model registry.

They are ordinary `open_clip.CLIP` configs, so `open_clip.create_model(name)` and `open_clip.get_tokenizer(name)` build
them exactly as they build ViT-B/16, and every tower hook written for real backbones runs on them unchanged.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import open_clip

logger = logging.getLogger(__name__)

#: Prefix shared by every tiny model name (BackboneConfig.is_tiny relies on it).
TINY_PREFIX = "bf-tiny-"

_TINY_VIT_32: dict[str, Any] = {
    # Joint space of 128 dims: small, yet wide enough for 6 shapes x 8 colours x 3 patterns x 2 sizes.
    "embed_dim": 128,
    "vision_cfg": {
        # Shapes are drawn directly at 32 px; at 64 px a ViT of this size did not learn shape in budget.
        "image_size": 32,
        # 4 px patches give an 8x8 grid: 64 patch tokens that OVI and sparse alignment act on.
        "patch_size": 4,
        "width": 96,
        "layers": 3,
        # 3 heads of 32.
        "head_width": 32,
        "mlp_ratio": 4.0,
        # Fixed 2-D sin-cos positions: nothing to learn, which helps a model trained for minutes.
        "pos_embed_type": "sin_cos_2d",
        # A class token, as real open_clip ViTs pool: token 0 is not the patch mean, so sparse alignment's max over
        # [token 0, patches] can add patch information (benchmarks/pooling.py: held-out shape 0.60 / 0.65 on 2 seeds).
        "pool_type": "tok",
    },
    "text_cfg": {
        # Captions are at most ~12 BPE tokens; 16 leaves room for soft prompts and pseudo-tokens.
        "context_length": 16,
        # The standard CLIP BPE vocabulary, so open_clip's SimpleTokenizer is used as for real CLIPs.
        "vocab_size": 49408,
        # Width equal to embed_dim: a square 128x128 text projection, the geometry of ViT-B/16 (512x512).
        "width": 128,
        "heads": 4,
        "layers": 3,
    },
}

#: Every tiny architecture, by open_clip model name (one entry per variant; add variants here).
TINY_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    f"{TINY_PREFIX}vit-32": _TINY_VIT_32,
}

_registry_dir: Path | None = None


def list_tiny_models() -> list[str]:
    """Names of the tiny architectures this package defines (registered or not)."""
    return sorted(TINY_MODEL_CONFIGS)


def tiny_model_config(name: str) -> dict[str, Any]:
    """A deep copy of one tiny architecture's open_clip config."""
    if name not in TINY_MODEL_CONFIGS:
        raise KeyError(f"unknown tiny model {name!r}; expected one of {list_tiny_models()}")
    return copy.deepcopy(TINY_MODEL_CONFIGS[name])


def register_tiny_models() -> list[str]:
    """Make every tiny architecture known to open_clip; safe to call any number of times.

    open_clip's public registry reads JSON files (the file stem is the model name), so the configs are written once
    per process into a private folder that is removed at exit.
    """
    global _registry_dir
    missing = [name for name in TINY_MODEL_CONFIGS if name not in open_clip.list_models()]
    if not missing:
        return list_tiny_models()
    if _registry_dir is None:
        _registry_dir = Path(tempfile.mkdtemp(prefix="bridgeflow-open-clip-configs-"))
        atexit.register(shutil.rmtree, _registry_dir, True)
    for name in missing:
        (_registry_dir / f"{name}.json").write_text(json.dumps(TINY_MODEL_CONFIGS[name], indent=2))
        open_clip.add_model_config(_registry_dir / f"{name}.json")
    logger.debug("registered tiny open_clip models %s", missing)
    return list_tiny_models()
