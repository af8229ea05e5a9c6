"""Retrieval metrics against hand-computed rankings, including ties, self-match removal and chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.diagnose.retrieval import per_query_metrics, ranking, retrieval_metrics


def _unit(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()  # (n, 2)


def _metrics(*args: object, **kwargs: object) -> list[float]:
    m = retrieval_metrics(*args, **kwargs)
    return [m.map, m.map_at_r, m.r_precision, m.recall_at_1]


def test_hand_computed_ranking() -> None:
    # similarity order g0 > g1 > g2 > g3; relevant (label 1) at ranks 2 and 4
    got = _metrics(_unit(0), [1], _unit(0, 30, 60, 90), [0, 1, 0, 1])
    assert got == pytest.approx([(1 / 2 + 2 / 4) / 2, (1 / 2) / 2, 1 / 2, 0.0])


def test_ties_keep_gallery_order() -> None:
    v, w = 0.0, 40.0
    # g0 and g1 tie; the stable sort keeps g0 (irrelevant) first -> relevant at ranks 2, 3
    assert _metrics(_unit(v), [1], _unit(v, v, w), [0, 1, 1]) == pytest.approx([7 / 12, 1 / 4, 1 / 2, 0.0])
    # swapping the tied items in the gallery swaps their ranks -> relevant at ranks 1, 3
    assert _metrics(_unit(v), [1], _unit(v, v, w), [1, 0, 1]) == pytest.approx([5 / 6, 1 / 2, 1 / 2, 1.0])
    assert ranking(_unit(v), _unit(v, v, w)).tolist() == [[0, 1, 2]]


def test_self_match_removal_on_the_same_set() -> None:
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = [0, 0, 1, 1]
    # per query (own item removed): AP 1, 1/2, 1/2, 1; AP@R 1, 0, 0, 1; R-prec 1, 0, 0, 1; R@1 1, 0, 0, 1
    own = np.arange(4)
    assert _metrics(x, labels, x, labels, own=own) == pytest.approx([0.75, 0.5, 0.5, 0.5])
    assert ranking(x, x, own=own).tolist() == [[1, 2, 3], [2, 0, 3], [1, 3, 0], [2, 1, 0]]
    assert _metrics(x, labels, x, labels)[3] == 1.0  # without removal every query finds itself first
    # a subset of the queries keeps its own rows: queries 3 and 1 are gallery rows 3 and 1
    assert _metrics(x[[3, 1]], [1, 0], x, labels, own=np.array([3, 1])) == pytest.approx([0.75, 0.5, 0.5, 0.5])


def test_explicit_relevant_sets_match_labels_and_allow_overlap() -> None:
    gen = np.random.default_rng(3)
    q, g = gen.normal(size=(9, 5)).astype(np.float32), gen.normal(size=(14, 5)).astype(np.float32)
    ql, gl = gen.integers(0, 3, 9), gen.integers(0, 3, 14)
    gl[:3] = [0, 1, 2]  # every label has a gallery item
    sets = RelevantSets.from_lists([np.flatnonzero(gl == label).tolist() for label in ql])
    assert _metrics(q, ql, g, gl, relevant=sets, chunk=4) == pytest.approx(_metrics(q, ql, g, gl), abs=1e-12)
    # qrels: gallery row 0 answers both queries; the labels play no part
    x = _unit(0, 45, 90)
    overlap = RelevantSets.from_lists([[0, 2], [0]])
    pq = per_query_metrics(x[:2], [9, 9], x, [7, 7, 7], relevant=overlap)
    assert pq.ap.tolist() == pytest.approx([(1 + 2 / 3) / 2, 1 / 2])  # query 1's order: g1, g0, g2
    assert overlap.subset(np.array([1])).row(0).tolist() == [0]


def _reference_ap(sims: np.ndarray, rel: np.ndarray) -> float:
    """Plain-loop AP with a stable descending sort (the definition, not the vectorised code)."""
    order = sorted(range(len(sims)), key=lambda j: -sims[j])  # Python's sort is stable
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if rel[j]:
            hits += 1
            total += hits / rank
    return total / rel.sum()


def test_vectorised_chunks_match_a_loop_with_many_ties() -> None:
    gen = np.random.default_rng(0)
    q = gen.integers(-1, 2, size=(23, 3)).astype(np.float32) + np.array([3, 0, 0], dtype=np.float32)
    g = gen.integers(-1, 2, size=(40, 3)).astype(np.float32) + np.array([3, 0, 0], dtype=np.float32)
    ql, gl = gen.integers(0, 3, 23), gen.integers(0, 3, 40)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = torch.from_numpy(qn).float() @ torch.from_numpy(gn).float().T  # same fp32 arithmetic as the metric
    want = np.mean([_reference_ap(sims[i].numpy(), gl == ql[i]) for i in range(23)])
    small = retrieval_metrics(q, ql, g, gl, chunk=4)
    big = retrieval_metrics(q, ql, g, gl, chunk=1000)
    assert small.map == pytest.approx(want, abs=1e-6)  # per-query AP accumulates in fp32
    assert small == big
    assert small.n_queries == 23 and small.as_dict(100)["map"] == pytest.approx(100 * want)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="no relevant gallery item"):
        retrieval_metrics(_unit(0), [5], _unit(0, 10), [0, 1])
    with pytest.raises(ValueError, match="must share D"):
        retrieval_metrics(torch.zeros(1, 3), [0], torch.zeros(2, 2), [0, 0])
    with pytest.raises(ValueError, match="own must be"):
        retrieval_metrics(_unit(0), [0], _unit(0, 1), [0, 0], own=np.array([2]))
    with pytest.raises(ValueError, match="relevant holds 2"):
        retrieval_metrics(_unit(0), [0], _unit(0, 1), [0, 0], relevant=RelevantSets.from_lists([[0], [1]]))
