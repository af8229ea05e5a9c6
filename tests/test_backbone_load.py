"""Loading backbones: tiny registry, real architectures from local files, QuickGELU, fingerprints, clear errors.

Nothing here downloads: real architectures are built with random weights and saved to tmp as "local weights".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from pipeline_lib.backbone.load import (
    UnknownModelError,
    UnknownPretrainedError,
    create_backbone,
    load_published_backbone,
    model_fingerprint,
    resolve_pretrained,
    resolve_quick_gelu,
    save_published_backbone,
    state_dict_fingerprint,
)
from pipeline_lib.backbone.pretrain import images_to_tensor
from pipeline_lib.backbone.tiny import list_tiny_models, register_tiny_models, tiny_model_config

TINY = "bf-tiny-vit-32"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_backbone(TINY)


def test_tiny_registration_is_idempotent_and_real_clip() -> None:
    assert register_tiny_models() == register_tiny_models() == list_tiny_models()
    assert TINY in open_clip.list_models()
    assert open_clip.list_models().count(TINY) == 1
    with pytest.raises(KeyError, match="unknown tiny model"):
        tiny_model_config("bf-tiny-nope")


def test_tiny_geometry(tiny) -> None:
    model = tiny.model
    assert isinstance(model, open_clip.CLIP)
    assert tuple(model.text_projection.shape) == (128, 128)  # square, like ViT-B/16's 512x512
    assert model.visual.pool_type == "tok" and model.visual.grid_size == (8, 8)
    assert not model.visual.positional_embedding.requires_grad  # fixed sin-cos positions
    assert tiny.image_size == 32 and tiny.context_length == 16
    assert tiny.tokenize(["a photo of a red star"]).shape == (1, 16)
    with torch.inference_mode():
        feats = model.encode_image(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 128)


def test_preprocess_matches_array_normalisation(tiny) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    via_pil = tiny.preprocess(Image.fromarray(rgb))
    cfg = open_clip.get_model_preprocess_cfg(tiny.model)
    via_array = images_to_tensor(rgb[None], cfg["mean"], cfg["std"])[0]
    assert torch.allclose(via_pil, via_array, atol=1e-5)


def test_fingerprint_is_stable_and_sensitive(tiny) -> None:
    state = tiny.model.state_dict()
    assert state_dict_fingerprint(state) == tiny.fingerprint
    reordered = dict(reversed(list(state.items())))
    assert state_dict_fingerprint(reordered) == tiny.fingerprint
    changed = dict(state)
    changed["logit_scale"] = state["logit_scale"] + 1e-3
    assert state_dict_fingerprint(changed) != tiny.fingerprint


@pytest.mark.parametrize(
    ("name", "pretrained", "error", "needle"),
    [
        ("ViT-B-99", None, UnknownModelError, "ViT-B-32"),
        ("ViT-B-16", "no-such-tag", UnknownPretrainedError, "openai"),
        ("ViT-B-16", "/nonexistent/weights.pt", FileNotFoundError, "no such weights file"),
        (TINY, "openai", UnknownPretrainedError, "known tags: none"),
    ],
)
def test_bad_backbones_fail_before_any_download(name, pretrained, error, needle) -> None:
    with pytest.raises(error, match=needle):
        create_backbone(name, pretrained)


def test_quick_gelu_follows_the_tag() -> None:
    assert resolve_quick_gelu("ViT-B-16", "openai") is True
    assert resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert resolve_quick_gelu("ViT-B-16", None) is False
    assert resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", True) is True
    assert resolve_pretrained("ViT-B-16", "openai") == ("tag", "openai")


def test_real_architecture_from_local_file(tmp_path: Path) -> None:
    name = "ViT-S-32-alt"  # a standard open_clip ViT, small enough to build in a test
    torch.manual_seed(1)
    random_init = create_backbone(name, None, force_quick_gelu=True)
    assert isinstance(random_init.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)
    assert random_init.image_size == 224 and random_init.context_length == 77
    weights = tmp_path / "weights.pt"
    torch.save(random_init.model.state_dict(), weights)
    random_init.pretrained = str(weights)  # the same weights, now named by their file

    # spec-only publication: the weights load again from the file (through open_clip) and must match
    save_published_backbone(random_init, tmp_path / "pub", save_weights=False)
    spec = json.loads((tmp_path / "pub" / "backbone.json").read_text())
    assert spec["weights"] is None and spec["quick_gelu"] is True and spec["pretrained"] == str(weights)
    loaded = load_published_backbone(tmp_path / "pub")
    assert loaded.fingerprint == random_init.fingerprint
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)


def test_changed_local_weights_are_detected(tiny, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), weights)
    from_file = create_backbone(TINY, str(weights))
    assert from_file.fingerprint == tiny.fingerprint
    save_published_backbone(from_file, tmp_path / "pub", save_weights=False)
    state = tiny.model.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1.0
    torch.save(state, weights)
    with pytest.raises(ValueError, match="weights changed"):
        load_published_backbone(tmp_path / "pub")


def test_published_tiny_round_trip(tiny, tmp_path: Path) -> None:
    spec = save_published_backbone(tiny, tmp_path, save_weights=True)
    assert spec["weights"] == "model.pt" and spec["open_clip_config"]["vision_cfg"]["patch_size"] == 4
    again = load_published_backbone(tmp_path)
    assert again.fingerprint == tiny.fingerprint == model_fingerprint(again.model)
    assert not again.model.training
    (tmp_path / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_published_backbone(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the backbone stage"):
        load_published_backbone(tmp_path / "missing")


def test_loading_trained_weights_does_not_claim_random_init(tiny, tmp_path: Path, caplog) -> None:
    """open_clip warns "initialized randomly" while it builds the architecture; the trained weights load right after,
    so that warning is dropped and one INFO line says which weights were loaded."""
    save_published_backbone(tiny, tmp_path, save_weights=True)
    with caplog.at_level(logging.INFO):
        loaded = load_published_backbone(tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "initialized randomly" in m], messages
    assert [m for m in messages if m.startswith("loaded trained weights")] == [
        f"loaded trained weights {tmp_path / 'model.pt'} (fingerprint {loaded.fingerprint[:12]})"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_backbone(TINY)  # a truly random model still gets open_clip's warning
    assert any("initialized randomly" in r.getMessage() for r in caplog.records)
