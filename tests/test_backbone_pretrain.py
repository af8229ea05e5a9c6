"""Pretraining: schedule, batches, determinism, resume-equals-uninterrupted, and that it learns an easy concept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from backbone_fixtures import SMALL_TRAIN, make_corpus

from pipeline_lib.backbone.config import PretrainConfig
from pipeline_lib.backbone.pretrain import (
    BatchSampler,
    CachedTokenizer,
    Corpus,
    init_tiny_backbone,
    load_corpus,
    lr_at,
    pretrain,
    split_corpus,
)

TINY = "bf-tiny-vit-32"


def small_cfg(**kw) -> PretrainConfig:
    base = {**SMALL_TRAIN, "batch_size": 8, "lr": 1e-3}
    return PretrainConfig(**{**base, **kw})


def test_lr_schedule_warms_up_then_decays_to_floor() -> None:
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def test_cached_tokenizer_returns_the_tokenizers_rows() -> None:
    import open_clip

    tokenizer = open_clip.get_tokenizer(TINY)
    cached = CachedTokenizer(tokenizer)
    first = ["a red circle", "a small blue square", "a red circle"]
    second = ["a small blue square", "a striped green star", "a red circle"]
    assert torch.equal(cached(first), tokenizer(first))
    assert torch.equal(cached(second), tokenizer(second))
    assert len(cached.rows) == 3


def test_split_keeps_groups_whole_and_is_seeded() -> None:
    corpus = make_corpus()
    train, held = split_corpus(corpus, 0.25, seed=3)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(corpus.labels)
    group = corpus.labels["group"].to_numpy()
    for g in set(group[held]) - {-1}:
        assert set(np.flatnonzero(group == g)) <= set(held)
    again = split_corpus(corpus, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(held, again[1])


def test_batches_mix_whole_groups_and_singles() -> None:
    corpus = make_corpus()
    train, _ = split_corpus(corpus, 0.25, seed=0)
    sampler = BatchSampler(corpus, train, group_fraction=0.5, seed=0)
    batch = sampler.batch(step=5, size=12)
    assert len(batch) == 12 and len(set(batch.tolist())) == 12 and set(batch) <= set(train)
    group = corpus.labels["group"].to_numpy()
    grouped = batch[:6]
    assert all((group[grouped] == g).sum() == 3 for g in set(group[grouped]))  # two whole groups of 3
    assert np.array_equal(batch, sampler.batch(step=5, size=12))
    assert not np.array_equal(batch, sampler.batch(step=6, size=12))


def test_corpus_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images.npy"):
        load_corpus(tmp_path)
    with pytest.raises(ValueError, match="lack columns"):
        Corpus(images=np.zeros((2, 32, 32, 3), np.uint8), labels=pl.DataFrame({"shape": ["a", "b"]}))
    with pytest.raises(ValueError, match="uint8"):
        Corpus(images=np.zeros((2, 32, 32, 3), np.float32), labels=make_corpus().labels[:2])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resumed_run_ends_identical_to_uninterrupted(tmp_path: Path) -> None:
    corpus, cfg = make_corpus(), small_cfg()
    whole = init_tiny_backbone(TINY, cfg.seed)
    full = pretrain(whole.model, whole.tokenizer, corpus, cfg, tmp_path / "a")

    first = init_tiny_backbone(TINY, cfg.seed)
    part = pretrain(first.model, first.tokenizer, corpus, cfg, tmp_path / "b", stop_after=2)
    assert part.steps == 2 and (tmp_path / "b" / "pretrain_checkpoint.pt").is_file()
    second = init_tiny_backbone(TINY, cfg.seed)  # a new process would start from a fresh model
    resumed = pretrain(second.model, second.tokenizer, corpus, cfg, tmp_path / "b")
    assert resumed.resumed_from == 2 and resumed.steps_run == 2

    a, b = _state(whole.model), _state(second.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.rows == full.rows and resumed.zero_shot == full.zero_shot
    assert [r["step"] for r in full.rows] == [1, 2, 3, 4] and "zs_colour" in full.rows[1]

    init0, init1 = init_tiny_backbone(TINY, seed=0), init_tiny_backbone(TINY, seed=1)
    assert init0.fingerprint == init_tiny_backbone(TINY, seed=0).fingerprint != init1.fingerprint


def test_learns_colour_on_an_easy_corpus(tmp_path: Path) -> None:
    corpus = make_corpus(n_groups=10, n_single=40)
    cfg = small_cfg(steps=30, batch_size=16, warmup_steps=3, eval_every=0, checkpoint_every=0, lr=2e-3)
    backbone = init_tiny_backbone(TINY, cfg.seed)
    result = pretrain(backbone.model, backbone.tokenizer, corpus, cfg, tmp_path)
    assert result.rows[-1]["loss"] < result.rows[0]["loss"]
    assert result.zero_shot["colour"] >= 0.9, result.zero_shot
    assert result.chance["colour"] == 0.5
