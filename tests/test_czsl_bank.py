"""Dynamic Memory Bank: insertion, replacement, gating, text / train initialisation, streams, logits."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from pipeline_lib.czsl import bank as bk


def unit(i: int, d: int = 4) -> torch.Tensor:
    return torch.eye(d)[i]


def test_insert_into_free_slot_when_below_gate():
    state = bk.empty_bank(2, 2, 4)
    assert bk.update(state, unit(0), pred=1, h=0.3, gate=0.5) == "insert"
    assert state.filled[1].tolist() == [True, False] and state.entropy[1, 0] == pytest.approx(0.3)
    assert torch.equal(state.keys[1, 0], unit(0))
    assert bk.update(state, unit(1), pred=1, h=0.6, gate=0.5) == "gated"  # free slot, but above the gate
    assert state.filled[1].tolist() == [True, False]
    assert bk.update(state, unit(1), pred=1, h=0.49, gate=0.5) == "insert"
    assert state.filled[1].tolist() == [True, True]
    assert not state.filled[0].any()  # only the predicted composition changes


def test_full_composition_replaces_its_worst_entry_only_when_more_confident():
    state = bk.empty_bank(1, 2, 4)
    bk.update(state, unit(0), 0, 0.2, 1.0)
    bk.update(state, unit(1), 0, 0.7, 1.0)
    assert bk.update(state, unit(2), 0, 0.8, 1.0) == "kept"  # not better than the worst (0.7)
    assert bk.update(state, unit(2), 0, 0.7, 1.0) == "kept"  # ties keep the stored entry
    assert bk.update(state, unit(2), 0, 0.5, 1.0) == "replace"
    assert torch.equal(state.keys[0, 1], unit(2)) and state.entropy[0].tolist() == pytest.approx([0.2, 0.5])
    assert bk.update(state, unit(3), 0, 0.1, 0.05) == "replace"  # the gate only governs free slots (spec 5)
    assert torch.equal(state.keys[0, 1], unit(3))  # the worst (0.5) went, the best (0.2) stays


def test_text_slot_is_replaced_first():
    state = bk.fill_from_text(bk.empty_bank(2, 1, 4), torch.stack([unit(0), 2 * unit(1)]), torch.tensor([False, True]))
    assert state.filled.tolist() == [[False], [True]] and torch.allclose(state.keys[1, 0], unit(1))
    assert state.entropy[1, 0] == 1.0
    assert bk.update(state, unit(2), 1, 0.99, 1.0) == "replace"


def test_seen_init_picks_lowest_entropy_training_features():
    feats = torch.stack([unit(0), unit(1), unit(2), unit(3)])
    pair = torch.tensor([0, 0, 0, 1])
    ent = torch.tensor([0.5, 0.1, 0.3, 0.9])
    state = bk.fill_from_features(bk.empty_bank(3, 2, 4), feats, pair, ent)
    assert torch.equal(state.keys[0], torch.stack([unit(1), unit(2)]))
    assert state.entropy[0].tolist() == pytest.approx([0.1, 0.3])
    assert state.filled.tolist() == [[True, True], [True, False], [False, False]]


def test_normalised_entropy_over_candidates():
    probs = torch.tensor([[0.25, 0.25, 0.5], [0.9, 0.05, 0.05]])
    pred, h = bk.normalised_entropy(probs, torch.tensor([True, True, False]))
    assert pred.tolist() == [0, 0]  # the third pair is not a candidate
    assert h[0] == pytest.approx(1.0)
    p = torch.tensor([0.9, 0.05]) / 0.95
    assert h[1] == pytest.approx(float(-(p * p.log()).sum() / math.log(2)), rel=1e-5)


def test_stream_updates_before_reading_and_never_takes_labels():
    params = set(inspect.signature(bk.run_stream).parameters)
    assert not params & {"labels", "label", "y", "targets", "attr", "obj", "pair"}
    init = bk.empty_bank(3, 2, 4)
    feats = torch.stack([unit(0), unit(1), unit(0) + unit(1)])
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.4, 0.4, 0.2]])
    cand = torch.ones(3, dtype=torch.bool)
    trace = bk.run_stream(init, feats, probs, cand, np.array([2, 0, 1]), gate=1.0)
    assert trace.events == {"insert": 3, "replace": 0, "gated": 0, "kept": 0}
    assert not init.filled.any()  # the initial state is never modified (same start for val and test)
    # sample 2 went first and sees only itself (inserted under pair 0)
    assert trace.valid[2].sum() == 1 and trace.sims[2, 0, 0] == pytest.approx(1.0)
    # sample 1 went last: pair 0 holds samples 2 and 0, pair 1 holds itself
    assert trace.valid[1].tolist() == [[True, True], [True, False], [False, False]]
    static = bk.run_stream(init, feats, probs, cand, np.array([0, 1, 2]), dynamic=False)
    assert not static.valid.any() and sum(static.events.values()) == 0


def test_stream_order_is_seeded_and_changes_results():
    assert np.array_equal(bk.stream_order(10, 3), bk.stream_order(10, 3))
    assert not np.array_equal(bk.stream_order(10, 3), bk.stream_order(10, 4))
    assert bk.order_digest(bk.stream_order(10, 3)) == bk.order_digest(bk.stream_order(10, 3))
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 4, generator=g)
    probs = torch.softmax(3 * torch.randn(12, 2, generator=g), dim=-1)
    init, cand = bk.empty_bank(2, 1, 4), torch.ones(2, dtype=torch.bool)
    a = bk.run_stream(init, feats, probs, cand, bk.stream_order(12, 0))
    b = bk.run_stream(init, feats, probs, cand, bk.stream_order(12, 0))
    c = bk.run_stream(init, feats, probs, cand, bk.stream_order(12, 1))
    assert torch.equal(a.sims, b.sims) and not torch.equal(a.sims, c.sims)
    with pytest.raises(ValueError, match="permutation"):
        bk.run_stream(init, feats, probs, cand, np.zeros(12, dtype=int))


def test_bank_logits_formula():
    trace = bk.StreamTrace(sims=torch.tensor([[[1.0, 0.5], [0.2, 0.9]]]),
                           valid=torch.tensor([[[True, True], [True, False]]]), order=np.array([0]))
    got = bk.bank_logits(trace, alpha=2.0, beta=5.0)
    expected = torch.tensor([[2.0 * (1.0 + math.exp(-2.5)), 2.0 * math.exp(-4.0)]])
    assert torch.allclose(got, expected)
    p = bk.bank_probs(got, 0.5)
    assert torch.allclose(p.sum(-1), torch.ones(1)) and (p > 0).all()


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        bk.empty_bank(0, 3, 4)
    with pytest.raises(ValueError, match="at least 2"):
        bk.normalised_entropy(torch.ones(1, 3), torch.tensor([True, False, False]))
