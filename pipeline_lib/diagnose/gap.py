"""Modality-gap and intra-modal misalignment diagnostics: pure numpy functions on cached CLIP features.

They answer the questions every method in this project starts from: how far apart do image and text features sit
(cosines, centroid distance), how does the text projection's spectrum shape the joint space and where do image
features put their energy, and does image-image similarity follow the class as well as text-image similarity does
(retrieval mAP, zero-shot vs few-shot prototypes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Unit vectors along `axis` (float64 for stable sums)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _offdiag_mean(sim: np.ndarray) -> float:
    """Mean of a square similarity matrix without its diagonal (self-similarities)."""
    n = len(sim)
    if n < 2:
        raise ValueError(f"need at least 2 items for pairwise similarity, got {n}")
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def _offdiag(sim: np.ndarray) -> np.ndarray:
    return sim[~np.eye(len(sim), dtype=bool)]


def gap_summary(
    image: np.ndarray, image_labels: np.ndarray, class_text: np.ndarray, prompt_text: np.ndarray | None = None
) -> dict[str, float]:
    """Cosine statistics of the modality gap.

    image (N, D) raw image features, image_labels (N,) class ids, class_text (C, D) class text features,
    prompt_text (C, M, D) the individual prompt features (text-text statistics use them when given, else class_text).
    matched_image_text: mean cos(image, its class's text); unmatched_image_text: mean over the other classes;
    image_image / text_text: mean over distinct pairs; centroid_distance: |mean(n(image)) - mean(n(text))|.
    """
    img = l2_normalize(image)  # (N, D)
    cls = l2_normalize(class_text)  # (C, D)
    labels = np.asarray(image_labels, dtype=np.int64)
    if labels.shape != (len(img),):
        raise ValueError(f"image_labels has shape {labels.shape}; expected ({len(img)},)")
    if labels.min() < 0 or labels.max() >= len(cls):
        raise ValueError(f"image_labels span [{labels.min()}, {labels.max()}] but there are {len(cls)} class texts")
    texts = cls if prompt_text is None else l2_normalize(np.asarray(prompt_text).reshape(-1, cls.shape[1]))  # (T, D)
    it = img @ cls.T  # (N, C)
    matched = it[np.arange(len(img)), labels]
    unmatched_mask = np.ones_like(it, dtype=bool)
    unmatched_mask[np.arange(len(img)), labels] = False
    return {
        "matched_image_text": float(matched.mean()),
        "unmatched_image_text": float(it[unmatched_mask].mean()) if unmatched_mask.any() else float("nan"),
        "image_image": _offdiag_mean(img @ img.T),
        "text_text": _offdiag_mean(texts @ texts.T),
        "centroid_distance": float(np.linalg.norm(img.mean(0) - texts.mean(0))),
    }


def similarity_histograms(
    image: np.ndarray,
    image_labels: np.ndarray,
    class_text: np.ndarray,
    prompt_text: np.ndarray | None = None,
    bins: int = 40,
    max_items: int = 1000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Density histograms of matched image-text, image-image and text-text cosines on shared bins over [-1, 1].

    Rows: {"cosine": bin centre, "image_text", "image_image", "text_text"}; image-image uses at most `max_items`
    images (a fixed random subset) to keep it O(max_items^2).
    """
    img = l2_normalize(image)
    labels = np.asarray(image_labels, dtype=np.int64)
    cls = l2_normalize(class_text)
    texts = cls if prompt_text is None else l2_normalize(np.asarray(prompt_text).reshape(-1, cls.shape[1]))
    sub = np.random.default_rng(seed).permutation(len(img))[:max_items]
    edges = np.linspace(-1.0, 1.0, bins + 1)
    samples = {
        "image_text": (img * cls[labels]).sum(1),
        "image_image": _offdiag(img[sub] @ img[sub].T),
        "text_text": _offdiag(texts @ texts.T),
    }
    dens = {k: np.histogram(np.clip(v, -1, 1), bins=edges, density=True)[0] for k, v in samples.items()}
    centres = 0.5 * (edges[:-1] + edges[1:])
    return [{"cosine": float(c), **{k: float(d[i]) for k, d in dens.items()}} for i, c in enumerate(centres)]


def projection_spectrum(text_projection: np.ndarray, atol: float = 0.3) -> dict[str, Any]:
    """Singular values of the text projection (W, D): the scale each joint-space direction gets from text.

    A direction with a small singular value is one text features barely reach; `weak` counts those below `atol`.
    """
    s = np.linalg.svd(np.asarray(text_projection, dtype=np.float64), compute_uv=False)
    return {
        "shape": list(np.shape(text_projection)),
        "rank": int(min(np.shape(text_projection))),
        "max": float(s.max()),
        "min": float(s.min()),
        "median": float(np.median(s)),
        "condition_number": float(s.max() / max(s.min(), 1e-12)),
        "weak_count": int((s < atol).sum()),
        "weak_atol": atol,
        "singular_values": [float(v) for v in s],
    }


def energy_shares(image: np.ndarray, text_projection: np.ndarray, atol: float = 0.3) -> dict[str, float]:
    """Where unit image features put their energy relative to the text projection P (W, D).

    With P = U S V^T, text features live in the row space span(V) of R^D. For each unit image feature f the energy
    along right-singular direction v_k is (f . v_k)^2; `weak` sums it over directions with s_k < atol, `outside` is
    what lies outside the row space (zero when P has full column rank). `weak_if_uniform` is the share an isotropic
    feature would put on the weak directions (their count / D), the baseline to compare `weak` with.
    """
    img = l2_normalize(image)  # (N, D)
    p = np.asarray(text_projection, dtype=np.float64)
    if p.shape[1] != img.shape[1]:
        raise ValueError(f"text_projection has shape {p.shape}; its columns must match the feature dim {img.shape[1]}")
    _, s, vt = np.linalg.svd(p, full_matrices=False)  # vt (r, D)
    coords = img @ vt.T  # (N, r)
    energy = coords**2
    weak = s < atol
    inside = energy.sum(1)  # (N,)
    return {
        "weak": float(energy[:, weak].sum(1).mean()),
        "outside_row_space": float(np.clip(1.0 - inside, 0.0, None).mean()),
        "weak_if_uniform": float(weak.sum() / img.shape[1]),
        "weak_directions": int(weak.sum()),
    }


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Full-ranking average precision of one query: mean precision at the rank of every relevant item.

    Ties are broken by item order (stable sort), so results are deterministic. NaN when nothing is relevant.
    """
    relevant = np.asarray(relevant, dtype=bool)
    if not relevant.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = relevant[order]
    ranks = np.flatnonzero(hits) + 1  # 1-based ranks of relevant items
    precision = np.arange(1, len(ranks) + 1) / ranks
    return float(precision.mean())


def retrieval_map(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    exclude_self: bool = False,
) -> float:
    """Mean average precision of cosine retrieval; relevant = same label.

    With `exclude_self` the gallery is the query set itself and each query's own item is removed from its ranking.
    Queries with no relevant item are skipped (and logged).
    """
    q, g = l2_normalize(queries), l2_normalize(gallery)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if exclude_self and len(q) != len(g):
        raise ValueError(f"exclude_self needs queries == gallery, got {len(q)} queries and {len(g)} gallery items")
    sims = q @ g.T  # (Q, G)
    aps = []
    keep = np.ones(len(g), dtype=bool)
    for i in range(len(q)):
        if exclude_self:
            keep[:] = True
            keep[i] = False
            ap = average_precision(sims[i, keep], (gl == ql[i])[keep])
        else:
            ap = average_precision(sims[i], gl == ql[i])
        aps.append(ap)
    aps_arr = np.array(aps)
    skipped = int(np.isnan(aps_arr).sum())
    if skipped:
        logger.warning("%d of %d queries have no relevant gallery item and are skipped", skipped, len(aps))
    if skipped == len(aps):
        raise ValueError("no query has a relevant gallery item")
    return float(np.nanmean(aps_arr))


def zero_shot_accuracy(image: np.ndarray, labels: np.ndarray, class_text: np.ndarray) -> float:
    """Top-1 accuracy of nearest class text (cosine)."""
    pred = (l2_normalize(image) @ l2_normalize(class_text).T).argmax(1)
    return float((pred == np.asarray(labels)).mean())


def class_prototypes(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) unit class means of unit features; raises when a class has no example."""
    f = l2_normalize(features)
    labels = np.asarray(labels)
    protos = []
    for c in range(n_classes):
        members = f[labels == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no example to build a prototype from")
        protos.append(members.mean(0))
    return l2_normalize(np.stack(protos))


def sample_shots(labels: np.ndarray, n_classes: int, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `shots` examples per class, drawn without replacement."""
    labels = np.asarray(labels)
    picked = []
    for c in range(n_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            raise ValueError(f"class {c} has {len(pool)} training images; {shots} shots requested")
        picked.append(rng.choice(pool, size=shots, replace=False))
    return np.concatenate(picked)


def prototype_accuracy(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    n_classes: int,
    shots: Sequence[int],
    seeds: int,
) -> dict[int, dict[str, float]]:
    """Few-shot class-mean prototype accuracy per shot count: mean and std over `seeds` draws of the shots."""
    out = {}
    for k in shots:
        accs = []
        for seed in range(seeds):
            idx = sample_shots(train_labels, n_classes, k, np.random.default_rng([seed, k]))
            protos = class_prototypes(train[idx], np.asarray(train_labels)[idx], n_classes)
            accs.append(zero_shot_accuracy(test, test_labels, protos))
        out[int(k)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs))}
    return out
