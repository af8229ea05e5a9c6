"""OTI / OVI optimisation on a tiny random CLIP: placeholder handling, expansion, snapshots, independence, frozen
model."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import tiny_clip, tiny_tokenizer
from torch.testing import assert_close

from pipeline_lib.inversion.config import InversionConfig, OtiConfig, OviConfig
from pipeline_lib.inversion.optimise import init_params, invert
from pipeline_lib.inversion.oti import oti_encoder, oti_features, placeholder_token_id, prompt_ids, run_oti
from pipeline_lib.inversion.ovi import expansion_index, ovi_features, run_ovi

MODEL = tiny_clip()
TOKENIZER = tiny_tokenizer()


def _image_targets(n: int) -> torch.Tensor:
    with torch.no_grad():
        return MODEL.encode_image(torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5)))  # (n, D)


def _text_targets(n: int) -> torch.Tensor:
    words = ["a red circle", "a blue star", "a green ring", "a photo of a square"][:n]
    with torch.no_grad():
        return MODEL.encode_text(TOKENIZER(words))  # (n, D)


def test_expansion_index_fills_contiguous_runs() -> None:
    assert expansion_index(2, 49).bincount().tolist() == [25, 24]
    assert expansion_index(4, 196).bincount().tolist() == [49] * 4
    assert expansion_index(4, 256).bincount().tolist() == [64] * 4
    assert expansion_index(1, 64).eq(0).all()
    assert expansion_index(3, 7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="num_patches=65"):
        expansion_index(65, 64)


def test_prompt_has_r_placeholders_at_the_word_slot() -> None:
    assert placeholder_token_id(TOKENIZER, "£") == 1950
    ids, ph = prompt_ids(TOKENIZER, OtiConfig(num_tokens=2), 3)
    assert ids.shape == (3, 16)
    assert (ids[:, 4:6] == ph).all() and (ids == ph).sum(dim=1).eq(2).all()
    assert (ids.argmax(dim=1) == 6).all()  # EOT right after the R placeholders
    with pytest.raises(ValueError, match="pieces"):
        placeholder_token_id(TOKENIZER, "£.")


def test_oti_fits_targets_and_snapshots_equal_shorter_runs() -> None:
    targets = _image_targets(3)
    cfg = OtiConfig(steps=6, snapshot_steps=(0, 3, 6))
    long = run_oti(MODEL, TOKENIZER, targets, cfg, seed=7)
    assert long.params.shape == (3, 1, 128) and long.snapshots.shape == (3, 3, 128) and long.losses.shape == (3, 6)
    assert (long.losses[:, -1] < long.losses[:, 0]).all()
    assert_close(long.snapshots[:, 2], long.features)
    # the features stored for step 3 are those of a run stopped after 3 steps (last iterate, same seed)
    short = run_oti(MODEL, TOKENIZER, targets, OtiConfig(steps=3, snapshot_steps=()), seed=7)
    assert_close(long.snapshots[:, 1], short.features)
    # features can be recomputed from the saved tokens alone
    assert_close(oti_features(MODEL, TOKENIZER, long.params, cfg), long.features, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in MODEL.parameters())


def test_samples_are_optimised_independently() -> None:
    targets = _image_targets(4)
    ids, ph = prompt_ids(TOKENIZER, OtiConfig(), 4)
    init = init_params(4, (1, 128), 0.02, seed=1)
    kwargs = {"steps": 4, "lr": 0.02, "weight_decay": 0.01}
    batch = invert(oti_encoder(MODEL, ids, ph, 1), targets, init, **kwargs)
    alone = invert(oti_encoder(MODEL, ids[2:3], ph, 1), targets[2:3], init[2:3], **kwargs)
    # only Adam's eps couples the rows (the batch-mean loss scales each row's gradient by 1/B)
    assert_close(batch.params[2:3], alone.params, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("num_patches", [1, 3])
def test_ovi_fits_text_targets(num_patches: int) -> None:
    targets = _text_targets(2)
    cfg = OviConfig(steps=5, snapshot_steps=(1, 5), num_patches=num_patches)
    out = run_ovi(MODEL, targets, cfg, seed=3)
    assert out.params.shape == (2, num_patches, 96) and out.snapshots.shape == (2, 2, 128)
    assert (out.losses[:, -1] < out.losses[:, 0]).all()
    assert_close(ovi_features(MODEL, out.params, cfg), out.features, rtol=1e-5, atol=1e-6)


def test_config_defaults_follow_the_reference() -> None:
    cfg = InversionConfig()
    assert (cfg.oti.steps, cfg.ovi.steps, cfg.oti.lr, cfg.oti.weight_decay, cfg.oti.init_std) == (
        150, 1000, 0.02, 0.01, 0.02)
    assert (cfg.oti.num_tokens, cfg.ovi.num_patches, cfg.oti.batch_size, cfg.oti.template) == (
        1, 1, 64, "a photo of {}")
    assert OtiConfig(steps=20).recorded_steps == (1, 10, 20)
    with pytest.raises(ValueError, match="strictly increasing"):
        OtiConfig(snapshot_steps=(10, 1))
    with pytest.raises(ValueError, match="plot_steps"):
        InversionConfig(plot_steps=(7,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_fits_like_fp32() -> None:
    model = tiny_clip().cuda()
    targets = _image_targets(4).cuda()
    cfg = OtiConfig(steps=20, snapshot_steps=())
    amp = run_oti(model, TOKENIZER, targets, cfg, seed=0, amp=True)
    fp32 = run_oti(model, TOKENIZER, targets, cfg, seed=0, amp=False)
    assert amp.losses[:, -1].mean() < amp.losses[:, 0].mean()
    assert abs(float(amp.losses[:, -1].mean() - fp32.losses[:, -1].mean())) < 0.05
