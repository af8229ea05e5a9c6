"""Modality-gap diagnostics on small hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.diagnose import gap as dg


def test_average_precision_by_hand() -> None:
    # relevant items at ranks 1 and 3: (1/1 + 2/3) / 2
    assert dg.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    assert dg.average_precision(np.array([0.1, 0.9]), np.array([1, 0])) == pytest.approx(0.5)
    assert np.isnan(dg.average_precision(np.array([0.1, 0.9]), np.array([0, 0])))


def test_retrieval_map_excludes_self() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert dg.retrieval_map(x, [0, 0, 1, 1], x, [0, 0, 1, 1], exclude_self=True) == pytest.approx(1.0)
    # labels across the clusters: APs 1/3, 1/2, 1/3, 1/2 (worked out by hand from the cosine rankings)
    assert dg.retrieval_map(x, [0, 1, 0, 1], x, [0, 1, 0, 1], exclude_self=True) == pytest.approx(5 / 12)
    # text -> image: each class vector finds its own cluster first
    assert dg.retrieval_map(np.eye(2), [0, 1], x, [0, 0, 1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exclude_self"):
        dg.retrieval_map(x[:2], [0, 1], x, [0, 0, 1, 1], exclude_self=True)


def test_gap_summary_by_hand() -> None:
    image = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # unnormalised on purpose
    text = np.array([[0.6, 0.0, 0.8], [0.0, 0.6, 0.8]])
    gap = dg.gap_summary(image, np.array([0, 1]), text)
    assert gap["matched_image_text"] == pytest.approx(0.6)
    assert gap["unmatched_image_text"] == pytest.approx(0.0)
    assert gap["image_image"] == pytest.approx(0.0)
    assert gap["text_text"] == pytest.approx(0.64)
    assert gap["centroid_distance"] == pytest.approx(np.sqrt(0.72))
    with pytest.raises(ValueError, match="class texts"):
        dg.gap_summary(image, np.array([0, 2]), text)


def test_prompt_texts_feed_text_text() -> None:
    image = np.eye(2)
    prompts = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])  # (C=2, M=2, D=2)
    gap = dg.gap_summary(image, np.array([0, 1]), np.eye(2), prompts)
    assert gap["text_text"] == pytest.approx(1 / 3)  # 4 prompts, 12 ordered pairs, 4 identical pairs


def test_spectrum_and_energy_by_hand() -> None:
    spec = dg.projection_spectrum(np.diag([2.0, 1.0, 0.1]), atol=0.3)
    assert spec["weak_count"] == 1 and spec["max"] == pytest.approx(2.0) and spec["min"] == pytest.approx(0.1)
    assert spec["condition_number"] == pytest.approx(20.0)

    energy = dg.energy_shares(np.array([[0.6, 0.8]]), np.diag([1.0, 0.1]), atol=0.3)
    assert energy["weak"] == pytest.approx(0.64) and energy["outside_row_space"] == pytest.approx(0.0)
    assert energy["weak_if_uniform"] == pytest.approx(0.5)
    # a rank-1 projection (text width 1 < embed 2): the second axis is outside the row space
    energy = dg.energy_shares(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]]), atol=0.3)
    assert energy["outside_row_space"] == pytest.approx(0.64) and energy["weak"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="feature dim"):
        dg.energy_shares(np.ones((1, 3)), np.eye(2))


def test_zero_shot_and_prototypes() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3)
    train_labels = np.repeat(np.arange(3), 5)
    train = centres[train_labels] + 0.05 * rng.normal(size=(15, 3))
    test_labels = np.array([0, 1, 2, 2])
    test = centres[test_labels] + 0.05 * rng.normal(size=(4, 3))
    assert dg.zero_shot_accuracy(test, test_labels, centres) == 1.0
    assert dg.zero_shot_accuracy(test, test_labels, centres[[1, 0, 2]]) == 0.5
    acc = dg.prototype_accuracy(train, train_labels, test, test_labels, 3, shots=[1, 4], seeds=3)
    assert acc[1] == {"mean": 1.0, "std": 0.0} and acc[4]["mean"] == 1.0
    idx = dg.sample_shots(train_labels, 3, 2, np.random.default_rng(1))
    assert np.array_equal(np.bincount(train_labels[idx]), [2, 2, 2])
    with pytest.raises(ValueError, match="6 shots"):
        dg.sample_shots(train_labels, 3, 6, np.random.default_rng(1))
    with pytest.raises(ValueError, match="class 1 has no example"):
        dg.class_prototypes(train[:5], train_labels[:5], 3)


def test_histograms_are_densities_on_shared_bins() -> None:
    rng = np.random.default_rng(0)
    rows = dg.similarity_histograms(rng.normal(size=(30, 4)), rng.integers(0, 3, 30), rng.normal(size=(3, 4)), bins=8)
    assert len(rows) == 8 and rows[0]["cosine"] == pytest.approx(-0.875)
    for key in ("image_text", "image_image", "text_text"):
        assert sum(r[key] for r in rows) * 0.25 == pytest.approx(1.0)
