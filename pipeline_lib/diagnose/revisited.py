"""Revisited Oxford / Paris metrics (Radenović et al. 2018): mAP and mP@k under the easy, medium and hard protocols.

Each protocol splits a query's ground truth into positives and ignored items:

    easy:    positives = easy           ignored = junk + hard
    medium:  positives = easy + hard    ignored = junk
    hard:    positives = hard           ignored = junk + easy

Ignored items are taken out of the ranking (the items after them move up); an item both positive and ignored counts
as a positive. AP is the benchmark's trapezoidal one, not the mean precision at the hits: with the positives at 0-based
ranks r_0 < r_1 < ... among the kept items, AP = sum_j (j / r_j + (j + 1) / (r_j + 1)) / 2 / n_pos (j / r_j = 1 at
r_j = 0). mP@k is the benchmark's too: kq = min(k, 1-based rank of the last positive), mP@k = #(positives in the top
kq) / kq. A query without a positive under a protocol (hard has such queries) gets NaN there and is left out of that
protocol's means, as in the official evaluation.

Ranking is the one of `retrieval.ranking`: L2-normalised cosine in fp32, stable descending sort (ties keep gallery
order). Everything is vectorised over queries, `chunk` at a time, so memory is bounded by (chunk, gallery).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline_lib.data.revisited import RevisitedGroundTruth
from pipeline_lib.diagnose.retrieval import ranking

__all__ = ["PROTOCOLS", "revisited_metrics", "revisited_per_query"]

PROTOCOLS: tuple[str, ...] = ("easy", "medium", "hard")


def _protocol_stats(pos: Tensor, ignored: Tensor, order: Tensor, kappas: Sequence[int]) -> list[Tensor]:
    """AP and each mP@k, (q,) float64 each, from (q, G) positive/ignored masks and the (q, G) ranking."""
    pos_r = pos.gather(1, order)  # (q, G) in rank order
    rank = (~(ignored & ~pos)).gather(1, order).cumsum(dim=1) - 1  # 0-based rank among the kept items
    row, col = pos_r.nonzero(as_tuple=True)  # row-major: each query's positives in rank order
    r = rank[row, col].double()
    n_pos = pos_r.sum(dim=1)  # (q,)
    j = (torch.arange(len(row), device=row.device) - (n_pos.cumsum(0) - n_pos)[row]).double()  # index among positives
    p0 = torch.where(r == 0, 1.0, j / r.clamp(min=1))
    p1 = (j + 1) / (r + 1)
    zeros = torch.zeros(len(n_pos), dtype=torch.float64, device=row.device)
    empty = n_pos == 0
    out = [torch.where(empty, torch.nan, zeros.index_add(0, row, (p0 + p1) / 2) / n_pos.clamp(min=1))]
    last = zeros.scatter_reduce(0, row, r + 1, reduce="amax")  # 1-based rank of the last positive (0 without any)
    for k in kappas:
        kq = last.clamp(max=k)
        hits = zeros.index_add(0, row, (r + 1 <= kq[row]).double())
        out.append(torch.where(empty, torch.nan, hits / kq.clamp(min=1)))
    return out


def revisited_per_query(
    query: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    gt: RevisitedGroundTruth,
    *,
    chunk: int = 256,
    kappas: Sequence[int] = (1, 5, 10),
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Per-query (Q,) float64 `ap_<protocol>` and `mp@<k>_<protocol>` of `query` (Q, D) against `gallery` (G, D).

    Query i is gt's query i and gallery row g is database image g. NaN where the query has no positive.
    """
    q, g = torch.as_tensor(query), torch.as_tensor(gallery).to(device)
    if q.dim() != 2 or g.dim() != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query (Q, D) and gallery (G, D) must share D; got {tuple(q.shape)} and {tuple(g.shape)}")
    if (q.shape[0], g.shape[0]) != (gt.n_queries, gt.n_database):
        raise ValueError(f"{q.shape[0]} queries x {g.shape[0]} gallery rows, but the ground truth has "
                         f"{gt.n_queries} x {gt.n_database}")
    if chunk < 1 or not kappas or any(int(k) != k or k < 1 for k in kappas):
        raise ValueError(f"chunk must be >= 1 and kappas positive integers; got chunk={chunk}, kappas={kappas}")
    keys = [f"{m}_{p}" for p in PROTOCOLS for m in ("ap", *(f"mp@{k}" for k in kappas))]
    parts: dict[str, list[Tensor]] = {key: [] for key in keys}
    for lo in range(0, q.shape[0], chunk):
        hi = min(lo + chunk, q.shape[0])
        order = ranking(q[lo:hi].to(device), g)  # (q, G)
        easy, hard, junk = (sets.mask(lo, hi, gt.n_database).to(device) for sets in (gt.easy, gt.hard, gt.junk))
        masks = {"easy": (easy, junk | hard), "medium": (easy | hard, junk), "hard": (hard, junk | easy)}
        stats = [s for p in PROTOCOLS for s in _protocol_stats(*masks[p], order, kappas)]
        for key, stat in zip(keys, stats, strict=True):
            parts[key].append(stat.cpu())
    return {key: torch.cat(p).numpy() for key, p in parts.items()}


def revisited_metrics(
    query: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    gt: RevisitedGroundTruth,
    *,
    chunk: int = 256,
    kappas: Sequence[int] = (1, 5, 10),
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Means x100 over the queries with a defined value: `map_<protocol>`, `mp@<k>_<protocol>`, and `n_queries` (all
    queries). A protocol where no query has a positive gets NaN."""
    per_query = revisited_per_query(query, gallery, gt, chunk=chunk, kappas=kappas, device=device)
    out: dict[str, float] = {}
    for key, values in per_query.items():
        defined = values[~np.isnan(values)]
        out["map" + key[2:] if key.startswith("ap_") else key] = 100 * float(defined.mean()) if len(defined) else np.nan
    out["n_queries"] = gt.n_queries
    return out
