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
    for col, used in zip((4, 5, 6), (use1, use2, use3)):
        if not used:
            p[:, col] = 0.0
    return p


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
        out = inner.mul_(w) if inner.shape == torch.broadcast_shapes(inner.shape, w.shape) else inner * w
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
    """Candidate classes of one pruning level, their gathered map values and the bounds of everything else."""

    cand: torch.Tensor  # (N, M) class ids, sorted
    gathered: list  # per map (N, M) d values at the candidates (None for unused maps)
    t: list  # per map (N,) max d outside the candidates (None for unused maps)
    kl_out: torch.Tensor  # (N,) max KL outside the candidates
    is_label: torch.Tensor  # (N, M) candidate == the row's label


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
    """

    def __init__(self, s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, kl: torch.Tensor,
                 labels: torch.Tensor, subset: str = "all", topk: tuple[int, ...] = (4, 16, 64), kl_topk: int = 2,
                 chunk_queries: int = 8192) -> None:
        self.use = subset_mask(subset)
        self.subset = subset
        self.d = [s.float() - 1.0 if u else None for s, u in zip((s1, s2, s3), self.use)]  # (N, C) or None
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
        self.levels = [self._level(k, top, kl_sorted.indices[:kk], kl_bound) for k in ks]
        self.level_rows = [0] * len(self.levels)  # rows evaluated at each level (diagnostic)

    def _level(self, k: int, top: list, kl_ids: torch.Tensor, kl_bound: torch.Tensor) -> _Level:
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
        cand = torch.where(cand == c, cand[:, :1], cand).contiguous()  # (N, M)
        gathered = [None if d is None else d.gather(1, cand) for d in self.d]  # (N, M) each
        t = [None if tp is None else tp.values[:, k].contiguous() for tp in top]  # (N,) each
        kl_out = kl_bound.expand(n).contiguous()  # (N,)
        return _Level(cand, gathered, t, kl_out, cand == self.labels[:, None])

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

    def predict(self, params: torch.Tensor) -> torch.Tensor:
        """Exact argmax class per query for one parameter row (7,)."""
        p = params_tensor(params, self.subset)[0]
        if bool((p < 0).any()):
            raise ValueError(f"blend parameters {p.tolist()} must be >= 0 for the pruned evaluation")
        w_c = torch.exp(p[0] * self.kl)  # (C,)
        pred = torch.empty(self.n, dtype=torch.long)
        rows = None  # None = all rows (avoids an index copy at the first level)
        self.n_rows += self.n
        for li, lev in enumerate(self.levels):
            self.level_rows[li] += self.n if rows is None else rows.numel()
            cand = lev.cand if rows is None else lev.cand[rows]  # (R, M)
            g = [None if x is None else (x if rows is None else x[rows]) for x in lev.gathered]
            sc = blend_score(g[0], g[1], g[2], w_c[cand], p, self.use)  # (R, M)
            best, arg = sc.max(dim=1)  # (R,)
            t = [None if x is None else (x if rows is None else x[rows]) for x in lev.t]
            kl_out = lev.kl_out if rows is None else lev.kl_out[rows]
            ub = blend_score(t[0], t[1], t[2], torch.exp(p[0] * kl_out), p, self.use)  # (R,)
            ok = best > ub * (1.0 + 1e-5) + 1e-30  # (R,)
            chosen = cand.gather(1, arg[:, None]).squeeze(1)  # (R,)
            if rows is None:
                pred.copy_(chosen)  # unsettled rows are overwritten by a later level
                rows = (~ok).nonzero().squeeze(1)
            else:
                pred[rows] = chosen
                rows = rows[~ok]
            if rows.numel() == 0:
                return pred
        rows = torch.arange(self.n) if rows is None else rows
        self.n_full_rows += rows.numel()
        for lo in range(0, rows.numel(), self.chunk):
            r = rows[lo: lo + self.chunk]
            d = [None if x is None else x[r] for x in self.d]
            pred[r] = blend_score(d[0], d[1], d[2], w_c, p, self.use).argmax(dim=1)  # (r, C) -> (r,)
        return pred

    def n_correct(self, params: torch.Tensor) -> int:
        """Exact number of rows whose argmax is the label, for one parameter row (7,).

        Only correctness is needed, so a row is settled as soon as either some candidate beats its label (first-max
        tie rule: a tie with a smaller class id also beats it) -> wrong, or the label beats every candidate and the
        bound of all other classes -> right. Only rows whose label leads the candidates unresolved go further.
        """
        p = params_tensor(params, self.subset)[0]
        if bool((p < 0).any()):
            raise ValueError(f"blend parameters {p.tolist()} must be >= 0 for the pruned evaluation")
        w_c = torch.exp(p[0] * self.kl)  # (C,)
        lab_score = blend_score(self.lab_d[0], self.lab_d[1], self.lab_d[2], w_c[self.labels], p, self.use)  # (N,)
        neg = torch.tensor(float("-inf"))
        correct = 0
        rows = None  # None = all rows
        self.n_rows += self.n
        for li, lev in enumerate(self.levels):
            self.level_rows[li] += self.n if rows is None else rows.numel()
            def pick(x: torch.Tensor, rows: torch.Tensor | None = rows) -> torch.Tensor:
                return x if rows is None else x[rows]

            cand = pick(lev.cand)  # (R, M)
            g = [None if x is None else pick(x) for x in lev.gathered]
            sc = blend_score(g[0], g[1], g[2], w_c[cand], p, self.use)  # (R, M)
            sc = torch.where(pick(lev.is_label), neg, sc)  # compare the label against the others only
            best, arg = sc.max(dim=1)  # (R,)
            lab_s, lab = pick(lab_score), pick(self.labels)
            best_cls = cand.gather(1, arg[:, None]).squeeze(1)
            beaten = (best > lab_s) | ((best == lab_s) & (best_cls < lab))  # (R,)
            t = [None if x is None else pick(x) for x in lev.t]
            ub = blend_score(t[0], t[1], t[2], torch.exp(p[0] * pick(lev.kl_out)), p, self.use)  # (R,)
            right = ~beaten & (lab_s > ub * (1.0 + 1e-5) + 1e-30)
            correct += int(right.sum())
            open_ = ~beaten & ~right
            rows = open_.nonzero().squeeze(1) if rows is None else rows[open_]
            if rows.numel() == 0:
                return correct
        rows = torch.arange(self.n) if rows is None else rows
        self.n_full_rows += rows.numel()
        for lo in range(0, rows.numel(), self.chunk):
            r = rows[lo: lo + self.chunk]
            d = [None if x is None else x[r] for x in self.d]
            pred = blend_score(d[0], d[1], d[2], w_c, p, self.use).argmax(dim=1)  # (r,)
            correct += int((pred == self.labels[r]).sum())
        return correct

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
