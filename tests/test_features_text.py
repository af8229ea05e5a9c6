"""Text features: prompt building, per-prompt features and the class averages of spec 2.2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from model_fixtures import tiny_clip, tiny_tokenizer

from pipeline_lib.features.prompts import SELECT_TEMPLATES
from pipeline_lib.features.text import (
    class_average,
    class_prompts,
    class_text_features,
    default_templates,
    logit_scale,
    text_projection,
)


@pytest.fixture(scope="module")
def tiny() -> tuple[open_clip.CLIP, open_clip.tokenizer.SimpleTokenizer]:
    return tiny_clip(), tiny_tokenizer()


def test_class_average_matches_hand_computation() -> None:
    feats = np.array(
        [
            [[3.0, 4.0], [0.0, 2.0], [np.nan, np.nan]],  # class 0: two prompts, one padding row
            [[1.0, 0.0], [0.0, 1.0], [-2.0, 0.0]],
        ],
        dtype=np.float32,
    )
    normed, raw = class_average(feats, np.array([2, 3]))
    # class 0: n([3,4]) = [.6,.8], n([0,2]) = [0,1]; mean [.3,.9], norm sqrt(.9)
    np.testing.assert_allclose(normed[0], np.array([0.3, 0.9]) / np.sqrt(0.9), rtol=1e-6)
    np.testing.assert_allclose(raw[0], [1.5, 3.0])
    # class 1: unit vectors [1,0],[0,1],[-1,0]; mean [0,1/3] -> [0,1]; raw mean [-1/3, 1/3]
    np.testing.assert_allclose(normed[1], [0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(raw[1], [-1 / 3, 1 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="zero feature"):
        class_average(np.zeros((1, 1, 2), np.float32), np.array([1]))


def test_templates_and_cupl(tmp_path: Path) -> None:
    assert default_templates("Shapes") == ["a photo of a {}."]
    assert default_templates("OxfordPets") == ["a photo of a {}, a type of pet.", *SELECT_TEMPLATES]
    assert default_templates("ImageNet") == list(SELECT_TEMPLATES)
    with pytest.raises(ValueError, match="no default template"):
        default_templates("Nope")
    f = tmp_path / "cupl.json"
    f.write_text(json.dumps({"Red Circle": ["a round red thing.", "a red disc."], "blue square": ["a blue box."]}))
    prompts = class_prompts(["red_circle", "blue square"], ["a {}.", "art of {}."], f)
    assert prompts == [
        ["a red circle.", "art of red circle.", "a round red thing.", "a red disc."],
        ["a blue square.", "art of blue square.", "a blue box."],
    ]
    with pytest.raises(ValueError, match="missing from the CuPL file"):
        class_prompts(["green star"], ["a {}."], f)
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected"):
        class_prompts(["red circle"], ["a {}."], f)


def test_class_text_features_with_tiny_clip(tiny) -> None:
    model, tok = tiny
    prompts = [["a photo of a circle.", "a drawing of a circle.", "a circle."], ["a photo of a star."]]
    feats = class_text_features(model, tok, prompts, torch.device("cpu"), batch_size=2)
    assert feats.prompt_proj.shape == (2, 3, 128) and feats.prompt_eos.shape == (2, 3, 128)
    assert feats.prompt_count.tolist() == [3, 1]
    assert np.isnan(feats.prompt_proj[1, 1:]).all()
    with torch.no_grad():
        direct = model.encode_text(tok(prompts[0])).numpy()  # (3, D)
    np.testing.assert_allclose(feats.prompt_proj[0], direct, rtol=1e-4, atol=1e-5)
    # Projected = EOS @ W_txt for a CLIP text tower.
    w = text_projection(model)
    np.testing.assert_allclose(feats.prompt_eos[0] @ w, feats.prompt_proj[0], rtol=1e-4, atol=1e-4)
    unit = direct / np.linalg.norm(direct, axis=1, keepdims=True)
    expected = unit.mean(0) / np.linalg.norm(unit.mean(0))
    np.testing.assert_allclose(feats.class_proj[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats.class_proj_raw[0], direct.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats.class_eos_raw[1], feats.prompt_eos[1, 0], rtol=1e-6)
    assert np.allclose(np.linalg.norm(feats.class_eos, axis=1), 1.0, atol=1e-5)
    assert logit_scale(model) == pytest.approx(1 / 0.07, rel=1e-4)
