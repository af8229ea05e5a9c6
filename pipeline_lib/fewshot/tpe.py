"""Independent TPE with optuna 4.4's default settings, on observations kept in numpy arrays.

Why it exists: the spec's search is `TPESampler(seed)` with optuna 4.4.0's defaults (independent per parameter, no
constant liar). Optuna re-reads every past trial as Python objects for every `suggest_float` and evaluates its
truncated-normal special functions per element in Python (O(n) Python per call, O(n^2) per study): 20-50 s of
sampler CPU per 1000-trial, 7-parameter search, and the pipeline runs 90 of them. This sampler keeps the finished
trials in growing numpy columns (O(1) Python per trial) and runs optuna 4.4's rules with vectorised numpy/torch:

- the first 10 suggestions are uniform draws from a separate RandomState(seed), like TPESampler's RandomSampler(seed);
- the finished trials split into the best gamma(n) = min(ceil(0.1 n), 25) ("below") and the rest (stable sort, so ties
  keep trial order), each side in trial-number order;
- each side is a truncated-normal Parzen mixture on [low, high]: one kernel per observation (weights flat, or beyond
  25 observations a linear ramp over the oldest) plus the prior N((low + high) / 2, high - low) of weight 1;
  bandwidth = the larger gap to the sorted neighbours among the observations, the prior mean and the endpoints, the
  outermost points using their inner gap only (consider_endpoints=False), clipped to
  [(high - low) / min(100, n + 2), high - low] (magic clip). Optuna 5 no longer counts the prior mean as a
  neighbour, so the installed Optuna's TPESampler(multivariate=False, constant_liar=False) is not 4.4's algorithm;
- 24 candidates are drawn from the below mixture (RandomState(seed) stream) and the one maximising
  log l(x) - log g(x) is suggested (first maximum).

The random streams and the operation order are optuna 4.4's, so the split and the kernels are bit-identical and the
draws equal to rounding: optuna 4.4 inverts the normal CDF by bisection (5.x by Newton steps to rtol 1e-8), this
sampler in closed form (torch.special, float64). With the same seed it reproduced optuna 4.4.0's TPESampler(seed)
trajectory for all 1000 trials of a 7-parameter search (to 1e-6), in 1/10 of the CPU time; tests/test_fewshot_tpe.py
pins the pieces against Optuna's private classes and a recorded 4.4.0 trajectory. Candidates are clipped to
[low, high] (a rounding overshoot would break the blend's non-negative parameters; Optuna does not clip).

A trial's suggestions are computed in one pass over (parameters x kernels) arrays (Optuna's relative-sampling hook,
in the previous trial's suggestion order): the same random stream as one by one, a third of the numpy calls.

Scope: single-objective studies, uniform float parameters suggested in every trial, trials run one at a time
(n_jobs = 1); anything else raises instead of silently departing from TPE.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

N_STARTUP_TRIALS = 10  # TPESampler default: random suggestions before the model is used
N_EI_CANDIDATES = 24  # TPESampler default: candidates drawn from l(x) per suggestion
PRIOR_WEIGHT = 1.0  # TPESampler default weight of the prior kernel


def gamma(n: int) -> int:
    """Number of "below" (best) trials out of n finished ones (Optuna's default_gamma)."""
    return min(math.ceil(0.1 * n), 25)


def kernel_weights(n: int) -> np.ndarray:
    """Optuna's default_weights: flat up to 25 observations, then a linear ramp from 1/n for the oldest n - 25."""
    if n == 0:
        return np.asarray([])
    if n < 25:
        return np.ones(n)
    return np.concatenate([np.linspace(1.0 / n, 1.0, num=n - 25), np.ones(25)])


@functools.lru_cache(maxsize=8)
def mixture_weights(n: int) -> np.ndarray:
    """Normalised weights (n + 1,) of n observation kernels and the prior (read-only; cached, both sides of every
    parameter share them within a trial)."""
    weights = np.append(kernel_weights(n), [PRIOR_WEIGHT])
    weights = weights / weights.sum()
    weights.flags.writeable = False
    return weights


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _special(fn, x: np.ndarray) -> np.ndarray:
    """Apply a float64 torch.special function to a numpy array."""
    return fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def log_gauss_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(Phi(b) - Phi(a)) elementwise for a <= b, in Optuna's three cases (left tail, right tail by symmetry,
    central via log1p) so that no case cancels catastrophically."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    left, right = b <= 0, a > 0
    if not (left.any() or right.any()):  # the usual TPE case: every kernel's mean lies inside [low, high]
        tails = _special(torch.special.ndtr, np.concatenate([a.ravel(), -b.ravel()]))  # Phi(a), Phi(-b)
        return np.log1p(-tails[: a.size] - tails[a.size:]).reshape(a.shape)
    out = np.empty(a.shape)
    central = ~(left | right)

    def left_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        log_hi, log_lo = _special(torch.special.log_ndtr, hi), _special(torch.special.log_ndtr, lo)
        return log_hi + np.log1p(-np.exp(log_lo - log_hi))

    out[left] = left_mass(a[left], b[left])
    out[right] = left_mass(-b[right], -a[right])
    out[central] = np.log1p(-_special(torch.special.ndtr, a[central]) - _special(torch.special.ndtr, -b[central]))
    return out


def ndtri_exp(y: np.ndarray) -> np.ndarray:
    """x with log Phi(x) = y (y <= 0); through 1 - Phi = -expm1(y) near y = 0, where exp(y) rounds to 1."""
    with np.errstate(divide="ignore", over="ignore"):
        near_one = y > -math.log(2)
        return np.where(near_one, -_special(torch.special.ndtri, -np.expm1(y)),
                        _special(torch.special.ndtri, np.exp(y)))


def truncnorm_ppf(q: np.ndarray, a: np.ndarray, b: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
    """Inverse CDF at q of N(0, 1) truncated to [a, b] (log_mass = log_gauss_mass(a, b)), Optuna's formulation:
    left-tail arithmetic for a < 0, the mirrored problem otherwise."""
    left = a < 0
    with np.errstate(divide="ignore"):
        y = np.where(left, np.logaddexp(_special(torch.special.log_ndtr, a), np.log(q) + log_mass),
                     np.logaddexp(_special(torch.special.log_ndtr, -b), np.log1p(-q) + log_mass))
    x = ndtri_exp(y)
    out = np.where(left, x, -x)
    out = np.where(q == 0, a, np.where(q == 1, b, out))
    return np.where(a == b, np.nan, out)


def below_mask(values: np.ndarray, maximize: bool) -> np.ndarray:
    """(n,) True for the gamma(n) best values in trial order; ties keep the earlier trial first (Optuna's stable
    `sorted(..., reverse=True)`)."""
    order = np.argsort(-values if maximize else values, kind="stable")
    mask = np.zeros(values.shape[0], dtype=bool)
    mask[order[: gamma(values.shape[0])]] = True
    return mask


class ParzenMixture:
    """Truncated-normal Parzen estimator of one float parameter on [low, high] (observations in trial order).

    Given obs (P, n) and low/high (P,), it holds P such mixtures, one per row, with the same operations row by row:
    a trial's P suggestions then cost one pass of numpy calls instead of P (the calls, not the arithmetic, are the
    cost at these sizes). Attributes are (K,) for one parameter and (P, K) for rows.
    """

    def __init__(self, obs: np.ndarray, low: float | np.ndarray, high: float | np.ndarray) -> None:
        obs = np.asarray(obs, dtype=float)
        self.rows = obs.ndim == 2
        self.low, self.high = low, high
        o = obs if self.rows else obs[None, :]  # (P, n)
        lo = np.asarray(low, dtype=float).reshape(-1, 1)  # (P, 1)
        hi = np.asarray(high, dtype=float).reshape(-1, 1)
        self._lo, self._hi = lo, hi
        n = o.shape[1]
        self.weights = mixture_weights(n)  # (K,) = n kernels + the prior
        mus = np.concatenate([o, 0.5 * (lo + hi)], axis=1)  # (P, K)
        sigmas = np.concatenate([self._bandwidths(o, lo, hi), hi - lo], axis=1)  # (P, K)
        a = (lo - mus) / sigmas  # (P, K) standardised bounds
        b = (hi - mus) / sigmas
        self._mus, self._sigmas, self._a, self._b = mus, sigmas, a, b
        self._log_mass = log_gauss_mass(a, b)  # (P, K) log normaliser of each truncated kernel

    def _out(self, x: np.ndarray) -> np.ndarray:
        return x if self.rows else x[0]

    mus = property(lambda self: self._out(self._mus))
    sigmas = property(lambda self: self._out(self._sigmas))
    a = property(lambda self: self._out(self._a))
    b = property(lambda self: self._out(self._b))
    log_mass = property(lambda self: self._out(self._log_mass))

    @staticmethod
    def _bandwidths(obs: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Optuna 4.4's univariate rule, per row of obs (P, n): the larger gap to the sorted neighbours among the
        observations, the prior mean and the endpoints; the outermost of those points use their inner gap only
        (consider_endpoints=False); magic-clipped to [(high - low) / min(100, n + 2), high - low]. (Optuna 5 dropped
        the prior mean from the neighbours.) Same operations as optuna 4.4.0's _calculate_numerical_distributions."""
        n = obs.shape[1]
        with_prior = np.concatenate([obs, 0.5 * (low + high)], axis=1)  # (P, n + 1)
        order = np.argsort(with_prior, axis=1)
        ext = np.empty((obs.shape[0], n + 3), dtype=float)  # low, sorted points, high
        ext[:, :1], ext[:, -1:] = low, high
        ext[:, 1:-1] = np.take_along_axis(with_prior, order, axis=1)
        sig = np.maximum(ext[:, 1:-1] - ext[:, :-2], ext[:, 2:] - ext[:, 1:-1])
        if ext.shape[1] >= 4:  # consider_endpoints=False
            sig[:, 0] = ext[:, 2] - ext[:, 1]
            sig[:, -1] = ext[:, -2] - ext[:, -3]
        sig = np.take_along_axis(sig, np.argsort(order, axis=1), axis=1)[:, :n]
        min_sigma = (high - low) / min(100.0, 1.0 + (n + 1))  # n kernels + the prior
        return np.clip(sig, min_sigma, high - low)

    def sample(self, rng: np.random.RandomState, size: int) -> np.ndarray:
        """`size` draws in [low, high] per mixture ((size,) or (P, size)): a kernel by weight, then its truncated
        normal by inverse CDF; rng is consumed as Optuna does (choice, then uniform quantiles), row after row."""
        p = self._mus.shape[0]
        active = np.empty((p, size), dtype=np.int64)
        q = np.empty((p, size))
        for r in range(p):
            active[r] = rng.choice(self.weights.shape[0], p=self.weights, size=size)
            q[r] = rng.uniform(low=0, high=1, size=size)

        def pick(arr: np.ndarray) -> np.ndarray:
            return np.take_along_axis(arr, active, axis=1)  # (P, size)

        x = truncnorm_ppf(q, pick(self._a), pick(self._b), pick(self._log_mass))
        return self._out(np.clip(x * pick(self._sigmas) + pick(self._mus), self._lo, self._hi))

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """Mixture log-density at points x ((S,), or (P, S) for rows) in [low, high] -> the same shape: log-sum-exp
        over the weighted kernels.

        Each kernel's constant part (weight, truncation mass, 1/sigma, 1/sqrt(2 pi)) is folded into one term per
        kernel, so only the quadratic is computed per point and kernel (Optuna evaluates the same terms separately)."""
        xs = np.asarray(x, dtype=float) if self.rows else np.asarray(x, dtype=float)[None, :]  # (P, S)
        log_coef = np.log(self.weights) - self._log_mass - np.log(self._sigmas) - _LOG_SQRT_2PI  # (P, K)
        lp = xs[:, :, None] - self._mus[:, None, :]  # (P, S, K)
        lp /= self._sigmas[:, None, :]
        np.square(lp, out=lp)
        lp *= -0.5
        lp += log_coef[:, None, :]
        top = lp.max(axis=2)  # (P, S)
        top[np.isneginf(top)] = 0
        lp -= top[:, :, None]
        torch.exp_(torch.from_numpy(lp))  # in place on lp; torch's vectorised exp is ~2x numpy's in float64
        with np.errstate(divide="ignore"):
            return self._out(np.log(lp.sum(axis=2)) + top)


def best_candidate(samples: np.ndarray, below: ParzenMixture, above: ParzenMixture) -> float | np.ndarray:
    """The candidate maximising log l(x) - log g(x) (first maximum); per row for (P, S) samples of row mixtures."""
    acq = below.log_pdf(samples) - above.log_pdf(samples)
    if samples.ndim == 1:
        return float(samples[int(np.argmax(acq))])
    return samples[np.arange(samples.shape[0]), np.argmax(acq, axis=1)]  # (P,)


class _History:
    """Finished trials in trial order: objective values (n,) and one float column per parameter (NaN = absent)."""

    def __init__(self) -> None:
        self.n = 0
        self._values = np.empty(64)
        self._columns: dict[str, np.ndarray] = {}
        self._split: tuple[int, np.ndarray] | None = None  # (n, below mask) of the last split

    def add(self, value: float, params: dict[str, float]) -> None:
        if self.n == self._values.shape[0]:
            self._values = np.concatenate([self._values, np.empty(self.n)])
            for name, col in self._columns.items():
                self._columns[name] = np.concatenate([col, np.full(self.n, np.nan)])
        self._values[self.n] = value
        for name, x in params.items():
            if name not in self._columns:
                self._columns[name] = np.full(self._values.shape[0], np.nan)
            self._columns[name][self.n] = x
        self.n += 1

    def column(self, name: str) -> np.ndarray:
        col = self._columns.get(name)
        return np.full(self.n, np.nan) if col is None else col[: self.n]

    def below_mask(self, maximize: bool) -> np.ndarray:
        """below_mask of the current values, computed once per number of trials."""
        if self._split is None or self._split[0] != self.n:
            self._split = (self.n, below_mask(self._values[: self.n], maximize))
        return self._split[1]


class IndependentTPESampler(BaseSampler):
    """Optuna sampler: independent TPE with Optuna 4.4's defaults (see the module docstring), O(n) numpy per suggestion.

    Plug it into `optuna.create_study(sampler=...)`; the study and trial machinery stay Optuna's.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._rng = np.random.RandomState(seed)  # TPE candidate draws (TPESampler._rng)
        self._startup_rng = np.random.RandomState(seed)  # startup draws (TPESampler._random_sampler)
        self._history = _History()
        self._study_key: tuple[int, int] | None = None
        self._n_scanned = 0  # trials of the study already absorbed into the history
        self._layout: dict[str, BaseDistribution] = {}  # the last recorded trial's distributions, in suggestion order

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._startup_rng.seed()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The previous trial's parameters, in the order it suggested them: a trial's suggestions are drawn together
        (sample_relative), in that order. Each is still independent TPE on its own column; with the same parameters
        suggested in the same order every trial (the blend search) the random stream is the one-by-one one and the
        densities equal to rounding (1000-trial blend-search trajectories came out identical, 2.5x less CPU)."""
        self._absorb(study)
        return dict(self._layout) if self._history.n >= N_STARTUP_TRIALS else {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        for name, dist in search_space.items():
            self._check(study, name, dist)
        hist = self._history
        below = hist.below_mask(study.direction == StudyDirection.MAXIMIZE)
        cols = np.stack([hist.column(name) for name in search_space])  # (P, n)
        if np.isnan(cols).any():
            raise ValueError("IndependentTPESampler: every parameter must be suggested in every trial (conditional "
                             "search spaces: use fewshot.search.sampler=optuna_tpe)")
        low = np.array([d.low for d in search_space.values()])  # (P,)
        high = np.array([d.high for d in search_space.values()])
        l_x = ParzenMixture(cols[:, below], low, high)
        g_x = ParzenMixture(cols[:, ~below], low, high)
        picks = best_candidate(l_x.sample(self._rng, N_EI_CANDIDATES), l_x, g_x)  # (P,)
        return {name: float(v) for name, v in zip(search_space, picks, strict=True)}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._absorb(study)

    def _check(self, study: optuna.Study, param_name: str, dist: BaseDistribution) -> None:
        if not isinstance(dist, FloatDistribution) or dist.log or dist.step is not None:
            raise ValueError(f"IndependentTPESampler: parameter {param_name!r} has {dist!r}; only uniform "
                             "suggest_float(name, low, high) is supported (use fewshot.search.sampler=optuna_tpe)")
        if len(study.directions) != 1:
            raise ValueError(f"IndependentTPESampler: single-objective studies only, got {len(study.directions)} "
                             "directions")

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Startup draws, and TPE for a parameter the previous trial did not suggest."""
        dist = param_distribution
        self._check(study, param_name, dist)
        self._absorb(study)
        hist = self._history
        if hist.n < N_STARTUP_TRIALS:
            u = self._startup_rng.uniform(np.array([dist.low]), np.array([dist.high]))[0]
            return float(min(u, np.nextafter(dist.high, dist.high - 1)))  # RandomSampler keeps values < high
        below = hist.below_mask(study.direction == StudyDirection.MAXIMIZE)
        col = hist.column(param_name)
        present = ~np.isnan(col)
        l_x = ParzenMixture(col[below & present], dist.low, dist.high)
        g_x = ParzenMixture(col[~below & present], dist.low, dist.high)
        return best_candidate(l_x.sample(self._rng, N_EI_CANDIDATES), l_x, g_x)

    def _absorb(self, study: optuna.Study) -> None:
        """Add the study's newly finished trials to the history (in trial order; the running trial stops the scan)."""
        key = (id(study._storage), study._study_id)
        if key != self._study_key:  # a sampler reused for another study starts from that study's trials
            self._study_key, self._history, self._n_scanned, self._layout = key, _History(), 0, {}
        trials = study.get_trials(deepcopy=False)
        i = self._n_scanned
        while i < len(trials) and trials[i].state.is_finished():
            self._record(trials[i])
            i += 1
        self._n_scanned = i
        if any(t.state.is_finished() for t in trials[i + 1:]):
            raise RuntimeError(f"IndependentTPESampler: trial {trials[i].number} is unfinished while later trials "
                               "finished; only sequential studies (n_jobs=1) are supported")

    def _record(self, t: FrozenTrial) -> None:
        if t.state == TrialState.PRUNED:
            raise ValueError(f"IndependentTPESampler: trial {t.number} was pruned; pruned trials are not supported")
        if t.state != TrialState.COMPLETE:  # failed trials carry no value and are not observations (as in Optuna)
            return
        params = {name: t.distributions[name].to_internal_repr(v) for name, v in t.params.items()
                  if isinstance(t.distributions[name], FloatDistribution)}
        self._history.add(float(t.value), params)
        self._layout = dict(t.distributions)
