"""Tiny shapes-world configs and a once-per-module written world for the data tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import stage_context

from pipeline_lib.data.config import DataConfig
from pipeline_lib.engine.config import Config, RuntimeConfig
from pipeline_lib.engine.context import StageContext


def tiny_data_config(**overrides: Any) -> DataConfig:
    """A world small enough to write in about a second: 3 shapes x 4 colours (CZSL: 4 x "solid"), a few images."""
    values: dict[str, Any] = {
        "shapes": ("circle", "square", "star"),
        "colours": ("red", "green", "blue", "yellow"),
        "pretrain_images": 20,
        "contrast_fraction": 0.5,
        "fewshot_train_per_class": 3,
        "fewshot_val_per_class": 2,
        "fewshot_test_per_class": 3,
        "czsl_patterns": ("solid",),
        "czsl_val_unseen_pairs": 2,
        "czsl_test_unseen_pairs": 2,
        "czsl_val_seen_pairs": 2,
        "czsl_test_seen_pairs": 2,
        "czsl_train_per_pair": 2,
        "czsl_val_per_pair": 1,
        "czsl_test_per_pair": 2,
        "czsl_na_images": 2,
        "retrieval_meanings": 6,
    }
    values.update(overrides)
    return DataConfig(**values)


def data_stage_context(cfg: DataConfig, work: Path) -> StageContext:
    """A real StageContext around a data config (one rendering process), writing into `work`."""
    config = Config(data=cfg, runtime=RuntimeConfig(num_workers=1, progress=False))
    return stage_context(work, "data", config, work)
