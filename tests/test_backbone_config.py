"""BackboneConfig: defaults of the embedded pipeline and errors that name the bad key and value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline_lib.backbone.config import DEFAULT_TINY_MODEL, BackboneConfig, DiagnoseConfig, PretrainConfig
from pipeline_lib.backbone.tiny import list_tiny_models


def test_defaults_train_a_registered_tiny_model() -> None:
    cfg = BackboneConfig()
    assert cfg.is_tiny and cfg.trains_here and cfg.local_weights() is None
    assert cfg.model == DEFAULT_TINY_MODEL in list_tiny_models()  # the default can be built without downloads


def test_real_backbone_or_given_weights_do_not_train() -> None:
    assert not BackboneConfig(model="ViT-B-16", pretrained="openai").trains_here
    cfg = BackboneConfig(pretrained="/weights/tiny.pt")
    assert cfg.is_tiny and not cfg.trains_here
    assert str(cfg.local_weights()) == "/weights/tiny.pt"
    assert BackboneConfig(model="ViT-B-16", pretrained="openai").local_weights() is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"train": {"steps": 10, "warmup_steps": 10}}, "warmup_steps=10"),
        ({"model": "  "}, "backbone.model is empty"),
        ({"pretrained": ""}, "empty string"),
        ({"train": {"lr": 0}}, "greater than 0"),
        ({"train": {"batch": 4}}, "Extra inputs"),
        ({"force_quick_gelu": "sometimes"}, "force_quick_gelu"),
        ({"diagnose": {"shots": [0, 4]}}, "shots=[0, 4]"),
    ],
)
def test_bad_values_are_rejected_with_their_name(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        BackboneConfig(**kwargs)
    assert needle in str(err.value)


def test_sections_are_frozen_and_shots_sorted() -> None:
    cfg = PretrainConfig()
    with pytest.raises(ValidationError):
        cfg.steps = 3  # type: ignore[misc]
    assert DiagnoseConfig(shots=[16, 1, 4, 4]).shots == [1, 4, 16]
