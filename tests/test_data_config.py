"""DataConfig validation: bad values fail early with messages naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
from conftest import REPO
from pydantic import ValidationError

from pipeline_lib.data.config import DataConfig
from pipeline_lib.engine.config import load_config


def test_code_defaults_are_the_shipped_world() -> None:
    """A params.yaml without a `data` section generates the same world as the shipped one."""
    assert DataConfig() == load_config(REPO).data


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"image_size": 8}, "greater than or equal to 16"),
        ({"shapes": ()}, "data.shapes is empty"),
        ({"shapes": ("circle", "circle", "star")}, "repeats ['circle']"),
        ({"shapes": ("circle", "blob")}, "unknown values ['blob']"),
        ({"colours": ("red", "mauve")}, "data.colours"),
        ({"patterns": ("solid", "plaid")}, "data.patterns"),
        ({"sizes": ("huge",)}, "data.sizes"),
        ({"backgrounds": ("flat", "sky")}, "data.backgrounds"),
        ({"shapes": ("circle",)}, "at least 2 shapes"),
        ({"czsl_val_unseen_pairs": 40, "czsl_test_unseen_pairs": 40}, "at most 74 pairs can be unseen"),
        ({"czsl_val_seen_pairs": 99}, "czsl_val_seen_pairs=99 exceeds"),
        ({"retrieval_meanings": 10_000}, "retrieval_meanings=10000 exceeds the 288"),
        ({"retrieval_gallery_per_meaning": 500}, "distinct paraphrases"),
        ({"position_jitter": 0.7}, "less than or equal to 0.5"),
        ({"colour": ("red",)}, "Extra inputs are not permitted"),
        ({"czsl_patterns": ("plaid",)}, "data.czsl_patterns"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        DataConfig(**overrides)
    assert fragment in str(info.value)


def test_config_is_frozen_and_lists_become_tuples() -> None:
    cfg = DataConfig(shapes=["star", "ring", "circle", "cross", "square"])
    assert cfg.shapes == ("star", "ring", "circle", "cross", "square")
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]
