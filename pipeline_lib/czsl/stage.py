"""The `czsl` stage: train and evaluate the SAM-CZSL ablation rows, closed and open world.

A thin entry point: it resolves the inputs through the stage context (data, backbone, features), loads them
(`czsl.inputs`), runs the ablation on the loaded data (`czsl.experiment.run_experiment`) and writes the outputs:
its output folder (head checkpoints, test score matrices, stream orders, full results), the metrics file (headline
numbers per row and world), and the plots czsl_curve (seen / unseen trade-off on test) and czsl_loss (training loss
per step).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.experiment import Backend, CzslOutcome, run_experiment
from pipeline_lib.czsl.inputs import load_splits, load_worlds
from pipeline_lib.czsl.model import list_variants
from pipeline_lib.czsl.train import seed_everything
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json

STORE = "czsl.zarr"  # the CZSL feature store inside the features stage's output folder


def summarise(results: dict[str, Any], worlds: list[str]) -> dict[str, Any]:
    """Small JSON metrics: per row and world the headline numbers, plus the gap measure."""
    rows = {}
    for name in list_variants():
        r = results["rows"][name]
        rows[name] = {w: {k: round(r[w][k], 4) for k in ("auc", "hm", "seen", "unseen")} for w in worlds}
        rows[name]["rmg"] = round(r["gap"]["rmg"], 4)
        rows[name]["centroid_gap"] = round(r["gap"]["centroid_gap"], 4)
    return rows


def write_loss_csv(path: Path, loss_rows: list[dict]) -> None:
    """Loss terms per logged step and variant (terms a variant lacks are empty cells)."""
    keys = ["variant", "epoch", "step", "loss", "base", "base_vac", "kl"]
    rows = [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in loss_rows]
    write_csv(path, keys, rows)


def write_curve_csv(path: Path, results: dict[str, Any], worlds: list[str]) -> None:
    """Seen/unseen accuracy curve points per ablation row and world."""
    rows = []
    for name in list_variants():
        for w in worlds:
            r = results["rows"][name][w]
            for i, (s, u) in enumerate(zip(r["curve_seen"], r["curve_unseen"], strict=True)):
                rows.append([name, w, i, round(u, 6), round(s, 6)])
    write_csv(path, ["row", "world", "point", "unseen", "seen"], rows)


def write_outputs(ctx: StageContext, cfg: CzslConfig, outcome: CzslOutcome, summary: dict[str, Any]) -> None:
    """Full results, test scores and stream orders into the output folder; metrics and plots where declared."""
    out_dir, results = ctx.output(), outcome.results
    np.savez_compressed(out_dir / "test_scores.npz", **{k.replace("+", ""): v for k, v in outcome.test_scores.items()})
    full = {k: v for k, v in results.items() if k != "loss"}
    write_json(out_dir / "results.json", full, indent=1, default=float)
    orders = {f"{k}": [r["order_digest"] for r in v["per_seed"]] for k, v in results["bank"].items()}
    write_json(out_dir / "stream_orders.json", {"seeds": cfg.stream_seeds, "digests": orders}, indent=1)
    write_json(ctx.metrics(), summary, indent=1)
    write_loss_csv(ctx.plot("czsl_loss"), results["loss"])
    write_curve_csv(ctx.plot("czsl_curve"), results, summary["worlds"])


def run_czsl(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point: load the inputs, run the ablation, write artifacts / metrics / plots."""
    from pipeline_lib.backbone.load import load_published_backbone

    cfg: CzslConfig = ctx.cfg.czsl
    t0 = time.perf_counter()
    seed_everything(cfg.seed)  # before the backbone is built: the run's random state starts here
    bb = load_published_backbone(ctx.input("backbone"), ctx.device)
    bb.model.requires_grad_(False)
    worlds = load_worlds(ctx.input("data") / "czsl" / cfg.dataset, cfg, bb.model, bb.tokenizer)
    splits = load_splits(ctx.input("features") / STORE, worlds["closed"].ds, cfg.mode)
    out_dir: Path = ctx.output()
    outcome = run_experiment(cfg, Backend(bb.model, bb.tokenizer, bb.preprocess), worlds, splits, ctx.device,
                             ctx.progress, save=lambda name, obj: torch.save(obj, out_dir / name))
    world_names = list(worlds)
    open_world = worlds.get("open")
    summary = {
        "dataset": cfg.dataset, "mode": cfg.mode, "worlds": world_names, "ow_filter": cfg.ow_filter,
        "feasibility_source": open_world.feas.source if open_world is not None and open_world.feas else None,
        "rows": summarise(outcome.results, world_names),
        "bank": {k: v["chosen"] for k, v in outcome.results["bank"].items()}, "stream_seeds": cfg.stream_seeds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_outputs(ctx, cfg, outcome, summary)
    return summary
