"""Tower hooks reproduce the native open_clip encoders from native inputs, and pass gradients only to the inputs."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from model_fixtures import TINY_CFG, standard_clip, tiny_clip
from open_clip import get_model_config
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.tokenizer import SimpleTokenizer
from torch.testing import assert_close

from pipeline_lib.backbone.hooks import (
    UnsupportedBackbone,
    image_features_from_patch_embeddings,
    image_token_features,
    placeholder_positions,
    pooled_length,
    text_eos_features,
    text_features_at_positions,
    text_features_from_embeddings,
    text_features_from_token_embeddings,
)

PLACEHOLDER = 1950  # CLIP BPE piece for " £ "
IMAGE_MODELS = ["bf-tiny-vit-32", "tiny-tok", "ViT-B-32", "ViT-B-16"]
# ViT-B-16 and ViT-B-32 share one text tower config (width 512, 12 layers, context 77): testing it once is enough.
TEXT_MODELS = ["bf-tiny-vit-32", "tiny-tok", "ViT-B-32"]
TOL = {"rtol": 1e-4, "atol": 1e-5}


@functools.cache
def _model(name: str) -> CLIP:
    if name == "bf-tiny-vit-32":  # the team's tiny ViT: average pooling, sin-cos positions
        return tiny_clip()
    if name == "tiny-tok":  # the same with CLS pooling and learned positions, like the standard CLIP ViTs
        return tiny_clip(pool_type="tok", pos_embed_type="learnable")
    return standard_clip(name)


def _ids(model: CLIP, texts: list[str]) -> torch.Tensor:
    return SimpleTokenizer(context_length=model.context_length)(texts)  # (B, L)


def _images(model: CLIP, n: int) -> torch.Tensor:
    h, w = model.visual.image_size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))  # (B, 3, H, W)


def _patches(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    return model.visual.conv1(images).flatten(2).transpose(1, 2)  # (B, N, W)


@pytest.fixture(params=TEXT_MODELS)
def text_model(request: pytest.FixtureRequest) -> CLIP:
    return _model(request.param)


@pytest.fixture(params=IMAGE_MODELS)
def image_model(request: pytest.FixtureRequest) -> CLIP:
    return _model(request.param)


@torch.no_grad()
def test_token_hook_with_word_embeddings_equals_encode_text(text_model: CLIP) -> None:
    # Putting the embedding of a real word into the placeholder slot must give the features of the text with that word.
    ids = _ids(text_model, ["a photo of  £  £ "] * 2)
    words = _ids(text_model, ["a photo of red dog", "a photo of blue cat"])
    assert (ids == PLACEHOLDER).sum().item() == 4 and (words[:, 6] == ids[:, 6]).all()  # same EOT slot
    pseudo = text_model.token_embedding(words[:, 4:6])  # (2, R=2, W)
    got = text_features_from_token_embeddings(text_model, ids, pseudo, PLACEHOLDER)
    want = text_model.encode_text(words)
    assert_close(got, want, **TOL)
    assert_close(text_features_from_token_embeddings(text_model, words), want, **TOL)


@torch.no_grad()
def test_full_embeddings_equal_encode_text_also_for_a_shorter_context(text_model: CLIP) -> None:
    ids = _ids(text_model, ["a photo of a dog", "a red square"])
    emb = text_model.token_embedding(ids)  # (B, L, W)
    want = text_model.encode_text(ids)
    assert_close(text_features_from_embeddings(text_model, emb, ids), want, **TOL)
    short = 8  # positions after EOS cannot change the EOS token under the causal mask
    assert int(ids.argmax(dim=1).max()) < short < text_model.context_length
    assert_close(text_features_from_embeddings(text_model, emb[:, :short], ids[:, :short]), want, **TOL)


def test_pseudo_token_prompts_stop_at_their_eos_with_the_full_forwards_features_and_gradients(
    text_model: CLIP,
) -> None:
    # in float64, so that what is left of a difference is rounding, not a position the short forward misses
    model = copy.deepcopy(text_model).double()
    ids = _ids(model, ["a photo of  £ ", "a large photo of  £ "])
    length = pooled_length(model, ids)
    assert length == int(ids.argmax(dim=1).max()) + 1 < model.context_length
    positions = placeholder_positions(ids, PLACEHOLDER, 1)
    pseudo = (0.02 * torch.randn(2, 1, model.transformer.width, dtype=torch.float64)).requires_grad_()
    full = text_features_at_positions(model, ids, positions, pseudo)  # native full-length forward
    (grad_full,) = torch.autograd.grad(full.square().sum(), pseudo)
    short = text_features_at_positions(model, ids, positions, pseudo, length)
    (grad_short,) = torch.autograd.grad(short.square().sum(), pseudo)
    assert_close(short, full, rtol=1e-10, atol=1e-10)
    assert_close(grad_short, grad_full, rtol=1e-10, atol=1e-10)


def test_towers_without_a_causal_mask_or_eos_pooling_keep_every_position() -> None:
    ids = _ids(_model("bf-tiny-vit-32"), ["a photo of  £ "])
    assert pooled_length(tiny_clip(), ids) == int(ids.argmax()) + 1
    unmasked = CLIP(**{**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"], "no_causal_mask": True}})
    assert pooled_length(unmasked, ids) is None
    last = CLIP(**{**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"], "pool_type": "last"}})
    assert pooled_length(last, ids) is None


@torch.no_grad()
def test_eos_features_project_to_encode_text(text_model: CLIP) -> None:
    ids = _ids(text_model, ["a photo of a cat", "a blue circle"])
    eos = text_eos_features(text_model, ids)
    assert eos.shape == (2, text_model.transformer.width)
    assert_close(eos @ text_model.text_projection, text_model.encode_text(ids), **TOL)


@torch.no_grad()
def test_patch_hook_equals_encode_image(image_model: CLIP) -> None:
    images = _images(image_model, 1 if image_model.visual.image_size[0] > 64 else 2)
    got = image_features_from_patch_embeddings(image_model, _patches(image_model, images))
    assert_close(got, image_model.encode_image(images), **TOL)


@torch.no_grad()
def test_token_features_pool_to_encode_image(image_model: CLIP) -> None:
    images = _images(image_model, 1 if image_model.visual.image_size[0] > 64 else 2)
    tokens = image_token_features(image_model, images)
    gh, gw = image_model.visual.grid_size
    assert tokens.shape == (images.shape[0], 1 + gh * gw, image_model.visual.output_dim)
    pooled = tokens[:, 1:].mean(dim=1) if image_model.visual.pool_type == "avg" else tokens[:, 0]
    assert_close(pooled, image_model.encode_image(images), **TOL)


def test_gradients_reach_pseudo_tokens_and_patches_but_not_the_model() -> None:
    model = _model("bf-tiny-vit-32")
    ids = _ids(model, ["a photo of  £ "] * 3)
    pseudo = (0.02 * torch.randn(3, 1, model.transformer.width)).requires_grad_()
    text = text_features_from_token_embeddings(model, ids, pseudo, PLACEHOLDER)
    patches = (0.02 * torch.randn(3, 64, model.visual.conv1.out_channels)).requires_grad_()
    image = image_features_from_patch_embeddings(model, patches)
    (text.sum() + image.sum()).backward()
    assert pseudo.grad is not None and bool((pseudo.grad.abs().sum(dim=(1, 2)) > 0).all())
    assert patches.grad is not None and bool((patches.grad.abs().sum(dim=(1, 2)) > 0).all())
    assert all(p.grad is None for p in model.parameters())


@torch.no_grad()
def test_pseudo_tokens_change_only_their_own_rows_and_broadcast() -> None:
    model = _model("bf-tiny-vit-32")
    ids = _ids(model, ["a photo of  £ "] * 2)
    pseudo = 0.02 * torch.randn(1, 1, model.transformer.width, generator=torch.Generator().manual_seed(3))
    out = text_features_from_token_embeddings(model, ids, pseudo, PLACEHOLDER)
    assert_close(out[0], out[1])  # the single pseudo-token is used for every row
    assert not torch.allclose(out[0], model.encode_text(ids)[0], atol=1e-3)  # the placeholder really was replaced


def test_placeholder_count_is_checked() -> None:
    model = _model("bf-tiny-vit-32")
    ids = _ids(model, ["a photo of  £ ", "a photo of £."])  # "£." is a different BPE piece: no placeholder
    with pytest.raises(ValueError, match="row 1 .* 0 placeholder tokens"):
        text_features_from_token_embeddings(model, ids, torch.zeros(2, 1, model.transformer.width), PLACEHOLDER)


def test_unsupported_towers_raise_with_the_model_name() -> None:
    resnet = CLIP(
        embed_dim=64,
        vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
        text_cfg=TINY_CFG["text_cfg"],
    ).eval()
    with pytest.raises(UnsupportedBackbone, match="CLIP has ModifiedResNet"):
        image_features_from_patch_embeddings(resnet, torch.zeros(1, 4, 16))
    custom = CustomTextCLIP(
        embed_dim=64, vision_cfg=TINY_CFG["vision_cfg"], text_cfg=TINY_CFG["text_cfg"]
    ).eval()
    with pytest.raises(UnsupportedBackbone, match="CustomTextCLIP"):
        text_eos_features(custom, torch.zeros(1, 16, dtype=torch.long))


def test_vit_b16_shares_the_tested_vit_b32_text_tower() -> None:
    # why TEXT_MODELS covers ViT-B-16's text tower through ViT-B-32
    assert get_model_config("ViT-B-16")["text_cfg"] == get_model_config("ViT-B-32")["text_cfg"]
