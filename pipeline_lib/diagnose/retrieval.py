"""Retrieval metrics over full rankings: mAP (headline), mAP@R, R-precision and Recall@1, all in [0, 1].

Both sides are L2-normalised and ranked by cosine similarity in fp32 (fp16/bf16 similarities reorder near-ties and
move the metrics by ~1e-3). Ties are broken by a stable sort on descending similarity: among equal scores the gallery
item that comes first in gallery order ranks first. Relevance is "same label", or explicit per-query sets of relevant
gallery rows (`relevant`, e.g. a benchmark's qrels). When query and gallery come from the same set, each query's own
gallery row (`own`) is removed from its ranking and from its relevant count (CUB all/all, SOP test/test). AP counts
every relevant gallery item, whatever its score, and a query with no relevant item is an error rather than a silent
zero. Computation is vectorised over queries and chunked over them to bound memory at (chunk, gallery).

`retrieval_metrics` gives the means; `per_query_metrics` gives the per-query values they are the means of (e.g. for a
bootstrap over queries, or for the means over a subset of the queries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline_lib.datasets.relevance import RelevantSets

log = logging.getLogger(__name__)

__all__ = ["PerQueryMetrics", "RelevantSets", "RetrievalMetrics", "per_query_metrics", "ranking", "retrieval_metrics"]


@dataclass(frozen=True)
class RetrievalMetrics:
    """Means over queries, each in [0, 1]."""

    map: float  # average precision over the full ranking
    map_at_r: float  # AP truncated at R = number of relevant items, normalised by R
    r_precision: float  # precision among the top R
    recall_at_1: float  # is the top-ranked item relevant
    n_queries: int

    def as_dict(self, scale: float = 1.0) -> dict[str, float]:
        """Metrics as a plain dict (x `scale`, e.g. 100 for percentages); `n_queries` is left unscaled."""
        return {k: (v * scale if k != "n_queries" else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PerQueryMetrics:
    """Per-query values (Q,) float64, in query order, whose means are the `RetrievalMetrics`."""

    ap: np.ndarray
    ap_at_r: np.ndarray
    r_precision: np.ndarray
    recall_at_1: np.ndarray

    def mean(self, mask: np.ndarray | None = None) -> RetrievalMetrics:
        """Means over all queries, or over those selected by `mask` (a (Q,) boolean mask or an index array)."""
        cols = [self.ap, self.ap_at_r, self.r_precision, self.recall_at_1]
        if mask is not None:
            cols = [c[mask] for c in cols]
        if len(cols[0]) == 0:
            raise ValueError("no queries to average over")
        return RetrievalMetrics(*(float(np.mean(c)) for c in cols), n_queries=len(cols[0]))


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x
    a = np.asarray(x)
    return torch.from_numpy(a if a.flags.writeable else a.copy())  # read-only views (polars, zarr) are copied


def _rank(sims: Tensor, own: Tensor | None) -> Tensor:
    """Gallery indices (q, G') by descending similarity, ties in gallery order; `own` (q,) items are dropped."""
    if own is not None:
        sims = sims.clone()
        sims[torch.arange(sims.shape[0], device=sims.device), own] = -torch.inf  # sorts last, then cut off
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices  # (q, G)
    return order[:, :-1] if own is not None else order


def ranking(query: Tensor, gallery: Tensor, *, own: np.ndarray | None = None) -> Tensor:
    """(Q, G') gallery indices in rank order (stable on ties); with `own` (Q,) each query's own gallery row is
    dropped."""
    sims = F.normalize(query.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T  # (Q, G)
    return _rank(sims, None if own is None else torch.tensor(np.asarray(own), dtype=torch.int64))


def _chunk_stats(rel: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-query AP, AP@R, R-precision and hit@1 from a relevance matrix (q, G') in rank order."""
    relf = rel.float()  # (q, G')
    n_rel = relf.sum(dim=1)  # (q,)
    if bool((n_rel == 0).any()):
        bad = int((n_rel == 0).nonzero()[0, 0])
        raise ValueError(f"query {bad} (of this chunk) has no relevant gallery item; AP is undefined for it")
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float32)  # (G',)
    hits = relf.cumsum(dim=1)  # (q, G')
    prec_at_hits = hits / ranks * relf  # (q, G') precision@k at the relevant ranks, 0 elsewhere
    ap = prec_at_hits.sum(dim=1) / n_rel
    within_r = ranks.unsqueeze(0) <= n_rel.unsqueeze(1)  # (q, G')
    ap_at_r = (prec_at_hits * within_r).sum(dim=1) / n_rel
    r_precision = (relf * within_r).sum(dim=1) / n_rel
    return ap, ap_at_r, r_precision, relf[:, 0]


def retrieval_metrics(
    query: np.ndarray | Tensor,
    query_labels: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    gallery_labels: np.ndarray | Tensor,
    *,
    own: np.ndarray | None = None,
    relevant: RelevantSets | None = None,
    chunk: int = 1024,
    device: torch.device | str = "cpu",
) -> RetrievalMetrics:
    """Mean retrieval metrics of `query` (Q, D) against `gallery` (G, D), relevant = same label or `relevant`.

    `own` (Q,) gives each query's own gallery row when queries are drawn from the gallery set (same split): it is
    removed from the query's ranking. `relevant` replaces "same label" by explicit sets (the labels are then only
    checked for shape). Similarities and ranks are computed in fp32 on `device`, `chunk` queries at a time.
    """
    sums = torch.zeros(4, dtype=torch.float64)
    n = 0
    for stats in _query_stats(query, query_labels, gallery, gallery_labels, own=own, relevant=relevant, chunk=chunk,
                              device=device):
        n += len(stats[0])
        for i, stat in enumerate(stats):
            sums[i] += stat.double().sum().cpu()
    means = (sums / n).tolist()
    return RetrievalMetrics(*means, n_queries=n)


def per_query_metrics(
    query: np.ndarray | Tensor,
    query_labels: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    gallery_labels: np.ndarray | Tensor,
    *,
    own: np.ndarray | None = None,
    relevant: RelevantSets | None = None,
    chunk: int = 1024,
    device: torch.device | str = "cpu",
) -> PerQueryMetrics:
    """Per-query AP, AP@R, R-precision and hit@1 of `query` against `gallery`; arguments as `retrieval_metrics`.

    The same computation as `retrieval_metrics`, whose values are the means of these (up to float64 summation order).
    """
    parts: list[list[Tensor]] = [[], [], [], []]
    for stats in _query_stats(query, query_labels, gallery, gallery_labels, own=own, relevant=relevant, chunk=chunk,
                              device=device):
        for i, stat in enumerate(stats):
            parts[i].append(stat.double().cpu())
    return PerQueryMetrics(*(torch.cat(p).numpy() for p in parts))


def _query_stats(
    query: np.ndarray | Tensor,
    query_labels: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    gallery_labels: np.ndarray | Tensor,
    *,
    own: np.ndarray | None,
    relevant: RelevantSets | None,
    chunk: int,
    device: torch.device | str,
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Validate the inputs, then yield the per-query stats (`_chunk_stats`) of `chunk` queries at a time, in order."""
    q, ql = _as_tensor(query), _as_tensor(query_labels)
    g, gl = _as_tensor(gallery).to(device), _as_tensor(gallery_labels).to(device)
    if q.dim() != 2 or g.dim() != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query (Q, D) and gallery (G, D) must share D; got {tuple(q.shape)} and {tuple(g.shape)}")
    if ql.shape != (q.shape[0],) or gl.shape != (g.shape[0],):
        raise ValueError(
            f"labels must be (Q,) and (G,); got {tuple(ql.shape)} for {q.shape[0]} queries and {tuple(gl.shape)} "
            f"for {g.shape[0]} gallery items"
        )
    own_t = None if own is None else torch.tensor(np.asarray(own), dtype=torch.int64)
    if own_t is not None and (own_t.shape != (q.shape[0],) or bool((own_t < 0).any() | (own_t >= g.shape[0]).any())):
        raise ValueError(f"own must be (Q,) = ({q.shape[0]},) gallery rows in [0, {g.shape[0]}); got shape "
                         f"{tuple(own_t.shape)}")
    if relevant is not None and len(relevant) != q.shape[0]:
        raise ValueError(f"relevant holds {len(relevant)} queries' sets for {q.shape[0]} queries")
    if q.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    for lo in range(0, q.shape[0], chunk):
        hi = min(lo + chunk, q.shape[0])
        qc, qlc = q[lo:hi].to(device), ql[lo:hi].to(device)
        sims = F.normalize(qc.float(), dim=-1) @ F.normalize(g.float(), dim=-1).T  # (q, G)
        order = _rank(sims, None if own_t is None else own_t[lo:hi].to(device))  # (q, G')
        if relevant is None:
            rel = gl[order] == qlc.unsqueeze(1)  # (q, G') relevance in rank order
        else:
            rel = relevant.mask(lo, hi, g.shape[0]).to(device).gather(1, order)
        yield _chunk_stats(rel)
