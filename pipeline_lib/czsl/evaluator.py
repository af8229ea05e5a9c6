"""The standard CZSL evaluator (spec 2): seen/unseen accuracy curve over a calibration bias, AUC, best HM.

It reproduces the algorithm shared by the reference CZSL code bases, quirks included, on a float32 score matrix
S (N, P) read in row chunks, twice (passes 1 and 2 below). S may be a full matrix or a `ScoreBlocks` source that
produces rows on demand (a model scoring images, a generator, an .npy file read with plain file reads), so an
open-world C-GQA matrix (5098 x 278362, 5.7 GB in float32) never exists in memory: what is kept across chunks is
O(N) per sample (correctness at the max and zero bias, the margin d_i) and O(B) hit counts per bias. float64 input
is rounded to float32 chunk by chunk, which is what a whole-matrix cast would give.

1. max-bias pass (b = 1e3, closed mask): per-sample correctness; U_max, S_at_max, and `match_max` on unseen samples;
2. unbiased pass (b = 0, closed mask): attr_acc and obj_acc over all samples;
3. bias candidates: for unseen samples correct at max bias, d_i = (k-th largest seen-pair score) - S[i, y_i] - 1e-4
   on the raw S, sorted ascending, every step-th value with step = max(n // 20, 1);
4. sweep: (seen_acc(b), unseen_acc(b)) for every candidate, then the max-bias point appended;
5. AUC = trapezoid with seen as y and unseen as x in list order; HM per point (0 if either is 0), first argmax.

"Prediction at bias b" (spec 2.3): add b to the columns of unseen pairs, set columns outside the closed mask to
-1e10, take the top-k pairs; a sample is correct when one of them is its ground-truth pair (same attr and obj).
Accuracies are per-sample means over the seen / unseen samples (integer counts / n, in float64), reported as
fractions (papers print x100). A sample whose pair lies outside the closed mask is kept and is never correct.
Ties in the top-1 prediction go to the lowest column index (torch.argmax), so results never depend on chunking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline_lib.czsl.data import CzslDataset

log = logging.getLogger(__name__)

MAX_BIAS = 1e3  # spec 2.4.1: hard-coded by the references (the yml `bias: 0.001` is unused)
MASK_VALUE = -1e10  # columns outside the closed mask
BIAS_SHIFT = 1e-4  # spec 2.4.3: candidates sit just below each correct unseen margin
N_BIAS_BINS = 20  # spec 2.4.3: step = max(n_kept // 20, 1)
# Rows per chunk: 512 x 278362 float32 = 0.57 GB for open-world C-GQA. At most two chunk-sized buffers live at once
# (a block and its filtered copy, or the filtered chunk and its unseen columns), so the evaluator adds about 1.2 GB;
# benchmarks/czsl_scale.py measures the whole evaluation's peak.
DEFAULT_CHUNK_SIZE = 512

ColumnTransform = Callable[[torch.Tensor], torch.Tensor]  # (n, P) float32 -> (n, P) float32, row-wise
BlockReader = Callable[[int, int], "torch.Tensor | np.ndarray"]  # (lo, hi) -> rows lo..hi-1, (hi - lo, P)
SCORE_DTYPES = (torch.float32, torch.float64)  # float64 is rounded to float32 per chunk; fp16 breaks the -1e10 mask
NPY_ROWS_PER_READ = 64  # rows per file read in `ScoreBlocks.from_npy` (float64: 64 x 278362 x 8 B = 0.14 GB buffer)


@dataclass(frozen=True)
class ScoreBlocks:
    """An (N, P) score matrix that exists only a row block at a time.

    `read(lo, hi)` returns rows lo..hi-1 as a (hi - lo, P) float32 or float64 tensor or array. The evaluator asks for
    every row twice (its two passes), with ranges set by its chunk_size, so `read` must give the same values for the
    same rows on every call, whatever the range. The blocks are never modified.
    """

    shape: tuple[int, int]  # (N samples, P pairs)
    read: BlockReader

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 0:
            raise ValueError(f"ScoreBlocks shape {self.shape}; expected (N samples, P pairs)")

    @property
    def ndim(self) -> int:
        return 2

    @classmethod
    def from_npy(cls, path: Path | str, rows_per_read: int = NPY_ROWS_PER_READ) -> ScoreBlocks:
        """Rows of a 2-D float32/float64 .npy file read with ordinary file reads when asked for.

        Unlike np.load(mmap_mode='r'), nothing stays mapped, so resident memory holds the chunk being evaluated and
        not every page read so far; a float64 file goes through a buffer of `rows_per_read` rows, never a full copy.
        """
        path = Path(path)
        if rows_per_read < 1:
            raise ValueError(f"rows_per_read={rows_per_read}; expected >= 1")
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{path}: .npy format version {version}; expected 1.0 or 2.0 (what np.save writes)")
            data_offset = f.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path}: array of shape {shape} (fortran order {fortran}); expected a C-order (N, P)")
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ValueError(f"{path}: dtype {dtype}; expected float32 or float64")
        n, p = shape
        row_bytes = p * dtype.itemsize
        direct = dtype == np.dtype(np.float32)  # native float32: read straight into the output

        def read(lo: int, hi: int) -> np.ndarray:
            out = np.empty((hi - lo, p), dtype=np.float32)  # (n, P)
            with path.open("rb") as f:
                for start in range(lo, hi, rows_per_read):
                    stop = min(start + rows_per_read, hi)
                    buf = out[start - lo : stop - lo] if direct else np.empty((stop - start, p), dtype=dtype)
                    f.seek(data_offset + start * row_bytes)
                    got = f.readinto(buf)
                    if got != buf.nbytes:
                        raise ValueError(f"{path}: rows {start}..{stop - 1} truncated ({got} of {buf.nbytes} bytes)")
                    if not direct:
                        out[start - lo : stop - lo] = buf  # float64 -> float32, as np.asarray(..., float32) rounds
            return out

        return cls(shape=(int(n), int(p)), read=read)


Scores = torch.Tensor | np.ndarray | ScoreBlocks


@dataclass(frozen=True)
class CzslMetrics:
    """Evaluator output. Fractions in [0, 1]; `seen`/`unseen`/`hm`/`auc` are what papers report (x100)."""

    seen: float  # best seen accuracy on the curve (usually its first point, spec 2.4.6)
    unseen: float  # best unseen accuracy on the curve
    hm: float  # best harmonic mean on the curve
    auc: float  # area under the seen (y) / unseen (x) curve
    attr_acc: float  # unbiased (b = 0) closed-mask top-k attr accuracy over all samples
    obj_acc: float  # same for objs
    best_bias: float  # bias of the best-HM point (MAX_BIAS when it is the appended point)
    hm_seen: float  # seen accuracy at the best-HM point
    hm_unseen: float  # unseen accuracy at the best-HM point
    seen_at_max: float  # seen accuracy at b = MAX_BIAS (not always 0, e.g. with log-probability scores)
    unseen_at_max: float  # unseen accuracy at b = MAX_BIAS
    acc_unbiased: float  # unbiased pair accuracy over all samples
    seen_unbiased: float  # unbiased pair accuracy over the seen samples
    unseen_unbiased: float  # unbiased pair accuracy over the unseen samples
    n_seen: int  # number of seen samples
    n_unseen: int  # number of unseen samples
    top_k: int
    curve_seen: list[float]  # seen accuracy per curve point (len(biases) + 1)
    curve_unseen: list[float]  # unseen accuracy per curve point
    biases: list[float]  # sweep biases (the last curve point uses MAX_BIAS)

    def summary(self) -> dict[str, float]:
        """The headline numbers (the `bridgeflow czsl-eval` JSON keys)."""
        keys = ("seen", "unseen", "hm", "auc", "attr_acc", "obj_acc", "best_bias")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        """Everything, JSON-serialisable (curve included, for plots)."""
        return asdict(self)


def evaluate(
    scores: Scores,
    attr_labels: torch.Tensor,
    obj_labels: torch.Tensor,
    pair_labels: torch.Tensor,
    pair_attrs: torch.Tensor,
    pair_objs: torch.Tensor,
    seen_mask: torch.Tensor,
    closed_mask: torch.Tensor,
    *,
    top_k: int = 1,
    max_bias: float = MAX_BIAS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
    column_transform: ColumnTransform | None = None,
) -> CzslMetrics:
    """Run the standard evaluator (spec 2.4) on a score matrix.

    scores: (N, P) float32 or float64 (rounded to float32 per chunk): a torch tensor, a NumPy array or a
        `ScoreBlocks` that produces row blocks on demand, so the full matrix need not exist. A read-only
        np.load(mmap_mode='r') array works, but every page read stays mapped and counts as resident (7.4 GB peak on
        open-world C-GQA test against 1.8 GB for `ScoreBlocks.from_npy` on the same file, benchmarks/czsl_scale.py).
        Columns follow the candidate pair order; scores are used as given.
    attr_labels, obj_labels, pair_labels: (N,) int ground truth; pair_labels index the columns.
    pair_attrs, pair_objs: (P,) int attr / obj index of every column.
    seen_mask: (P,) bool, pair in train_pairs. closed_mask: (P,) bool candidate set (all ones in the open world).
    column_transform: applied to every row chunk before anything else (open-world feasibility filtering), so the
        evaluator sees exactly the transformed matrix.
    device: where chunks are processed; default CUDA when available, else CPU.
    """
    n, p = _check_inputs(
        scores, attr_labels, obj_labels, pair_labels, pair_attrs, pair_objs, seen_mask, closed_mask, top_k, chunk_size
    )
    dev = torch.device(device) if device is not None else _default_device()
    labels = _as_long(pair_labels)  # (N,)
    attr_t, obj_t = _as_long(attr_labels), _as_long(obj_labels)
    pa, po = _as_long(pair_attrs), _as_long(pair_objs)
    seen_cols = seen_mask.to(torch.bool).cpu()  # (P,)
    closed_cols = closed_mask.to(torch.bool).cpu()  # (P,)
    if not bool((pa[labels] == attr_t).all() and (po[labels] == obj_t).all()):
        bad = int(torch.nonzero((pa[labels] != attr_t) | (po[labels] != obj_t))[0])
        raise ValueError(
            f"sample {bad}: pair label {int(labels[bad])} is (attr {int(pa[labels[bad]])}, obj {int(po[labels[bad]])})"
            f" but the attr/obj labels are ({int(attr_t[bad])}, {int(obj_t[bad])}); expected consistent labels"
        )
    sample_seen = seen_cols[labels]  # (N,) spec 2.2: seen iff the ground-truth pair is a train pair
    n_seen, n_unseen = int(sample_seen.sum()), int((~sample_seen).sum())
    if n_seen == 0 or n_unseen == 0:
        raise ValueError(f"{n_seen} seen and {n_unseen} unseen samples; the CZSL curve needs both to be non-zero")
    n_outside = int((~closed_cols[labels]).sum())
    if n_outside:  # the references keep such samples; their masked truth is never predicted
        log.warning("%d samples have their ground-truth pair outside the closed mask; they count as wrong", n_outside)
    if int(seen_cols.sum()) < top_k:
        raise ValueError(f"top_k={top_k} but only {int(seen_cols.sum())} seen pairs; expected top_k <= #seen pairs")

    seen_d = seen_cols.to(dev)
    predictor = _BiasedArgmax(seen_cols, closed_cols, top_k, dev)

    # Pass 1: max-bias and unbiased predictions, margins d_i for unseen samples.
    match_max = torch.empty(n, dtype=torch.bool)
    match_ub = torch.empty(n, dtype=torch.bool)
    attr_ub = torch.empty(n, dtype=torch.bool)
    obj_ub = torch.empty(n, dtype=torch.bool)
    margin = torch.empty(n, dtype=torch.float32)  # d_i = m_i - c_i on the raw (transformed) scores
    first_pass = torch.tensor([max_bias, 0.0], dtype=torch.float32, device=dev)  # (2,)
    for lo, hi, chunk in _chunks(scores, n, chunk_size, dev, column_transform, p):
        y = labels[lo:hi].to(dev)  # (n,)
        top = predictor(chunk, first_pass)  # (n, 2, k)
        top_max, top_ub = top[:, 0], top[:, 1]  # (n, k) each
        match_max[lo:hi] = (top_max == y[:, None]).any(1).cpu()
        match_ub[lo:hi] = (top_ub == y[:, None]).any(1).cpu()
        attr_ub[lo:hi] = (pa.to(dev)[top_ub] == attr_t[lo:hi].to(dev)[:, None]).any(1).cpu()
        obj_ub[lo:hi] = (po.to(dev)[top_ub] == obj_t[lo:hi].to(dev)[:, None]).any(1).cpu()
        correct = chunk.gather(1, y[:, None])[:, 0]  # (n,) c_i
        kth_seen = chunk[:, seen_d].topk(top_k, dim=1).values[:, top_k - 1]  # (n,) m_i
        margin[lo:hi] = (kth_seen - correct).cpu()
        del chunk  # released before the next one is read: two chunk-sized buffers at a time, not three

    unseen_idx = ~sample_seen
    kept = margin[unseen_idx & match_max] - BIAS_SHIFT  # float32, as the references compute it
    kept = torch.sort(kept).values
    step = max(kept.numel() // N_BIAS_BINS, 1)
    biases = kept[::step]  # (B,) float32
    n_bias = biases.numel()

    # Pass 2: the sweep. Counts are integers, so the result does not depend on the chunking.
    seen_hits = torch.zeros(n_bias, dtype=torch.long)
    unseen_hits = torch.zeros(n_bias, dtype=torch.long)
    if n_bias:
        biases_d = biases.to(dev)
        for lo, hi, chunk in _chunks(scores, n, chunk_size, dev, column_transform, p):
            y = labels[lo:hi].to(dev)  # (n,)
            is_seen = sample_seen[lo:hi].to(dev)  # (n,)
            hit = (predictor(chunk, biases_d) == y[:, None, None]).any(2)  # (n, B)
            seen_hits += (hit & is_seen[:, None]).sum(0).cpu()
            unseen_hits += (hit & ~is_seen[:, None]).sum(0).cpu()
            del chunk

    seen_at_max = _mean(match_max[sample_seen])
    unseen_at_max = _mean(match_max[unseen_idx])
    curve_seen = [c / n_seen for c in seen_hits.tolist()] + [seen_at_max]
    curve_unseen = [c / n_unseen for c in unseen_hits.tolist()] + [unseen_at_max]
    s_arr, u_arr = np.asarray(curve_seen), np.asarray(curve_unseen)
    auc = float(np.sum((u_arr[1:] - u_arr[:-1]) * (s_arr[1:] + s_arr[:-1]) / 2.0))
    hm = harmonic_means(s_arr, u_arr)
    idx = int(np.argmax(hm))  # first argmax
    bias_list = [float(b) for b in biases.tolist()]
    best_bias = float(max_bias) if idx == n_bias else bias_list[idx]
    metrics = CzslMetrics(
        seen=float(s_arr.max()),
        unseen=float(u_arr.max()),
        hm=float(hm[idx]),
        auc=auc,
        attr_acc=_mean(attr_ub),
        obj_acc=_mean(obj_ub),
        best_bias=best_bias,
        hm_seen=float(s_arr[idx]),
        hm_unseen=float(u_arr[idx]),
        seen_at_max=seen_at_max,
        unseen_at_max=unseen_at_max,
        acc_unbiased=_mean(match_ub),
        seen_unbiased=_mean(match_ub[sample_seen]),
        unseen_unbiased=_mean(match_ub[unseen_idx]),
        n_seen=n_seen,
        n_unseen=n_unseen,
        top_k=top_k,
        curve_seen=curve_seen,
        curve_unseen=curve_unseen,
        biases=bias_list,
    )
    log.debug(
        "CZSL eval on %d x %d (%d seen / %d unseen, %d biases): %s", n, p, n_seen, n_unseen, n_bias, metrics.summary()
    )
    return metrics


def evaluate_split(
    scores: Scores,
    dataset: CzslDataset,
    split: str,
    **kwargs,
) -> CzslMetrics:
    """`evaluate` with labels and masks taken from a loaded dataset (split 'val' or 'test').

    scores: a matrix or a `ScoreBlocks` source, as for `evaluate`. Score rows follow the split's row order, columns
    `dataset.pairs` (the dataset's world). The closed mask is the phase's (spec 2.2): val -> val u train pairs,
    test -> test u train pairs, open world -> all pairs.
    Keyword arguments go to `evaluate` (top_k, chunk_size, device, column_transform, max_bias).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r}; the evaluator runs on 'val' or 'test'")
    attr, obj, pair = dataset.labels(split)
    return evaluate(
        scores,
        attr,
        obj,
        pair,
        dataset.pair_attr_idx(),
        dataset.pair_obj_idx(),
        dataset.seen_mask,
        dataset.closed_mask(split),
        **kwargs,
    )


def harmonic_means(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """2su / (s + u) per point, 0 where either is 0 (spec 2.4.5)."""
    seen, unseen = np.asarray(seen, dtype=np.float64), np.asarray(unseen, dtype=np.float64)
    out = np.zeros_like(seen)
    ok = (seen > 0) & (unseen > 0)
    out[ok] = 2 * seen[ok] * unseen[ok] / (seen[ok] + unseen[ok])
    return out


class _BiasedArgmax:
    """Top-k predictions at many biases (spec 2.3) for a chunk of rows, without a biased copy of the chunk per bias.

    For k = 1 the columns split into "biased" ones (unseen and in the closed mask: S + b) and "fixed" ones (seen: S;
    outside the mask: -1e10). The fixed block's first arg-max is computed once per chunk. For the biased block,
    float32 rounding is monotone, so the largest fl(S_j + b) is fl(max_j S_j + b) and the columns reaching it are
    among the largest raw scores: keeping the TIE_K largest raw scores per row (once per chunk) gives, per bias, the
    maximum and the lowest column index attaining it, unless all TIE_K tie after rounding (then that row is redone in
    full). Combining both blocks (larger value wins, the lower column index on equal values) is exactly the first
    arg-max of the full biased row, i.e. what the references compute, at the cost of one pass over the chunk.
    k > 1 builds the full biased row per bias and uses topk.
    """

    TIE_K = 8  # raw candidates kept per row; more than TIE_K columns tied after rounding triggers the full path

    def __init__(self, seen_cols: torch.Tensor, closed_cols: torch.Tensor, top_k: int, dev: torch.device) -> None:
        self.k = top_k
        biased = (~seen_cols) & closed_cols  # (P,)
        self.biased_mask = biased.to(dev)
        self.closed_mask = closed_cols.to(dev)
        self.biased_idx = torch.nonzero(biased).flatten().to(dev)  # (Pu,) ascending
        self.fixed_idx = torch.nonzero(~biased).flatten().to(dev)  # (Pf,) ascending
        self.fixed_closed = closed_cols[~biased].to(dev)  # (Pf,)

    def __call__(self, chunk: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
        """chunk (n, P) float32, biases (B,) float32 on the chunk's device -> predicted columns (n, B, k)."""
        if self.k > 1:
            masked = chunk.masked_fill(~self.closed_mask, MASK_VALUE)  # (n, P)
            tops = [torch.where(self.biased_mask, chunk + b, masked).topk(self.k, dim=1).indices for b in biases]
            return torch.stack(tops, dim=1)  # (n, B, k)
        n, p = chunk.shape
        if self.fixed_idx.numel():
            fixed = chunk[:, self.fixed_idx].masked_fill(~self.fixed_closed, MASK_VALUE)  # (n, Pf)
            f_arg = fixed.argmax(dim=1)  # (n,) first max
            f_val, f_col = fixed.gather(1, f_arg[:, None])[:, 0], self.fixed_idx[f_arg]  # (n,), (n,)
        else:
            f_val = torch.full((n,), float("-inf"), device=chunk.device)
            f_col = torch.full((n,), p, device=chunk.device)
        out = torch.empty(n, biases.numel(), 1, dtype=torch.long, device=chunk.device)  # (n, B, 1)
        if not self.biased_idx.numel():
            out[:] = f_col[:, None, None]
            return out
        unseen = chunk[:, self.biased_idx]  # (n, Pu)
        kk = min(self.TIE_K, unseen.shape[1])
        top_val, top_arg = unseen.topk(kk, dim=1)  # (n, K) largest raw scores, descending
        top_col = self.biased_idx[top_arg]  # (n, K)
        for j in range(biases.numel()):
            shifted = top_val + biases[j]  # (n, K) fl(S + b), as a full biased row would hold
            u_val = shifted[:, 0]  # (n,) = max_j fl(S_j + b)
            u_col = torch.where(shifted == u_val[:, None], top_col, p).amin(dim=1)  # (n,) lowest tied column
            if kk < unseen.shape[1]:
                spill = torch.nonzero(shifted[:, -1] == u_val).flatten()  # rows whose tie may extend past K
                if spill.numel():
                    full = unseen[spill] + biases[j]  # (s, Pu)
                    u_col[spill] = self.biased_idx[full.argmax(dim=1)]
            pred = torch.where(u_val > f_val, u_col, torch.where(u_val < f_val, f_col, torch.minimum(u_col, f_col)))
            out[:, j, 0] = pred
        return out


def _mean(x: torch.Tensor) -> float:
    return float(x.sum()) / x.numel()


def _as_long(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to("cpu", torch.long)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _chunks(
    scores: Scores, n: int, chunk_size: int, dev: torch.device, transform: ColumnTransform | None, p: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (lo, hi, float32 chunk (hi - lo, P) on dev), transformed; never copies the whole matrix."""
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        chunk = _read_rows(scores, lo, hi, p).to(dev)  # (hi - lo, P) float32
        if transform is not None:
            chunk = transform(chunk)
            if chunk.shape != (hi - lo, p) or chunk.dtype != torch.float32:
                raise ValueError(
                    f"column_transform returned {tuple(chunk.shape)} {chunk.dtype}; expected ({hi - lo}, {p}) float32"
                )
        yield lo, hi, chunk
        del chunk  # the caller has dropped it too (see `evaluate`), so reading the next block does not add a third


def _read_rows(scores: Scores, lo: int, hi: int, p: int) -> torch.Tensor:
    """Rows lo..hi-1 as a float32 tensor (a view when the input is a float32 tensor: chunks are never modified)."""
    if isinstance(scores, ScoreBlocks):
        block = scores.read(lo, hi)
        if not isinstance(block, torch.Tensor | np.ndarray):
            raise TypeError(f"ScoreBlocks.read({lo}, {hi}) returned {type(block).__name__}; expected a tensor or array")
        if tuple(block.shape) != (hi - lo, p) or _torch_dtype(block.dtype) not in SCORE_DTYPES:
            raise ValueError(
                f"ScoreBlocks.read({lo}, {hi}) returned {tuple(block.shape)} {block.dtype}; "
                f"expected ({hi - lo}, {p}) float32 or float64"
            )
        scores = block
        lo, hi = 0, hi - lo
    if isinstance(scores, torch.Tensor):
        return scores[lo:hi].to(torch.float32)
    return torch.from_numpy(np.array(scores[lo:hi], dtype=np.float32, copy=True))  # memmap-safe


def _torch_dtype(dtype: torch.dtype | np.dtype) -> torch.dtype | None:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}.get(np.dtype(dtype))


def _check_inputs(
    scores,
    attr_labels,
    obj_labels,
    pair_labels,
    pair_attrs,
    pair_objs,
    seen_mask,
    closed_mask,
    top_k: int,
    chunk_size: int,
) -> tuple[int, int]:
    if scores.ndim != 2:
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected (N samples, P pairs)")
    if not isinstance(scores, ScoreBlocks) and _torch_dtype(scores.dtype) not in SCORE_DTYPES:
        raise ValueError(
            f"scores dtype is {scores.dtype}; expected float32 or float64, evaluated in float32 (fp16 breaks the "
            "-1e10 mask, spec 2.1)"
        )
    n, p = scores.shape
    for name, v, size in (
        ("attr_labels", attr_labels, n),
        ("obj_labels", obj_labels, n),
        ("pair_labels", pair_labels, n),
        ("pair_attrs", pair_attrs, p),
        ("pair_objs", pair_objs, p),
        ("seen_mask", seen_mask, p),
        ("closed_mask", closed_mask, p),
    ):
        if tuple(v.shape) != (size,):
            raise ValueError(f"{name} has shape {tuple(v.shape)}; expected ({size},) to match scores {n} x {p}")
    if n == 0:
        raise ValueError("scores has no rows; expected at least one sample")
    labels = _as_long(pair_labels)
    if int(labels.min()) < 0 or int(labels.max()) >= p:
        raise ValueError(f"pair_labels range [{int(labels.min())}, {int(labels.max())}]; expected within [0, {p})")
    if top_k < 1:
        raise ValueError(f"top_k={top_k}; expected >= 1")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; expected >= 1")
    return n, p
