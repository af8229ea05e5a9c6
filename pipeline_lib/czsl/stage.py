"""The `czsl@<dataset>` stage: train and evaluate the SAM-CZSL ablation rows on one CZSL dataset, closed and open world.

A thin entry point: it resolves the inputs through the stage context (the dataset, backbone, features_czsl), loads them
(`czsl.inputs`), runs the ablation on the loaded data (`czsl.experiment.run_experiment`) once per training seed
(`czsl.seeds`) and writes the outputs: per seed a folder seed<k>/ (head checkpoints, test score matrices, stream
orders, full results; a seed whose results.json exists is not rerun, so a killed run resumes), results.json with
every seed's metric rows (what the claims compare), the metrics file (the standard table per row, means over
seeds), and the plots czsl_curve (seen / unseen trade-off on test) and czsl_loss (training loss per step), both of
the first seed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_lib.czsl.config import CzslConfig, dataset_config
from pipeline_lib.czsl.experiment import Backend, CzslOutcome, run_experiment
from pipeline_lib.czsl.inputs import load_splits, load_worlds
from pipeline_lib.czsl.outputs import RESULTS
from pipeline_lib.czsl.train import global_token_kind, seed_everything
from pipeline_lib.czsl.worlds import METRIC_KEYS
from pipeline_lib.datasets.sources import czsl_entry, czsl_source
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json

log = logging.getLogger(__name__)

STORE = "czsl.zarr"  # the CZSL feature store inside a features_czsl instance's output folder
LOSS = "loss.csv"


def seed_dir(out_dir: Path, seed: int) -> Path:
    return out_dir / f"seed{seed}"


def row_metrics(results: dict[str, Any], worlds: list[str]) -> dict[str, Any]:
    """Per row: the headline numbers of each world and the gap measures (one seed)."""
    rows = {}
    for name, r in results["rows"].items():
        rows[name] = {w: {k: float(r[w][k]) for k in METRIC_KEYS} for w in worlds}
        rows[name].update(rmg=float(r["gap"]["rmg"]), centroid_gap=float(r["gap"]["centroid_gap"]),
                          best_epoch=int(r["best_epoch"]))
    return rows


def summarise(per_seed: dict[int, dict[str, Any]], worlds: list[str]) -> dict[str, Any]:
    """Per row and world the mean over seeds of every evaluator number, and the mean gap (the manifest's summary)."""
    first = next(iter(per_seed.values()))
    rows: dict[str, Any] = {}
    for name in first:
        runs = [rows_of_seed[name] for rows_of_seed in per_seed.values()]
        rows[name] = {w: {k: round(float(np.mean([r[w][k] for r in runs])), 4) for k in METRIC_KEYS} for w in worlds}
        rows[name]["rmg"] = round(float(np.mean([r["rmg"] for r in runs])), 4)
    return rows


def headline(rows: dict[str, Any], worlds: list[str]) -> dict[str, Any]:
    """The metrics file: per row the standard table's numbers in the closed world (AUC, HM, S, U) and the open
    world's AUC, means over seeds. Every other number is in results.json (per seed) and the manifest."""
    keys = {"closed": ("auc", "hm", "seen", "unseen"), "open": ("auc",)}
    return {name: {w: {k: row[w][k] for k in keys.get(w, ("auc",))} for w in worlds} for name, row in rows.items()}


def write_loss_csv(path: Path, loss_rows: list[dict]) -> None:
    """Loss terms per logged step and variant (terms a variant lacks are empty cells)."""
    keys = ["variant", "epoch", "step", "loss", "base", "base_vac", "kl"]
    rows = [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in loss_rows]
    write_csv(path, keys, rows)


def write_curve_csv(path: Path, results: dict[str, Any], worlds: list[str]) -> None:
    """Seen/unseen accuracy curve points per ablation row and world."""
    rows = []
    for name in results["rows"]:
        for w in worlds:
            r = results["rows"][name][w]
            for i, (s, u) in enumerate(zip(r["curve_seen"], r["curve_unseen"], strict=True)):
                rows.append([name, w, i, round(u, 6), round(s, 6)])
    write_csv(path, ["row", "world", "point", "unseen", "seen"], rows)


def write_seed_outputs(folder: Path, cfg: CzslConfig, outcome: CzslOutcome) -> None:
    """One seed's full results, test scores, stream orders and loss; results.json last, as its 'done' mark."""
    results = outcome.results
    np.savez_compressed(folder / "test_scores.npz", **{k.replace("+", ""): v for k, v in outcome.test_scores.items()})
    orders = {f"{k}": [r["order_digest"] for r in v["per_seed"]] for k, v in results["bank"].items()}
    write_json(folder / "stream_orders.json", {"seeds": cfg.stream_seeds, "digests": orders}, indent=1)
    write_loss_csv(folder / LOSS, results["loss"])
    write_json(folder / RESULTS, {k: v for k, v in results.items() if k != "loss"}, indent=1, default=float)


def run_seed(ctx: StageContext, cfg: CzslConfig, seed: int, backend: Backend, worlds: dict, splits: dict) -> dict:
    """One training seed of the ablation, resumed from its folder when an earlier attempt finished it."""
    folder = seed_dir(ctx.output(), seed)
    done = folder / RESULTS
    if done.is_file():
        log.info("czsl: seed %d already finished in %s", seed, folder)
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    outcome = run_experiment(cfg, backend, worlds, splits, ctx.device, ctx.progress, seed=seed,
                             save=lambda name, obj: torch.save(obj, folder / name))
    write_seed_outputs(folder, cfg, outcome)
    return json.loads(done.read_text())


def run_czsl(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point: load the inputs, run the ablation once per training seed, write outputs, metrics, plots."""
    from pipeline_lib.backbone.load import load_published_backbone

    cfg = dataset_config(ctx.cfg.czsl, czsl_entry(ctx).overrides, ctx.item["czsl_dataset"])
    t0 = time.perf_counter()
    seed_everything(cfg.seeds[0])  # before the backbone is built: the run's random state starts here
    bb = load_published_backbone(ctx.input("backbone"), ctx.device)
    bb.model.requires_grad_(False)
    worlds = load_worlds(czsl_source(ctx), cfg, bb.model, bb.tokenizer, check_sizes=czsl_entry(ctx).check_sizes)
    splits = load_splits(ctx.input("features_czsl") / STORE, worlds["closed"].ds, cfg.mode)
    backend = Backend(bb.model, bb.tokenizer, bb.preprocess)
    world_names = list(worlds)
    results = {seed: run_seed(ctx, cfg, seed, backend, worlds, splits) for seed in cfg.seeds}
    per_seed = {seed: row_metrics(r, world_names) for seed, r in results.items()}
    bank = {seed: {k: {"selects_off": v["selects_off"], **v["chosen"]} for k, v in r["bank"].items()}
            for seed, r in results.items()}
    out_dir = ctx.output()
    write_json(out_dir / RESULTS, {"seeds": list(cfg.seeds), "worlds": world_names, "per_seed": per_seed,
                                   "bank": bank, "global_token": global_token_kind(bb.model)}, indent=1)
    first = results[cfg.seeds[0]]
    write_curve_csv(ctx.plot("czsl_curve"), first, world_names)
    shutil.copyfile(seed_dir(out_dir, cfg.seeds[0]) / LOSS, ctx.plot("czsl_loss"))
    open_world = worlds.get("open")
    summary = {
        "dataset": ctx.item["czsl_dataset"], "mode": cfg.mode, "worlds": world_names, "seeds": len(cfg.seeds),
        "feasibility_source": open_world.feas.source if open_world is not None and open_world.feas else None,
        "rows": summarise(per_seed, world_names),
        "bank_selects_off": {k: sum(b[k]["selects_off"] for b in bank.values()) for k in next(iter(bank.values()))},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(ctx.metrics(), headline(summary["rows"], world_names), indent=1)
    return summary
