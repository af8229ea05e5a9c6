"""The memory-bank ablation rows (+bank_seen, +dynamic): a bank over the +KL model's predictions, tuned on val.

The val grid holds the bank's strength alpha (0 = off: the +KL scores unchanged), its beta, its temperature tau_mb
and (dynamic) the entropy gate. The row itself is the paper's: the best point with the bank on (alpha > 0). Whether
validation would rather switch the bank off is reported beside it (`selects_off`, `val_auc_off`).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import torch

from pipeline_lib.czsl import bank as bk
from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.model import compose_from_pair_probs
from pipeline_lib.czsl.train import Predictions
from pipeline_lib.czsl.worlds import METRIC_KEYS, WorldEval, fused_scores, metric_row

log = logging.getLogger(__name__)


def bank_features(cfg: CzslConfig, pred: Predictions) -> torch.Tensor:
    if cfg.bank_key == "vac":
        if pred.v is None:
            raise ValueError("bank_key='vac' needs a model with VAC")
        return pred.v
    return pred.cls


def initial_bank(cfg: CzslConfig, w: WorldEval, train_pred: Predictions, dynamic: bool) -> bk.BankState:
    """Seen compositions from their most confident train features; (dynamic) unseen ones from their text."""
    feats = bank_features(cfg, train_pred)
    seen = w.ds.seen_mask
    _, h = bk.normalised_entropy(train_pred.p_vac, seen)  # entropy over the seen (training) pairs
    gt = torch.from_numpy(w.ds.split("train")["world_pair_idx"].to_numpy().copy())
    state = bk.fill_from_features(bk.empty_bank(len(w.ds.pairs), cfg.bank_slots, feats.shape[1]), feats, gt, h)
    if dynamic:
        h0 = 1.0 if cfg.bank_text_entropy is None else cfg.bank_text_entropy
        state = bk.fill_from_text(state, train_pred.comp_text, ~seen, h0)
    return state


def _bank_scores(cfg: CzslConfig, w: WorldEval, pred: Predictions, trace: bk.StreamTrace, alpha: float,
                 beta: float, temperature: float) -> torch.Tensor:
    if alpha == 0:  # bank off
        return fused_scores(cfg, pred)
    p_mb = bk.bank_probs(bk.bank_logits(trace, alpha, beta), temperature)  # (N, P)
    pbar = compose_from_pair_probs(p_mb, w.pairs, len(w.ds.attrs), len(w.ds.objs))
    return fused_scores(cfg, pred, pbar)


def run_bank_row(cfg: CzslConfig, name: str, w: WorldEval, preds: dict[str, Predictions],
                 threshold: float | None) -> dict[str, Any]:
    """Tune (alpha, beta, gate) on the val streams (mean over seeds), then run the test streams with them."""
    dynamic = name == "+dynamic"
    init = initial_bank(cfg, w, preds["train"], dynamic)  # one initial state for val and test
    seeds = cfg.stream_seeds if dynamic else cfg.stream_seeds[:1]  # a static bank does not depend on the order
    gates = cfg.bank_gate_grid if dynamic else [1.0]

    def traces(split: str, gate: float) -> list[bk.StreamTrace]:
        pred = preds[split]
        cand = w.candidates(split, threshold)
        return [bk.run_stream(init, bank_features(cfg, pred), pred.p_vac, cand, bk.stream_order(len(pred.cls), s),
                              gate=gate, dynamic=dynamic) for s in seeds]

    grid = []
    for gate in gates:
        val_traces = traces("val", gate)
        points = [(0.0, cfg.bank_beta_grid[0], cfg.bank_temperature_grid[0])] if 0.0 in cfg.bank_alpha_grid else []
        points += [p for p in itertools.product(cfg.bank_alpha_grid, cfg.bank_beta_grid, cfg.bank_temperature_grid)
                   if p[0] > 0]
        for alpha, beta, temp in points:
            aucs = [w.evaluate(_bank_scores(cfg, w, preds["val"], t, alpha, beta, temp), "val", threshold,
                               cfg.ow_filter).auc for t in val_traces]
            grid.append({"gate": gate, "alpha": alpha, "beta": beta, "temperature": temp,
                         "val_auc": float(np.mean(aucs))})
    best = max((g for g in grid if g["alpha"] > 0), key=lambda g: g["val_auc"])  # first best in grid order
    off = [g["val_auc"] for g in grid if g["alpha"] == 0]
    val_auc_off = max(off) if off else None
    test_traces = traces("test", best["gate"])
    val_traces = traces("val", best["gate"])
    args = (best["alpha"], best["beta"], best["temperature"])
    # OW threshold re-calibrated on val for the final fused scores (val stream of the first seed).
    tau = threshold
    if w.feas is not None:
        tau = w.calibrate(_bank_scores(cfg, w, preds["val"], val_traces[0], *args), cfg.ow_filter)
    per_seed, first_scores, first_curve = [], None, None
    for s, t in zip(seeds, test_traces, strict=True):
        scores = _bank_scores(cfg, w, preds["test"], t, *args)
        m = w.evaluate(scores, "test", tau, cfg.ow_filter)
        per_seed.append({"seed": s, "order_digest": bk.order_digest(t.order), "events": t.events, **metric_row(m)})
        log.info("bank %s (%s) test stream seed %d (order %s): events %s, AUC %.4f", name, w.name, s,
                 per_seed[-1]["order_digest"], t.events, m.auc)
        if first_scores is None:
            first_scores, first_curve = scores.numpy(), (m.curve_seen, m.curve_unseen)
    test = {k: float(np.mean([r[k] for r in per_seed])) for k in METRIC_KEYS}
    test.update({f"{k}_std": float(np.std([r[k] for r in per_seed])) for k in ("auc", "hm")})
    test.update({"threshold": tau, "curve_seen": first_curve[0], "curve_unseen": first_curve[1]})
    selects_off = val_auc_off is not None and val_auc_off >= best["val_auc"]
    info = {"chosen": best, "val_auc_off": val_auc_off, "selects_off": selects_off, "grid": grid,
            "per_seed": per_seed, "seen_init": "train features, lowest entropy",
            "text_entropy": None if not dynamic else (cfg.bank_text_entropy or 1.0), "key": cfg.bank_key}
    log.info("bank %s (%s): alpha %g beta %g tau %g gate %g, val AUC %.4f (off: %s), test AUC %.4f +- %.4f", name,
             w.name, best["alpha"], best["beta"], best["temperature"], best["gate"], best["val_auc"], val_auc_off,
             test["auc"], test["auc_std"])
    return {"test": test, "info": info, "scores": first_scores}
