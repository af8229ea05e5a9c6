"""LoRA on the vision encoder: zero-init equivalence, trainable parameters, gradient flow."""

from __future__ import annotations

import copy

import pytest
import torch
from model_fixtures import tiny_clip

from pipeline_lib.backbone.hooks import image_token_features
from pipeline_lib.czsl.lora import LoRAMultiheadAttention, apply_lora, lora_parameters
from pipeline_lib.czsl.train import encoder_tokens


def test_lora_starts_equal_to_the_original_model():
    clip = tiny_clip()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = image_token_features(clip, images)
    pooled_before = clip.encode_image(images)
    adapted = copy.deepcopy(clip)
    params = apply_lora(adapted.visual, rank=4, alpha=8.0, dropout=0.0, targets=["q", "k", "v", "o"])
    assert len(params) == 3 * 4 * 2  # 3 blocks x 4 targets x (A, B)
    assert sum(isinstance(m, LoRAMultiheadAttention) for m in adapted.visual.modules()) == 3
    assert torch.allclose(image_token_features(adapted, images), before, atol=1e-5)
    assert torch.allclose(adapted.encode_image(images), pooled_before, atol=1e-5)


def test_lora_matches_mha_with_nonzero_update_merged():
    """With B != 0 the wrapper equals an MHA whose q/k/v/o weights have the low-rank update merged in."""
    torch.manual_seed(0)
    base = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    merged = copy.deepcopy(base)
    lora = LoRAMultiheadAttention(base, rank=2, alpha=4.0, dropout=0.0, targets=["q", "v", "o"]).eval()
    with torch.no_grad():
        for d in lora.deltas.values():
            d.B.normal_()
        w = merged.in_proj_weight
        for i, t in enumerate(("q", "k", "v")):
            if t in lora.deltas:
                d = lora.deltas[t]
                w[i * 16 : (i + 1) * 16] += d.scale * d.B @ d.A
        d = lora.deltas["o"]
        merged.out_proj.weight += d.scale * d.B @ d.A
    x = torch.randn(3, 5, 16)
    mask = torch.triu(torch.full((5, 5), float("-inf")), 1)
    assert torch.allclose(lora(x, x, x, need_weights=False, attn_mask=mask)[0],
                          merged(x, x, x, need_weights=False, attn_mask=mask)[0], atol=1e-5)


def test_only_lora_weights_train_and_receive_gradients():
    clip = tiny_clip()
    params = apply_lora(clip.visual, rank=2, alpha=2.0, dropout=0.0, targets=["q", "v"])
    trainable = [p for p in clip.visual.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params} == {id(p) for p in lora_parameters(clip.visual)}
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = encoder_tokens(clip, images)
    tokens.pow(2).sum().backward()
    b_grads = [m.B.grad for m in clip.visual.modules() if hasattr(m, "B")]
    assert all(g is not None and g.abs().sum() > 0 for g in b_grads)  # B gets gradient first (A's is 0 while B = 0)
    opt = torch.optim.SGD(params, lr=1e-1)
    before = tokens.detach().clone()
    opt.step()
    with torch.no_grad():
        after = encoder_tokens(clip, images)
    assert after.shape == before.shape and not torch.allclose(after, before, atol=1e-4)


def test_encoder_tokens_first_token_is_the_global_embedding():
    clip = tiny_clip()
    images = torch.randn(2, 3, 32, 32)
    tokens = encoder_tokens(clip, images)
    assert tokens.shape == (2, 1 + 64, 128)
    assert torch.allclose(tokens[:, 0], clip.encode_image(images), atol=1e-5)


def test_bad_targets_are_rejected():
    with pytest.raises(ValueError, match="lora targets"):
        apply_lora(tiny_clip().visual, rank=2, alpha=2.0, dropout=0.0, targets=["x"])
