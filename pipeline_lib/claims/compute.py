"""Turn the claims into evidence: a paired interval, the number of pairs, a verdict and, where the claim does not
hold, the measurement that explains why.

Intervals (95%, `LEVEL`):
- over seeds (few-shot support sets, CZSL training seeds): Student-t interval of the mean per-seed difference;
- over queries (retrieval): percentile bootstrap of the mean per-query AP difference, `N_BOOT` resamples of the
  test queries with replacement, pairs kept together.
A verdict is "holds" when the interval lies above 0 (below for the gap correlation), "refuted" when it lies on the
other side, and "undecided" when it contains 0: the data cannot tell the effect from seed or query noise.
Differences are in points (accuracy %, mAP x 100, AUC x 100), as the papers report them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from pipeline_lib.claims.registry import CLAIM_SHOTS, CLAIMS, Claim, paper_effect
from pipeline_lib.claims.stats import Interval, paired_bootstrap_interval, paired_t_interval, verdict

LEVEL = 0.95
N_BOOT = 2000
TRAINED_ROWS = ("baseline", "+sa", "+vac", "+kl")  # rows with their own model, hence their own gap measure


@dataclass
class Evidence:
    """Everything the claims read, loaded by the stage (each part None when its stage did not run)."""

    fewshot: dict[tuple[int, int], dict[str, float]] | None = None  # (shots, seed) -> method -> test accuracy (%)
    per_query_ap: pl.DataFrame | None = None  # inversion: direction, method, step, query, split, ap
    czsl: dict[int, dict[str, Any]] | None = None  # seed -> row -> {"closed": {"auc": ...}, "rmg": ...}
    context: dict[str, Any] = field(default_factory=dict)  # diagnostics: gap energy, bank switch-offs, backbone


def claim_shots(shots: list[int]) -> list[int]:
    chosen = [k for k in shots if k in CLAIM_SHOTS]
    return chosen or sorted(shots)


def evaluate_claims(ev: Evidence) -> list[dict[str, Any]]:
    """One result row per claim (per shot count for the few-shot claims), in registry order."""
    rows: list[dict[str, Any]] = []
    for claim in CLAIMS:
        if claim.family == "fewshot":
            shots = sorted({k for k, _ in ev.fewshot}) if ev.fewshot else []
            for k in claim_shots(shots):
                rows.append(_row(claim, _fewshot_interval(claim, ev, k), ev, shots=k))
            if not shots:
                rows.append(_not_run(claim, "the few-shot stages did not run"))
        elif claim.family == "inversion":
            rows.append(_row(claim, _inversion_interval(claim, ev), ev))
        elif claim.family == "czsl":
            rows.append(_row(claim, _czsl_interval(claim, ev), ev))
        else:
            rows.append(_row(claim, _gap_interval(ev), ev))
    return rows


def _fewshot_interval(claim: Claim, ev: Evidence, shots: int) -> Interval | str:
    assert ev.fewshot is not None
    runs = {seed: acc for (k, seed), acc in ev.fewshot.items() if k == shots}
    missing = [s for s, acc in runs.items() if claim.better not in acc or claim.worse not in acc]
    if missing:
        return f"{claim.better} or {claim.worse} missing from the runs of seeds {missing}"
    if len(runs) < 2:
        return f"{len(runs)} seed at {shots} shots: at least 2 are needed for an interval"
    diffs = [runs[s][claim.better] - runs[s][claim.worse] for s in sorted(runs)]
    return paired_t_interval(diffs, LEVEL)


def _inversion_interval(claim: Claim, ev: Evidence) -> Interval | str:
    if ev.per_query_ap is None:
        return "no oti or ovi instance of the claims' datasets ran (inversion.dataset, inversion.text_dataset)"
    test = ev.per_query_ap.filter(pl.col("split") == "test")
    inverted = test.filter(pl.col("method") == claim.better)
    if inverted.is_empty():
        return f"no {claim.better} queries (its dataset is not listed: datasets.image_retrieval / text_retrieval)"
    final = inverted.filter(pl.col("step") == inverted["step"].max()).sort("query")  # the paper's fixed step count
    base = test.filter(pl.col("method") == claim.worse).sort("query")
    if final["query"].to_list() != base["query"].to_list():
        return f"{claim.better} and {claim.worse} were scored on different queries"
    a, b = base["ap"].to_numpy() * 100, final["ap"].to_numpy() * 100
    return paired_bootstrap_interval(a, b, LEVEL, n_boot=N_BOOT, seed=0)


def _czsl_interval(claim: Claim, ev: Evidence) -> Interval | str:
    if not ev.czsl:
        return "the czsl stage did not run"
    seeds = sorted(ev.czsl)
    lacking = [s for s in seeds if claim.better not in ev.czsl[s] or claim.worse not in ev.czsl[s]]
    if lacking:
        return f"rows {claim.better} / {claim.worse} not run (czsl.rows)"
    if len(seeds) < 2:
        return "1 training seed: at least 2 are needed for an interval (czsl.seeds)"
    diffs = [100 * (ev.czsl[s][claim.better]["closed"]["auc"] - ev.czsl[s][claim.worse]["closed"]["auc"])
             for s in seeds]
    return paired_t_interval(diffs, LEVEL)


def gap_correlations(czsl: Mapping[int, Mapping[str, Any]]) -> list[float]:
    """Per seed: Spearman correlation of RMG and closed-world AUC over the trained rows (NaN rows skipped)."""
    out = []
    for seed in sorted(czsl):
        rows = [r for r in TRAINED_ROWS if r in czsl[seed]]
        if len(rows) < 3:
            continue
        rho = sps.spearmanr([czsl[seed][r]["rmg"] for r in rows], [czsl[seed][r]["closed"]["auc"] for r in rows])
        if np.isfinite(rho.statistic):
            out.append(float(rho.statistic))
    return out


def _gap_interval(ev: Evidence) -> Interval | str:
    if not ev.czsl:
        return "the czsl stage did not run"
    rhos = gap_correlations(ev.czsl)
    if len(rhos) < 2:
        return "fewer than 2 seeds with at least 3 trained rows: no interval"
    return paired_t_interval(rhos, LEVEL)


def _not_run(claim: Claim, why: str, shots: int | None = None) -> dict[str, Any]:
    return {**_head(claim, shots), "verdict": "not run", "diagnostic": why}


def _head(claim: Claim, shots: int | None) -> dict[str, Any]:
    key = claim.key if shots is None else f"{claim.key}@{shots}shot"
    return {"id": key, "paper": claim.source, "claim": claim.statement + (f" ({shots} shots)" if shots else ""),
            "metric": claim.metric, "paper_effect": paper_effect(claim, shots)}


def _row(claim: Claim, interval: Interval | str, ev: Evidence, shots: int | None = None) -> dict[str, Any]:
    if isinstance(interval, str):
        return _not_run(claim, interval, shots)
    said = verdict(interval, higher_is_better=claim.higher_is_better)
    row = {**_head(claim, shots), "mean": round(interval.mean, 3), "low": round(interval.low, 3),
           "high": round(interval.high, 3), "n": interval.n, "interval": interval.method, "verdict": said}
    row["diagnostic"] = "" if said == "holds" else diagnose(claim, interval, said, ev)
    return row


def _inversion_by_step(claim: Claim, ap: pl.DataFrame) -> str:
    """Test-query mAP of the baseline and of the inverted queries at every recorded step (points)."""
    test = ap.filter(pl.col("split") == "test")
    base = 100 * test.filter(pl.col("method") == claim.worse)["ap"].mean()
    steps = (test.filter(pl.col("method") == claim.better).group_by("step").agg(pl.col("ap").mean() * 100)
             .sort("step"))
    curve = ", ".join(f"{s}: {m:.1f}" for s, m in steps.iter_rows())
    return f"{claim.worse} {base:.1f}, {claim.better} by step {curve}"


def diagnose(claim: Claim, interval: Interval, said: str, ev: Evidence) -> str:
    """The measurement that explains a refuted or undecided claim."""
    ctx = ev.context
    bounds = f"[{interval.low:+.2f}, {interval.high:+.2f}]"
    if said == "undecided":
        noise = f"the interval {bounds} contains 0"
    else:
        noise = f"the interval {bounds} lies on the side the claim rules out"
    energy = ctx.get("gap_energy")
    if claim.key == "semobridge_vs_control" and energy:
        return (f"{noise}. Only {100 * energy['weak']:.1f}% of the test images' energy lies on the "
                f"{energy['weak_directions']} directions the bridge's truncated pseudo-inverse drops "
                f"({100 * energy['weak_if_uniform']:.1f}% if spread evenly), so the bridged query is nearly the "
                "query itself and the bridge adds little beyond zero-shot + prototype.")
    if claim.key == "sa_vs_baseline" and ctx.get("mean_pooled_backbone"):
        return (f"{noise}. The backbone pools by averaging its patch tokens, so token 0 is the patch mean: SA's max "
                "over [token 0, patches] mostly picks token 0 for the correct composition and adds patch maxima "
                "only to wrong ones. Real CLIP ViTs pool a class token, where SA can add information.")
    if claim.better in ctx.get("bank_selects_off", {}):
        off, tunings = ctx["bank_selects_off"][claim.better]
        return f"{noise}. Validation preferred the bank switched off in {off} of {tunings} tunings (seeds x worlds)."
    if claim.family == "inversion" and ev.per_query_ap is not None:
        return f"{noise} over {interval.n} test queries; {_inversion_by_step(claim, ev.per_query_ap)}."
    if claim.family == "czsl_gap":
        return f"{noise}: across the trained rows RMG and AUC do not move together consistently over seeds."
    return f"{noise}: over {interval.n} seeds the effect cannot be told from seed noise." if said == "undecided" \
        else f"{noise}."
