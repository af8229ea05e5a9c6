"""Few-shot sampling and the class-major support tensor (SeMoBridge spec 1.2-1.4).

Sampling reproduces Dassl's `generate_fewshot_dataset` with repeat=False: labels in order of first appearance,
`random.sample(items, K)` per label from Python's generator seeded with the run seed, all items kept when a label
has fewer than K. A local `random.Random(seed)` yields the same stream as `random.seed(seed)` without touching global
state.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


def sample_fewshot_indices(labels: Sequence[int], shots: int, seed: int) -> list[int]:
    """Indices into the train split of the K-shot subset, in Dassl's output order (label by label)."""
    if shots < 1:
        raise ValueError(f"shots={shots}: expected a positive number of shots")
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(int(lab), []).append(i)  # dict keeps order of first appearance
    rng = random.Random(seed)
    chosen: list[int] = []
    for lab, items in by_label.items():
        if len(items) >= shots:
            chosen.extend(rng.sample(items, shots))
        else:
            log.warning("label %d has %d train images < %d shots: keeping all of them", lab, len(items), shots)
            chosen.extend(items)  # repeat=False: no draw is consumed
    return chosen


def build_support(
    views: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    indices: Sequence[int],
    num_classes: int,
    augment_epochs: int,
) -> torch.Tensor:
    """Class-major support tensor (C, K', D), K' = K (E + 1), slot [c, j] = j-th view of class c.

    Per class the order is the spec's train_x order: the K originals (view 0), then the K copies of augment 0
    (view 1), and so on. Unlike the official `torch.empty` fill, classes with unequal shot counts raise.
    """
    views_t = torch.as_tensor(np.asarray(views), dtype=torch.float32)  # (N, V, D)
    if views_t.ndim != 3:
        raise ValueError(f"views has shape {tuple(views_t.shape)}: expected (N, V, D)")
    n_views = views_t.shape[1]
    if augment_epochs + 1 > n_views:
        raise ValueError(
            f"augment_epochs={augment_epochs} needs {augment_epochs + 1} views per image, the store has {n_views}"
        )
    labels_np = np.asarray(labels).astype(np.int64)
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i in indices:
        lab = int(labels_np[i])
        if not 0 <= lab < num_classes:
            raise ValueError(f"label {lab} of train item {i} is outside [0, {num_classes})")
        per_class[lab].append(int(i))
    counts = {len(p) for p in per_class}
    if len(counts) != 1 or 0 in counts:
        bad = {c: len(p) for c, p in enumerate(per_class) if len(p) != max(counts)}
        raise ValueError(f"unequal or empty shot counts per class {bad}: the support tensor needs K shots per class")
    idx = torch.tensor(per_class, dtype=torch.long)  # (C, K)
    picked = views_t[idx][:, :, : augment_epochs + 1]  # (C, K, E+1, D)
    return picked.transpose(1, 2).reshape(num_classes, -1, views_t.shape[2]).contiguous()  # (C, K(E+1), D)
