"""The `claims` stage: every paper claim as a paired comparison with a 95% interval and a verdict.

It reads what the method stages published (few-shot runs per (shots, seed) of the dataset the gap is diagnosed on,
`backbone.diagnose.dataset`; per-query AP of OTI on `inversion.dataset` and of OVI on `inversion.text_dataset`; CZSL
per-seed rows of `czsl.dataset`; the gap diagnostics),
evaluates `claims.registry.CLAIMS` (`claims.compute`), and writes the full table (`outputs.TABLE`, what
`bridgeflow summary` and the report lead with), metrics/claims.json (per claim the mean difference, its interval and
the verdict) and plots/claims.csv (the forest plot's data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from pipeline_lib.claims.compute import LEVEL, N_BOOT, Evidence, evaluate_claims
from pipeline_lib.claims.outputs import TABLE
from pipeline_lib.czsl.outputs import RESULTS as CZSL_RESULTS
from pipeline_lib.diagnose.outputs import GAP_DETAILS
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.fewshot.outputs import RESULTS as FEWSHOT_RESULTS
from pipeline_lib.inversion.outputs import PER_QUERY_AP


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_evidence(ctx: StageContext) -> Evidence:
    """Gather the inputs of every claim from the published upstream outputs."""
    fs, dataset = ctx.cfg.fewshot, ctx.cfg.backbone.diagnose.dataset  # the few-shot claims' dataset (its pin)
    fewshot = {}
    for k in fs.shots:
        for seed in fs.seeds:
            run = _json(ctx.input_instance("fewshot_run", dataset=dataset, shots=k, seed=seed) / FEWSHOT_RESULTS)
            if run is None:
                raise FileNotFoundError(f"fewshot_run@{dataset}-{k}-{seed} has no {FEWSHOT_RESULTS}")
            fewshot[k, seed] = {m: float(v["test_acc"]) for m, v in run["methods"].items() if "test_acc" in v}
    frames = [pl.read_parquet(path) for path in _inversion_ap(ctx)]
    czsl_dataset = ctx.cfg.czsl.dataset  # the czsl claims' dataset (its pin); none when no CZSL dataset is listed
    listed = czsl_dataset in ctx.cfg.datasets.czsl
    czsl = (_json(ctx.input_instance("czsl", czsl_dataset=czsl_dataset) / CZSL_RESULTS) if listed else None) or {}
    per_seed = {int(s): rows for s, rows in czsl.get("per_seed", {}).items()}
    context: dict[str, Any] = {}
    gap = _json(ctx.input("diagnose") / GAP_DETAILS) or {}
    if "energy" in gap:
        context["gap_energy"] = gap["energy"]
    context["mean_pooled_backbone"] = czsl.get("global_token") == "patch mean"
    switched: dict[str, list[int]] = {}
    for bank in czsl.get("bank", {}).values():
        for key, chosen in bank.items():  # key: "<row>_<world>"
            counts = switched.setdefault(key.rsplit("_", 1)[0], [0, 0])
            counts[0] += int(chosen["selects_off"])
            counts[1] += 1
    context["bank_selects_off"] = {row: tuple(c) for row, c in switched.items()}
    return Evidence(fewshot=fewshot, per_query_ap=pl.concat(frames) if frames else None, czsl=per_seed or None,
                    context=context)


def _inversion_ap(ctx: StageContext) -> list[Path]:
    """The per-query AP tables of the OTI and OVI instances the claims compare (`inversion.dataset`,
    `inversion.text_dataset`), of those that are listed and published."""
    inv, datasets = ctx.cfg.inversion, ctx.cfg.datasets
    found = []
    for stage, key, name, listed in (("oti", "image_dataset", inv.dataset, datasets.image_retrieval),
                                     ("ovi", "text_dataset", inv.text_dataset, datasets.text_retrieval)):
        if name in listed and (path := ctx.input_instance(stage, **{key: name}) / PER_QUERY_AP).is_file():
            found.append(path)
    return found


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per claim: the mean difference (the one number to compare), its interval and how it was computed (over how
    many seeds or queries) as text, and the verdict."""
    out: dict[str, Any] = {}
    for r in rows:
        measured = all(isinstance(r.get(k), (int, float)) for k in ("mean", "low", "high"))
        out[r["id"]] = ({"difference": r["mean"], "interval": f"[{r['low']:+.2f}, {r['high']:+.2f}]",
                         "over": r["interval"]} if measured else {}) | {"verdict": r["verdict"]}
    return out


def run_claims(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point: evaluate every claim, write the table and the forest-plot data."""
    rows = evaluate_claims(load_evidence(ctx))
    write_json(ctx.output() / TABLE, {"level": LEVEL, "bootstrap_resamples": N_BOOT, "claims": rows}, indent=1)
    write_json(ctx.metrics(), headline(rows), indent=1)
    write_csv(ctx.plot("claims"), ["claim", "metric", "mean", "low", "high", "verdict"],
              [[r["id"], r["metric"], r.get("mean", ""), r.get("low", ""), r.get("high", ""), r["verdict"]]
               for r in rows])
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("holds", "refuted", "undecided", "not run")}
    return {"claims": len(rows), **counts}
