"""Similarity maps, KL class weights and the exp(-a(1-s)) blend of SeMoBridge (spec 4).

Every evaluator here computes a score element by element with the same expression,
    score = l1 * exp(a (s1 - 1)) + w_c * (l2 * exp(b (s2 - 1)) + l3 * exp(g (s3 - 1))),  w_c = exp(sigma KL_c),
on the same precomputed (s - 1) maps, so the batched, the chunked and the pruned paths agree with a plain per-trial
evaluation (up to 1-ulp differences between vectorised and scalar exp, which only matter on exact ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.bridge import bridged_queries
from pipeline_lib.fewshot.config import LOGIT_SUBSETS, BlendParams

KL_EPS = 1e-6  # the APE-style smoothing of the KL weight


@dataclass(frozen=True)
class SimilarityMaps:
    """Cosine maps (N, C): s1 = q.T_proj (zero-shot), s2 = q.P^ (query vs bridged prototypes),
    s3 = q^.P (bridged query vs image prototypes), s4 = q.P (intra-modal prototypes, the control)."""

    s1: torch.Tensor
    s2: torch.Tensor
    s3: torch.Tensor
    s4: torch.Tensor


def similarity_maps(
    query_raw: torch.Tensor,
    text_proj: torch.Tensor,
    image_proto: torch.Tensor,
    bridged_proto: torch.Tensor,
    pinv: torch.Tensor,
    w_txt: torch.Tensor,
) -> SimilarityMaps:
    """The four maps for raw query features (N, D_p); queries are bridged without bias (spec 3)."""
    q = F.normalize(query_raw.float(), dim=-1)  # (N, D_p)
    q_hat = bridged_queries(query_raw.float(), pinv, w_txt)  # (N, D_p)
    return SimilarityMaps(
        s1=q @ text_proj.T,  # (N, C)
        s2=q @ bridged_proto.T,  # (N, C)
        s3=q_hat @ image_proto.T,  # (N, C)
        s4=q @ image_proto.T,  # (N, C)
    )


def kl_bits(image_proto: torch.Tensor, text_proj: torch.Tensor) -> torch.Tensor:
    """KL_c = log2((1 + eps) / (p_c + eps)), p_c = softmax_j(P_c . T_proj[j])[c] on raw cosines (no x100). (C,)"""
    p = torch.softmax(image_proto @ text_proj.T, dim=-1).diagonal()  # (C,)
    return torch.log2((1.0 + KL_EPS) / (p + KL_EPS))


def subset_mask(subset: str) -> tuple[bool, bool, bool]:
    """Which of (z1, z2, z3) a LOGIT_SUBSETS name uses."""
    if subset not in LOGIT_SUBSETS:
        raise ValueError(f"logit subset {subset!r}: expected one of {list(LOGIT_SUBSETS)}")
    terms = LOGIT_SUBSETS[subset]
    return ("z1" in terms, "z2" in terms, "z3" in terms)


def params_tensor(params: BlendParams | torch.Tensor | list, subset: str) -> torch.Tensor:
    """(T, 7) float32 parameter rows (PARAM_NAMES order) with the lambdas of unused terms zeroed."""
    if isinstance(params, BlendParams):
        p = torch.tensor([params.as_tuple()], dtype=torch.float32)
    else:
        p = torch.as_tensor(params, dtype=torch.float32).reshape(-1, 7).clone()
    use1, use2, use3 = subset_mask(subset)
    for col, used in zip((4, 5, 6), (use1, use2, use3), strict=True):
        if not used:
            p[:, col] = 0.0
    return p


def _broadcasts_into(shape: torch.Size, target: torch.Size) -> bool:
    """True when a tensor of `shape` broadcasts to `target` unchanged (an in-place op on `target` is possible).

    Plain Python: torch.broadcast_shapes costs ~0.5 ms per call, a fifth of a search trial at few-shot sizes."""
    pairs = zip(reversed(shape), reversed(target), strict=False)  # trailing axes; `shape` may have fewer
    return len(shape) <= len(target) and all(a in (1, b) for a, b in pairs)


def blend_score(d1, d2, d3, w, p, use) -> torch.Tensor:
    """The shared blend expression, built with in-place ops on fresh buffers (large temporaries dominate otherwise).

    d_i = s_i - 1 (any shape), w broadcastable to it, p one (7,) row or a (T, 1, 1, 7) block of rows. The operation
    order (mul, exp, mul by lambda, add, mul by w, add z1) is the same for every path, so every path rounds alike.
    """
    _sigma, a, b, g, l1, l2, l3 = p.unbind(-1)
    out = None
    if use[1] or use[2]:
        inner = None
        if use[1]:
            inner = torch.mul(d2, b).exp_().mul_(l2)
        if use[2]:
            e3 = torch.mul(d3, g).exp_().mul_(l3)
            inner = e3 if inner is None else inner.add_(e3)
        out = inner.mul_(w) if _broadcasts_into(w.shape, inner.shape) else inner * w
    if use[0]:
        z1 = torch.mul(d1, a).exp_().mul_(l1)
        out = z1 if out is None else (z1.add_(out) if z1.shape == out.shape else z1 + out)
    return out


def blend_logits(maps: SimilarityMaps, kl: torch.Tensor, params: BlendParams, subset: str = "all",
                 s2_override: torch.Tensor | None = None) -> torch.Tensor:
    """Final scores (N, C) for one parameter set; s2_override swaps the z2 map (the q.P control)."""
    p = params_tensor(params, subset)[0]  # (7,)
    use = subset_mask(subset)
    s2 = maps.s2 if s2_override is None else s2_override
    w = torch.exp(p[0] * kl)  # (C,)
    return blend_score(maps.s1 - 1.0, s2 - 1.0, maps.s3 - 1.0, w, p, use)


def percent(correct: int | torch.Tensor, n: int) -> float:
    """Accuracy in percent from a count, computed one way everywhere so that every path reports identical floats."""
    return 100.0 * int(correct) / n


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (the spec's objective and metric)."""
    return percent((scores.argmax(dim=-1) == labels).sum(), labels.shape[0])


@dataclass
class _Level:
    """Candidate classes of one pruning level, their gathered map values and the bounds of everything else.

    The first level sees every query each trial and is stored candidate-major (M, N): its per-query reductions over
    the few candidates become elementwise passes over long rows. Later levels see a few scattered queries, picked
    fastest from query-major (N, M) storage. `dim` is the candidate axis."""

    dim: int  # 0: (M, N) storage, 1: (N, M) storage
    cand: torch.Tensor  # class ids, sorted along the candidate axis
    cand_flat: torch.Tensor  # int32 flat copy of cand, for the per-trial gather of class weights
    gathered: list  # per map: d values at the candidates, cand's shape (None for unused maps)
    t: list  # per map (N,) max d outside the candidates (None for unused maps)
    kl_out: torch.Tensor  # (N,) max KL outside the candidates
    label_mask: torch.Tensor  # cand's shape: -inf where the candidate is the query's label, else 0

    @property
    def width(self) -> int:
        return int(self.cand.shape[self.dim])

    def rows(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The given queries (None = all) of a tensor stored in this level's layout."""
        return x if rows is None else x.index_select(1 - self.dim, rows)

    def per_query(self, v: torch.Tensor) -> torch.Tensor:
        """A per-query vector (R,) shaped to broadcast against this level's (M, R) or (R, M) blocks."""
        return v if self.dim == 0 else v[:, None]


class BlendEvaluator:
    """Accuracy of many blend parameter sets on fixed maps, for the 1000-trial search.

    Exact pruning in levels (Fagin's threshold bound): at each level a query keeps a few candidate classes (top-k of
    every used map plus the top classes by KL, sorted by class id so ties resolve like a full argmax). Any other class
    scores at most
        UB = l1 exp(a t1) + exp(sigma kmax) (l2 exp(b t2) + l3 exp(g t3)),
    with t_i the (k+1)-th largest (s_i - 1) of the row and kmax the largest KL outside the KL candidates (each term is
    non-decreasing in s_i and KL for non-negative parameters). For accuracy a row is settled as soon as a candidate
    beats its label (wrong) or its label beats every candidate and UB with a margin (right); the rest go to the next,
    wider level, and finally to all classes. Results therefore equal `accuracy_full`.

    Speed (a trial is one pass over all N queries at the first level): candidates are stored candidate-major, the
    label is masked additively, the per-query maximum is an `amax` over the short leading axis, and the first level
    reuses preallocated buffers (fresh multi-MB temporaries cost page faults every trial).
    """

    def __init__(self, s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, kl: torch.Tensor,
                 labels: torch.Tensor, subset: str = "all", topk: tuple[int, ...] = (4, 16, 64), kl_topk: int = 2,
                 chunk_queries: int = 8192) -> None:
        self.use = subset_mask(subset)
        self.subset = subset
        self.d = [s.float() - 1.0 if u else None for s, u in zip((s1, s2, s3), self.use, strict=True)]  # (N, C) or None
        self.kl = kl.float()  # (C,)
        self.labels = labels.long()  # (N,)
        self.chunk = chunk_queries
        ref = next(d for d in self.d if d is not None)
        self.n, self.c = ref.shape
        self.n_rows = 0  # query evaluations so far
        self.n_full_rows = 0  # of which re-scored over all classes (diagnostic)
        self.lab_d = [None if d is None else d.gather(1, self.labels[:, None]).squeeze(1) for d in self.d]  # (N,)
        ks = sorted(k for k in set(topk) if k < self.c)
        # One sorted top-(k_max + 1) per map serves every level: level k takes the first k ids as candidates and the
        # (k+1)-th value as the bound of everything outside (all of that map's top k are candidates, so no outside
        # class exceeds it). Same for KL with the kl_topk classes that join every level.
        top = [None if d is None else d.topk(min(max(ks, default=0) + 1, self.c), dim=1) for d in self.d]
        use_kl = (self.use[1] or self.use[2]) and kl_topk > 0
        kk = min(kl_topk, self.c) if use_kl else 0
        kl_sorted = self.kl.sort(descending=True)
        kl_bound = kl_sorted.values[kk] if kk < self.c else self.kl.min()
        self.levels = [self._level(k, top, kl_sorted.indices[:kk], kl_bound, 0 if i == 0 else 1)
                       for i, k in enumerate(ks)]
        self.level_rows = [0] * len(self.levels)  # rows evaluated at each level (diagnostic)
        width0 = self.levels[0].width if self.levels else 0
        self._buf = [torch.empty(width0, self.n) for _ in range(3)]  # first-level work space (M0, N) each

    def _level(self, k: int, top: list, kl_ids: torch.Tensor, kl_bound: torch.Tensor, dim: int) -> _Level:
        n, c = self.n, self.c
        parts = [tp.indices[:, :k] for tp in top if tp is not None]
        if kl_ids.numel():
            parts.append(kl_ids.expand(n, kl_ids.numel()))
        cand = torch.cat(parts, dim=1).sort(dim=1).values  # (N, M0) class ids
        # Drop repeats (the maps' top classes overlap): push them past the end with a sentinel, keep the widest row,
        # and fill the tail with each row's first (smallest) candidate, which leaves the first-max rule intact.
        dup = torch.zeros_like(cand, dtype=torch.bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        cand = torch.where(dup, c, cand).sort(dim=1).values  # (N, M0)
        width = int((cand < c).sum(dim=1).max())
        cand = cand[:, :width]
        cand = torch.where(cand == c, cand[:, :1], cand)  # (N, M)
        t = [None if tp is None else tp.values[:, k].contiguous() for tp in top]  # (N,) each
        kl_out = kl_bound.expand(n).contiguous()  # (N,)
        label_mask = torch.zeros(cand.shape).masked_fill_(cand == self.labels[:, None], float("-inf"))  # (N, M)

        def layout(x: torch.Tensor) -> torch.Tensor:
            return (x.T if dim == 0 else x).contiguous()

        gathered = [None if d is None else layout(d.gather(1, cand)) for d in self.d]
        cand = layout(cand)
        return _Level(dim, cand, cand.reshape(-1).int(), gathered, t, kl_out, layout(label_mask))

    def accuracy_full(self, params: torch.Tensor) -> torch.Tensor:
        """Accuracy (%) per parameter row over all classes, queries in chunks. params (T, 7) -> (T,)."""
        p = params_tensor(params, self.subset)
        correct = torch.zeros(p.shape[0], dtype=torch.long)
        for t in range(p.shape[0]):
            w = torch.exp(p[t, 0] * self.kl)  # (C,)
            for lo in range(0, self.n, self.chunk):
                sl = slice(lo, lo + self.chunk)
                d = [None if x is None else x[sl] for x in self.d]
                sc = blend_score(d[0], d[1], d[2], w, p[t], self.use)  # (n, C)
                correct[t] += (sc.argmax(dim=1) == self.labels[sl]).sum()
        return torch.tensor([percent(c, self.n) for c in correct], dtype=torch.float64)

    def _row_params(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One (7,) row with unused lambdas zeroed, and the class weights w_c = exp(sigma KL_c) (C,)."""
        p = params_tensor(params, self.subset)[0]
        if bool((p < 0).any()):
            raise ValueError(f"blend parameters {p.tolist()} must be >= 0 for the pruned evaluation")
        return p, torch.exp(p[0] * self.kl)

    def _candidate_scores(self, lev: _Level, rows: torch.Tensor | None, w_c: torch.Tensor,
                          p: torch.Tensor) -> torch.Tensor:
        """Blend scores of the level's candidates for `rows` (None = all rows, first level only: computed in the
        preallocated buffers), in the level's layout. The operations and their order are `blend_score`'s."""
        _sigma, a, b, g, l1, l2, l3 = p.unbind(-1)
        use = self.use
        if rows is None:
            assert lev.dim == 0, "all-rows scoring is the first level's (candidate-major) path"
            buf_a, buf_b, buf_w = (x[: lev.width] for x in self._buf)
            d = lev.gathered
            torch.index_select(w_c, 0, lev.cand_flat, out=buf_w.view(-1))
            w = buf_w
        else:
            d = [None if x is None else lev.rows(x, rows) for x in lev.gathered]
            buf_a = buf_b = None
            cand = lev.rows(lev.cand, rows)
            w = w_c.index_select(0, cand.reshape(-1)).view(cand.shape)

        def term(x: torch.Tensor, sharp: torch.Tensor, lam: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
            return (torch.mul(x, sharp) if out is None else torch.mul(x, sharp, out=out)).exp_().mul_(lam)

        out = None
        if use[1] or use[2]:
            inner = term(d[1], b, l2, buf_a) if use[1] else None
            if use[2]:
                e3 = term(d[2], g, l3, buf_b if use[1] else buf_a)
                inner = e3 if inner is None else inner.add_(e3)
            out = inner.mul_(w)
        if use[0]:
            z1 = term(d[0], a, l1, buf_b if out is not None else buf_a)
            out = z1 if out is None else z1.add_(out)
        return out

    def _upper_bound(self, lev: _Level, rows: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
        """Score bound (R,) of every class outside the level's candidates."""
        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if rows is None else x.index_select(0, rows)

        t = [None if x is None else pick(x) for x in lev.t]
        return blend_score(t[0], t[1], t[2], torch.exp(p[0] * pick(lev.kl_out)), p, self.use)  # (R,)

    def _full_rows(self, rows: torch.Tensor, w_c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Exact argmax over all classes for the given rows, in query chunks. (R,)"""
        self.n_full_rows += rows.numel()
        pred = torch.empty(rows.numel(), dtype=torch.long)
        for lo in range(0, rows.numel(), self.chunk):
            r = rows[lo: lo + self.chunk]
            d = [None if x is None else x[r] for x in self.d]
            pred[lo: lo + self.chunk] = blend_score(d[0], d[1], d[2], w_c, p, self.use).argmax(dim=1)
        return pred

    def predict(self, params: torch.Tensor) -> torch.Tensor:
        """Exact argmax class per query for one parameter row (7,)."""
        p, w_c = self._row_params(params)
        pred = torch.empty(self.n, dtype=torch.long)
        rows = None  # None = all rows
        self.n_rows += self.n
        for li, lev in enumerate(self.levels):
            self.level_rows[li] += self.n if rows is None else rows.numel()
            sc = self._candidate_scores(lev, rows, w_c, p)  # (M, R) or (R, M)
            best, arg = sc.max(dim=lev.dim)  # (R,) first maximum = smallest class id among ties
            ok = best > self._upper_bound(lev, rows, p) * (1.0 + 1e-5) + 1e-30  # (R,)
            chosen = lev.rows(lev.cand, rows).gather(lev.dim, arg.unsqueeze(lev.dim)).squeeze(lev.dim)  # (R,)
            if rows is None:
                pred.copy_(chosen)  # unsettled rows are overwritten by a later level
                rows = (~ok).nonzero().squeeze(1)
            else:
                pred[rows] = chosen
                rows = rows[~ok]
            if rows.numel() == 0:
                return pred
        rows = torch.arange(self.n) if rows is None else rows
        pred[rows] = self._full_rows(rows, w_c, p)
        return pred

    def n_correct(self, params: torch.Tensor) -> int:
        """Exact number of rows whose argmax is the label, for one parameter row (7,).

        Only correctness is needed, so a row is settled as soon as either some candidate beats its label (first-max
        tie rule: a tie with a smaller class id also beats it) -> wrong, or the label beats every candidate and the
        bound of all other classes -> right. Only rows whose label leads the candidates unresolved go further.
        """
        p, w_c = self._row_params(params)
        w_lab = w_c.index_select(0, self.labels)  # (N,)
        lab_score = blend_score(self.lab_d[0], self.lab_d[1], self.lab_d[2], w_lab, p, self.use)  # (N,)
        correct = 0
        rows = None  # None = all rows
        self.n_rows += self.n
        for li, lev in enumerate(self.levels):
            self.level_rows[li] += self.n if rows is None else rows.numel()
            sc = self._candidate_scores(lev, rows, w_c, p)  # (M, R) or (R, M)
            sc.add_(lev.rows(lev.label_mask, rows))  # the label never competes with itself
            best = sc.amax(dim=lev.dim)  # (R,)
            lab_s = lab_score if rows is None else lab_score.index_select(0, rows)
            beaten = best > lab_s  # (R,)
            tied = (best == lab_s).nonzero().squeeze(1)
            if tied.numel():  # rare exact ties: the label loses to a tied candidate with a smaller class id
                r = tied if rows is None else rows[tied]
                lab = lev.per_query(self.labels[r])
                tie_sc = sc.index_select(1 - lev.dim, tied)
                earlier = (tie_sc == lev.per_query(lab_s[tied])) & (lev.rows(lev.cand, r) < lab)
                beaten[tied] = earlier.any(dim=lev.dim)
            right = ~beaten & (lab_s > self._upper_bound(lev, rows, p) * (1.0 + 1e-5) + 1e-30)
            correct += int(right.sum())
            open_ = ~beaten & ~right
            rows = open_.nonzero().squeeze(1) if rows is None else rows[open_]
            if rows.numel() == 0:
                return correct
        rows = torch.arange(self.n) if rows is None else rows
        return correct + int((self._full_rows(rows, w_c, p) == self.labels[rows]).sum())

    def accuracy(self, params: torch.Tensor) -> torch.Tensor:
        """Accuracy (%) per parameter row via the pruned exact path. params (T, 7) -> (T,)."""
        p = params_tensor(params, self.subset)
        return torch.tensor([percent(self.n_correct(row), self.n) for row in p], dtype=torch.float64)


def batched_accuracy(maps: SimilarityMaps, kl: torch.Tensor, labels: torch.Tensor, params: torch.Tensor,
                     subset: str = "all", chunk_queries: int = 2048) -> torch.Tensor:
    """Vectorised blend of T parameter sets at once: (T, n, C) blocks over query chunks. params (T, 7) -> (T,) %."""
    p = params_tensor(params, subset)  # (T, 7)
    use = subset_mask(subset)
    w = torch.exp(p[:, 0:1] * kl[None, :])[:, None, :]  # (T, 1, C)
    pp = p[:, None, None, :]  # (T, 1, 1, 7)
    correct = torch.zeros(p.shape[0], dtype=torch.long)
    n = labels.shape[0]
    for lo in range(0, n, chunk_queries):
        sl = slice(lo, lo + chunk_queries)
        sc = blend_score(maps.s1[sl] - 1.0, maps.s2[sl] - 1.0, maps.s3[sl] - 1.0, w, pp, use)  # (T, n, C)
        correct += (sc.argmax(dim=-1) == labels[sl]).sum(dim=-1)
    return torch.tensor([percent(c, n) for c in correct], dtype=torch.float64)
