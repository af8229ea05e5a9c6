"""Seeded Optuna TPE search of the 7 blend scalars on the val split (spec 4).

The similarity maps are computed once; a trial only blends them (BlendEvaluator: exact, pruned to a few candidate
classes per query). The sampler is independent TPE with optuna 4.4's defaults, by default the numpy implementation
in fewshot.tpe: Optuna's own re-reads every past trial in Python per suggestion, which made the sampler, not the
objective, most of the cost of a 1000-trial search.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import optuna
import torch

from pipeline_lib.engine.parallel import torch_threads
from pipeline_lib.fewshot.config import PARAM_NAMES, BlendParams, SearchConfig
from pipeline_lib.fewshot.logits import BlendEvaluator, subset_mask
from pipeline_lib.fewshot.tpe import IndependentTPESampler

log = logging.getLogger(__name__)


def searched_names(subset: str) -> list[str]:
    """Parameters a subset actually uses: sharpness + weight per term, sigma only with z2 or z3 (spec 4)."""
    use1, use2, use3 = subset_mask(subset)
    names = []
    if use2 or use3:
        names.append("sigma")
    for used, a, lam in ((use1, "alpha", "lambda1"), (use2, "beta", "lambda2"), (use3, "gamma", "lambda3")):
        if used:
            names += [a, lam]
    return [n for n in PARAM_NAMES if n in names]  # fixed suggestion order: it drives the seeded TPE stream


# fewshot.search.sampler -> factory(seed): independent TPE with optuna 4.4's default settings (spec 4, trap 17), ours
# (4.4's algorithm, fast) or the installed Optuna's (4.4's flags, Optuna 5's bandwidth rule, slow); see fewshot.tpe.
SAMPLERS = {
    "tpe": IndependentTPESampler,
    "optuna_tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=False, constant_liar=False),
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The configured TPE sampler, seeded."""
    if name not in SAMPLERS:
        raise ValueError(f"fewshot.search.sampler={name!r}: expected one of {list(SAMPLERS)}")
    return SAMPLERS[name](seed)


@dataclass
class SearchResult:
    """Best parameters (first trial that strictly improved), their val accuracy and the search trace."""

    params: BlendParams
    val_acc: float
    best_trial: int
    n_trials: int
    seconds: float
    full_rescore_fraction: float  # share of query evaluations that the pruning could not certify
    history: list[float] = field(default_factory=list)  # val accuracy per trial
    objective_seconds: float = 0.0  # wall time inside the evaluator; the rest of `seconds` is sampler and Optuna

    def summary(self) -> dict:
        """JSON-friendly view (history left out: it goes to the curves file)."""
        return {
            "params": self.params.model_dump(),
            "val_acc": self.val_acc,
            "best_trial": self.best_trial,
            "n_trials": self.n_trials,
            "seconds": round(self.seconds, 3),
            "full_rescore_fraction": self.full_rescore_fraction,
        }


def search_blend(evaluator: BlendEvaluator, cfg: SearchConfig, seed: int, threads: int | None = 1) -> SearchResult:
    """Run cfg.n_trials sequential TPE trials (n_jobs = 1, cfg.sampler seeded with `seed`) maximising val top-1 (%).

    `threads` sets torch's intra-op threads for the duration (restored after): a trial is a few dozen small ops,
    where waking threads costs more than it saves, badly so on a shared machine. None leaves the setting alone.
    Results do not depend on it.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = searched_names(evaluator.subset)
    ranges = cfg.ranges()
    defaults = {n: 0.0 for n in PARAM_NAMES}  # unused terms: lambda 0 (their sharpness is then irrelevant)
    best: dict = {"acc": -1.0, "trial": -1, "values": dict(defaults)}
    history: list[float] = []
    in_objective = [0.0]

    def objective(trial: optuna.Trial) -> float:
        values = dict(defaults)
        for n in names:
            lo, hi = ranges[n]
            values[n] = trial.suggest_float(n, lo, hi)
        row = torch.tensor([[values[n] for n in PARAM_NAMES]], dtype=torch.float32)  # (1, 7)
        t_obj = time.perf_counter()
        acc = float(evaluator.accuracy(row)[0])
        in_objective[0] += time.perf_counter() - t_obj
        history.append(acc)
        if acc > best["acc"]:  # first strict improvement is kept, as in the official objective
            best.update(acc=acc, trial=trial.number, values=values)
        return acc

    t0 = time.perf_counter()
    with torch_threads(threads) if threads else nullcontext():
        study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg.sampler, seed))
        study.optimize(objective, n_trials=cfg.n_trials, n_jobs=1)
    seconds = time.perf_counter() - t0
    frac = evaluator.n_full_rows / max(evaluator.n_rows, 1)
    log.info("search %s: best val %.2f%% at trial %d of %d in %.1f s (objective %.1f s, %.1f%% rows rescored)",
             evaluator.subset, best["acc"], best["trial"], cfg.n_trials, seconds, in_objective[0], 100 * frac)
    return SearchResult(BlendParams(**best["values"]), best["acc"], best["trial"], cfg.n_trials, seconds, frac,
                        history, in_objective[0])
