"""open_clip backbones: tiny shapes-world CLIPs (configs, pretraining) and real architectures (tags, local weights).

Modules: config (params section), tiny (architectures registered with open_clip), load (Backbone, loaders,
fingerprints), pretrain (contrastive training), stage (stage entry points), hooks (tower hooks).
Importing this package stays light (no torch) so params validation is fast; the names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Backbone": "pipeline_lib.backbone.load",
    "create_backbone": "pipeline_lib.backbone.load",
    "load_published_backbone": "pipeline_lib.backbone.load",
    "list_tiny_models": "pipeline_lib.backbone.tiny",
    "register_tiny_models": "pipeline_lib.backbone.tiny",
}

__all__ = ["Backbone", "create_backbone", "list_tiny_models", "load_published_backbone", "register_tiny_models"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline_lib.backbone' has no attribute {name!r}")
