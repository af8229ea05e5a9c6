"""Confidence intervals for paired method comparisons, and the verdict they support.

A claim such as "B beats A" is judged on paired differences (same seeds, or same queries), because pairing
removes the shared variation (seed luck, query difficulty) that would otherwise swamp small effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

# Upper bound on the scratch memory of one bootstrap chunk (resample indices + gathered values), in bytes.
_CHUNK_BYTES = 100_000_000


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a mean difference; `method` says in words how it was obtained."""

    mean: float
    low: float
    high: float
    n: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for JSON reports."""
        return asdict(self)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")


def _as_finite_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """1-D float64 copy; NaN/inf rejected because they would silently poison every bound."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return arr


def paired_t_interval(diffs: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Student-t interval for the mean of paired differences (e.g. one per seed).

    The t quantile, not the normal one, is what keeps coverage honest at the handful of seeds we can afford.
    """
    _check_level(level)
    d = _as_finite_1d(diffs, "diffs")
    n = int(d.size)
    if n < 2:
        raise ValueError(f"paired_t_interval needs at least 2 differences to estimate a spread, got {n}")
    method = f"paired t over {n} seeds"
    if np.all(d == d[0]):
        # sd = 0: no spread to widen by; return the exact point rather than rounding noise around it.
        x = float(d[0])
        return Interval(mean=x, low=x, high=x, n=n, method=method)
    mean = float(d.mean())
    half = float(sps.t.ppf((1.0 + level) / 2.0, df=n - 1)) * float(d.std(ddof=1)) / np.sqrt(n)
    return Interval(mean=mean, low=mean - half, high=mean + half, n=n, method=method)


def paired_bootstrap_interval(
    a: np.ndarray,
    b: np.ndarray,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval for mean(b - a) over items both methods were scored on (e.g. queries).

    Items are resampled jointly for both methods so the pairing survives; no normality is assumed, which suits
    bounded, skewed per-item scores such as average precision. Resamples are drawn in chunks so that memory
    stays near `_CHUNK_BYTES` however many items there are; the result depends only on the inputs and `seed`.
    """
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    a_arr = _as_finite_1d(a, "a")
    b_arr = _as_finite_1d(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must score the same items: shapes {a_arr.shape} and {b_arr.shape} differ")
    n = int(a_arr.size)
    if n < 1:
        raise ValueError("paired_bootstrap_interval needs at least 1 item, got 0")
    d = b_arr - a_arr
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_BYTES // (16 * n))  # 8 bytes of index + 8 bytes of gathered value per cell
    boot = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - level
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(
        mean=float(d.mean()),
        low=float(low),
        high=float(high),
        n=n,
        method=f"paired bootstrap over {n} items ({n_boot} resamples)",
    )


def verdict(interval: Interval, higher_is_better: bool = True) -> str:
    """Return "holds" (interval wholly on the claimed side of 0), "refuted" (wholly on the other) or "undecided".

    The claimed side is positive when higher is better (e.g. accuracy gain) and negative otherwise (e.g. error).
    """
    if interval.low > 0.0:
        return "holds" if higher_is_better else "refuted"
    if interval.high < 0.0:
        return "refuted" if higher_is_better else "holds"
    return "undecided"
