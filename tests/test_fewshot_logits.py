"""Similarity maps, KL weights, the blend, and the search's vectorised / pruned evaluation (SeMoBridge spec 4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.config import PARAM_NAMES, BlendParams, SearchConfig
from pipeline_lib.fewshot.logits import (
    BlendEvaluator,
    SimilarityMaps,
    accuracy,
    batched_accuracy,
    blend_logits,
    kl_bits,
    similarity_maps,
)
from pipeline_lib.fewshot.search import search_blend, searched_names


def _blend(row: torch.Tensor) -> BlendParams:
    """One (7,) parameter row as BlendParams (PARAM_NAMES order)."""
    return BlendParams(**dict(zip(PARAM_NAMES, row.tolist(), strict=True)))


def test_similarity_maps_hand_case():
    f = torch.tensor([[3.0, 4.0]])  # q = (0.6, 0.8)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    proto = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    p_hat = F.normalize(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), dim=-1)
    pinv = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swaps: bridged query = n(f W+ W) with W = I -> (0.8, 0.6)
    m = similarity_maps(f, text, proto, p_hat, pinv, torch.eye(2))
    assert torch.allclose(m.s1, torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(m.s2, torch.tensor([[1.4, -0.2]]) / math.sqrt(2))
    assert torch.allclose(m.s3, torch.tensor([[0.6, 0.8]]))  # q^ = (0.8, 0.6) against protos (0,1), (1,0)
    assert torch.allclose(m.s4, torch.tensor([[0.8, 0.6]]))


def test_kl_bits_hand_case():
    proto = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = math.e / (math.e + 1.0)  # softmax of raw cosines (1, 0), no x100
    expect = math.log2((1 + 1e-6) / (p + 1e-6))
    assert torch.allclose(kl_bits(proto, text), torch.tensor([expect, expect]), atol=1e-6)


def test_blend_formula_hand_case():
    m = SimilarityMaps(s1=torch.tensor([[0.5, 0.2]]), s2=torch.tensor([[0.1, 0.3]]), s3=torch.tensor([[0.0, 1.0]]),
                       s4=torch.zeros(1, 2))
    kl = torch.tensor([1.0, 2.0])
    p = BlendParams(sigma=0.5, alpha=2.0, beta=3.0, gamma=4.0, lambda1=0.1, lambda2=0.2, lambda3=0.3)
    out = blend_logits(m, kl, p, "all")
    def one(c, s1, s2, s3):
        w = math.exp(0.5 * kl[c].item())
        return 0.1 * math.exp(-2 * (1 - s1)) + 0.2 * w * math.exp(-3 * (1 - s2)) + 0.3 * w * math.exp(-4 * (1 - s3))
    expect = torch.tensor([[one(0, 0.5, 0.1, 0.0), one(1, 0.2, 0.3, 1.0)]])
    assert torch.allclose(out, expect, rtol=1e-6)
    # subsets switch terms off; lambdas are independent (no normalisation)
    z3 = blend_logits(m, kl, p, "z3")
    assert torch.allclose(z3, torch.tensor([[0.3 * math.exp(0.5) * math.exp(-4), 0.3 * math.exp(1.0)]]), rtol=1e-6)
    assert torch.allclose(blend_logits(m, kl, p, "z1"), 0.1 * torch.exp(-2 * (1 - m.s1)))


def _maps(n=300, c=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, generator=g) * 0.1
    s1 = base + 0.05 * torch.randn(n, c, generator=g)
    s2 = base + 0.05 * torch.randn(n, c, generator=g)
    s3 = base + 0.05 * torch.randn(n, c, generator=g)
    labels = (base + 0.1 * torch.randn(n, c, generator=g)).argmax(1)
    kl = 3.0 + 0.05 * torch.randn(c, generator=g)
    return SimilarityMaps(s1, s2, s3, torch.zeros(n, c)), kl, labels


def _random_params(t, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, 7, generator=g) * torch.tensor([1.5, 10, 10, 10, 1, 1, 1])


@pytest.mark.parametrize("subset", ["z1", "z2", "z3", "z1+z2", "all"])
def test_vectorised_and_pruned_equal_naive_per_trial(subset):
    maps, kl, labels = _maps()
    params = _random_params(40)
    naive = []
    for row in params:
        p = _blend(row)
        naive.append(accuracy(blend_logits(maps, kl, p, subset), labels))
    naive = torch.tensor(naive, dtype=torch.float64)
    assert torch.equal(batched_accuracy(maps, kl, labels, params, subset, chunk_queries=64), naive)
    ev = BlendEvaluator(maps.s1, maps.s2, maps.s3, kl, labels, subset, topk=(2, 4), kl_topk=1, chunk_queries=50)
    assert torch.equal(ev.accuracy(params), naive)
    assert torch.equal(ev.accuracy_full(params), naive)
    assert ev.n_full_rows < ev.n_rows  # the bound settles most rows
    if subset != "z1":  # a single monotone term is always settled by its top class; blends are not
        assert ev.level_rows[1] > 0
    # one narrow level: many rows reach the all-classes path, results unchanged
    ev1 = BlendEvaluator(maps.s1, maps.s2, maps.s3, kl, labels, subset, topk=(1,), kl_topk=0)
    assert torch.equal(ev1.accuracy(params), naive)
    if subset != "z1":
        assert ev1.n_full_rows > 0


def test_pruned_predictions_equal_full_argmax_row_by_row():
    maps, kl, labels = _maps(n=200, c=30, seed=3)
    ev = BlendEvaluator(maps.s1, maps.s2, maps.s3, kl, labels, "all", topk=(3,), kl_topk=2)
    for row in _random_params(10, seed=5):
        full = blend_logits(maps, kl, _blend(row), "all").argmax(1)
        assert torch.equal(ev.predict(row), full)


@pytest.mark.parametrize("subset", ["z1", "z3", "all"])
def test_pruned_paths_break_exact_ties_like_argmax(subset):
    """Duplicated classes tie exactly and all-zero lambdas tie everything: the smaller class id must win."""
    maps, kl, labels = _maps(n=240, c=10, seed=7)

    def dup(s: torch.Tensor) -> torch.Tensor:
        return torch.cat([s[:, :6], s[:, 2:3], s[:, 7:]], dim=1)  # class 6 := class 2

    maps = SimilarityMaps(dup(maps.s1), dup(maps.s2), dup(maps.s3), maps.s4)
    kl = torch.cat([kl[:6], kl[2:3], kl[7:]])
    labels = torch.where(torch.arange(labels.shape[0]) % 2 == 0, torch.full_like(labels, 6), labels)
    params = torch.cat([_random_params(12, seed=2), torch.zeros(1, 7), torch.tensor([[0.5, 1, 1, 1, 0, 0, 0.0]])])
    naive = torch.tensor([accuracy(blend_logits(maps, kl, _blend(r), subset),
                                   labels) for r in params], dtype=torch.float64)
    for topk in ((1, 3), (2,)):
        ev = BlendEvaluator(maps.s1, maps.s2, maps.s3, kl, labels, subset, topk=topk, kl_topk=1)
        assert torch.equal(ev.accuracy(params), naive)
        for r in params[-3:]:
            full = blend_logits(maps, kl, _blend(r), subset).argmax(1)
            assert torch.equal(ev.predict(r), full)


def test_search_is_seeded_and_keeps_first_strict_improvement():
    maps, kl, labels = _maps()
    cfg = SearchConfig(n_trials=12)
    r1 = search_blend(BlendEvaluator(maps.s1, maps.s2, maps.s3, kl, labels, "all"), cfg, seed=1)
    r2 = search_blend(BlendEvaluator(maps.s1, maps.s2, maps.s3, kl, labels, "all"), cfg, seed=1)
    assert r1.params == r2.params and r1.history == r2.history
    assert r1.val_acc == max(r1.history) and r1.best_trial == r1.history.index(max(r1.history))
    # the kept parameters reproduce the kept accuracy with the plain blend
    acc = accuracy(blend_logits(maps, kl, r1.params, "all"), labels)
    assert acc == r1.val_acc
    for v, (lo, hi) in zip(r1.params.as_tuple(), SearchConfig().ranges().values(), strict=True):
        assert lo <= v <= hi


def test_searched_names_follow_the_subset():
    assert searched_names("z1") == ["alpha", "lambda1"]
    assert searched_names("z3") == ["sigma", "gamma", "lambda3"]
    assert searched_names("all") == ["sigma", "alpha", "beta", "gamma", "lambda1", "lambda2", "lambda3"]
