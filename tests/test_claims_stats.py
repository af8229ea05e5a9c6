"""Statistics core of claims: exact t bounds, input errors, bootstrap determinism, and calibration by simulation.

The calibration tests use fixed seeds, so they are deterministic; their tolerances are nonetheless set a few binomial
standard errors wide so that a correct method passes for any seed while a wrong quantile or a broken pairing fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from pipeline_lib.claims import stats as claims_stats
from pipeline_lib.claims.stats import Interval, paired_bootstrap_interval, paired_t_interval, verdict


def _t_verdict_rates(mean: float, sd: float, n: int, experiments: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    draws = rng.normal(mean, sd, size=(experiments, n))
    verdicts = [verdict(paired_t_interval(row)) for row in draws]
    return {v: verdicts.count(v) / experiments for v in ("holds", "refuted", "undecided")}


def _bootstrap_verdict_rates(effect: float, items: int, experiments: int, seed: int) -> dict[str, float]:
    # A large shared per-item component (query difficulty) makes pairing matter: resampling a and b independently
    # would widen the interval several-fold and push null coverage towards 1.
    rng = np.random.default_rng(seed)
    verdicts = []
    for k in range(experiments):
        difficulty = rng.normal(0.0, 1.0, items)
        a = difficulty + rng.normal(0.0, 0.3, items)
        b = difficulty + effect + rng.normal(0.0, 0.3, items)
        verdicts.append(verdict(paired_bootstrap_interval(a, b, n_boot=500, seed=k)))
    return {v: verdicts.count(v) / experiments for v in ("holds", "refuted", "undecided")}


# --- calibration -----------------------------------------------------------------------------------------------


def test_t_interval_null_coverage_is_nominal() -> None:
    # 2000 experiments: binomial sd of the coverage is sqrt(.95 * .05 / 2000) ~ 0.005, so 0.93-0.97 is ~4 sd.
    # A normal quantile instead of t at n=5 would give ~0.88 and fail.
    rates = _t_verdict_rates(mean=0.0, sd=1.0, n=5, experiments=2000, seed=20240601)
    assert 0.93 <= rates["undecided"] <= 0.97, rates
    # Misses split roughly evenly between the two sides.
    assert abs(rates["holds"] - rates["refuted"]) < 0.025, rates


def test_t_interval_detects_known_effect() -> None:
    # Effect 1.0, sd 0.5, n=5: the exact power is a noncentral-t tail, ~0.91. 2000 experiments give a binomial
    # sd of ~0.0064, so the observed rate must be within 0.02 (~3 sd) of it, and comfortably above 0.85.
    n, effect, sd = 5, 1.0, 0.5
    crit = sps.t.ppf(0.975, n - 1)
    power = sps.nct.sf(crit, n - 1, effect / sd * n**0.5)
    holds = _t_verdict_rates(mean=effect, sd=sd, n=n, experiments=2000, seed=1)["holds"]
    refuted = _t_verdict_rates(mean=-effect, sd=sd, n=n, experiments=2000, seed=2)["refuted"]
    for rate in (holds, refuted):
        assert rate > 0.85
        assert abs(rate - power) < 0.02, (rate, power)


def test_bootstrap_null_coverage_is_near_nominal() -> None:
    # The percentile bootstrap at 200 items is slightly anti-conservative (normal rather than t tails, variance
    # divided by n not n-1): 4000 simulated experiments of this design gave 0.9465. With 400 experiments the
    # binomial sd is ~0.011, so 0.91-0.98 is ~3 sd either side; resampling a and b independently (a broken
    # pairing) gives ~1.0 here and fails, as would an interval at a materially lower level than asked for.
    rates = _bootstrap_verdict_rates(effect=0.0, items=200, experiments=400, seed=7)
    assert 0.91 <= rates["undecided"] <= 0.98, rates


def test_bootstrap_detects_known_effect() -> None:
    # Difference sd is 0.3 * sqrt(2) ~ 0.42, so an effect of 0.15 over 200 items is ~5 standard errors.
    assert _bootstrap_verdict_rates(effect=0.15, items=200, experiments=100, seed=8)["holds"] > 0.9
    assert _bootstrap_verdict_rates(effect=-0.15, items=200, experiments=100, seed=9)["refuted"] > 0.9


# --- exact checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_t_interval_matches_hand_computation(level: float) -> None:
    diffs = [0.1, 0.3, -0.2, 0.5]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((x - mean) ** 2 for x in diffs) / (n - 1)) ** 0.5
    half = sps.t.ppf((1 + level) / 2, n - 1) * sd / n**0.5
    iv = paired_t_interval(diffs, level=level)
    assert iv.n == 4
    assert iv.mean == pytest.approx(0.175)
    assert iv.low == pytest.approx(mean - half, rel=1e-12)
    assert iv.high == pytest.approx(mean + half, rel=1e-12)
    assert iv.method == "paired t over 4 seeds"
    assert verdict(iv) == "undecided"


def test_t_interval_of_identical_diffs_is_the_point() -> None:
    iv = paired_t_interval(np.full(3, 0.1))
    assert (iv.mean, iv.low, iv.high) == (0.1, 0.1, 0.1)
    assert verdict(iv) == "holds"
    assert verdict(paired_t_interval([0.0, 0.0])) == "undecided"


@pytest.mark.parametrize("diffs", [[], [0.4]])
def test_t_interval_needs_two_diffs(diffs: list[float]) -> None:
    with pytest.raises(ValueError, match=f"at least 2 differences.*got {len(diffs)}"):
        paired_t_interval(diffs)


def test_nan_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        paired_t_interval([0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap_interval(np.array([0.1, np.nan]), np.array([0.2, 0.3]))


def test_bootstrap_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\) differ"):
        paired_bootstrap_interval(np.zeros(3), np.zeros(4))


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(300), rng.random(300)
    first = paired_bootstrap_interval(a, b, seed=11)
    assert paired_bootstrap_interval(a, b, seed=11) == first
    assert paired_bootstrap_interval(a, b, seed=12) != first
    assert first.mean == pytest.approx(float(np.mean(b - a)))
    assert first.low < first.mean < first.high
    assert first.method == "paired bootstrap over 300 items (2000 resamples)"
    assert first.to_dict() == {
        "mean": first.mean,
        "low": first.low,
        "high": first.high,
        "n": 300,
        "method": first.method,
    }


def test_bootstrap_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(500), rng.random(500)
    whole = paired_bootstrap_interval(a, b, n_boot=300, seed=5)
    # Budget for 7 resamples per chunk, so 300 resamples take 43 chunks, the last one partial.
    monkeypatch.setattr(claims_stats, "_CHUNK_BYTES", 7 * 16 * 500)
    assert paired_bootstrap_interval(a, b, n_boot=300, seed=5) == whole


def test_higher_is_better_false_flips_the_verdict() -> None:
    up = Interval(mean=0.5, low=0.2, high=0.8, n=5, method="test")
    down = Interval(mean=-0.5, low=-0.8, high=-0.2, n=5, method="test")
    straddle = Interval(mean=0.1, low=-0.2, high=0.4, n=5, method="test")
    assert (verdict(up), verdict(down), verdict(straddle)) == ("holds", "refuted", "undecided")
    assert verdict(up, higher_is_better=False) == "refuted"
    assert verdict(down, higher_is_better=False) == "holds"
    assert verdict(straddle, higher_is_better=False) == "undecided"
