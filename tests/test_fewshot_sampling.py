"""Few-shot sampling order and the class-major support tensor (SeMoBridge spec 1.2-1.4)."""

import random

import numpy as np
import pytest
import torch

from pipeline_lib.fewshot.sampling import build_support, sample_fewshot_indices


def test_sampling_matches_dassl_order_and_global_random_stream():
    labels = [2, 0, 2, 1, 0, 2, 1, 0, 2, 0, 1]
    got = sample_fewshot_indices(labels, shots=2, seed=3)
    # reference: Dassl seeds Python's global generator, then random.sample per label in order of first appearance
    random.seed(3)
    expect = []
    for lab in (2, 0, 1):
        expect += random.sample([i for i, y in enumerate(labels) if y == lab], 2)
    assert got == expect
    assert [labels[i] for i in got] == [2, 2, 0, 0, 1, 1]
    assert sample_fewshot_indices(labels, 2, 3) == got  # no hidden global state
    assert sample_fewshot_indices(labels, 2, 4) != got


def test_class_with_fewer_than_k_keeps_all_and_draws_nothing():
    labels = [0, 0, 0, 1, 2, 2, 2]
    got = sample_fewshot_indices(labels, shots=2, seed=1)
    random.seed(1)
    a = random.sample([0, 1, 2], 2)
    b = random.sample([4, 5, 6], 2)  # label 1 consumed no draw
    assert got == a + [3] + b


def test_support_is_class_major_originals_then_augment_copies():
    n, v, d = 6, 3, 1
    views = np.zeros((n, v, d), dtype=np.float32)
    for i in range(n):
        for j in range(v):
            views[i, j, 0] = 10 * i + j  # encodes (image, view)
    labels = np.array([1, 0, 1, 0, 1, 0])
    idx = [4, 0, 3, 5]  # class 1: images 4, 0; class 0: images 3, 5
    s = build_support(views, labels, idx, num_classes=2, augment_epochs=1)
    assert s.shape == (2, 4, 1)
    assert s[0, :, 0].tolist() == [30, 50, 31, 51]  # K originals, then the K copies of augment 0
    assert s[1, :, 0].tolist() == [40, 0, 41, 1]
    s0 = build_support(views, labels, idx, 2, augment_epochs=0)
    assert s0[:, :, 0].tolist() == [[30, 50], [40, 0]]


def test_support_errors_name_the_problem():
    views = torch.zeros(4, 2, 3)
    with pytest.raises(ValueError, match="augment_epochs=2"):
        build_support(views, [0, 0, 1, 1], [0, 2], 2, augment_epochs=2)
    with pytest.raises(ValueError, match="unequal"):
        build_support(views, [0, 0, 1, 1], [0, 1, 2], 2, augment_epochs=0)
