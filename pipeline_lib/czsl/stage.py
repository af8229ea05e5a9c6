"""The `czsl` stage: train and evaluate the SAM-CZSL ablation rows, closed and open world.

Rows (each adds one part, as the paper's ablation table): baseline (CLS) -> +SA -> +VAC (base loss) -> +KL
distillation -> +memory bank (seen only, static) -> +dynamic update (seen + unseen). The first four are trained
models; the bank rows reuse the +KL model. Every row reports AUC / HM / S / U from the standard evaluator in each
world, plus a modality-gap measure. Bank hyper-parameters (alpha, beta, gate) and the open-world threshold are tuned
on val only; bank rows are averaged over the stream seeds, each stream starting from the same initial bank.

Outputs: artifacts/czsl/ (head checkpoints, test score matrices, stream orders, full results), metrics/czsl.json,
plots/czsl_curve.csv (seen / unseen trade-off on test) and plots/czsl_loss.csv (training loss per step).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline_lib.czsl import bank as bk
from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.data import CzslDataset, load_czsl_dataset
from pipeline_lib.czsl.evaluator import CzslMetrics, evaluate_split
from pipeline_lib.czsl.feasibility import (
    Feasibility,
    backbone_word_embedder,
    calibrate_threshold,
    dataset_feasibility,
    feasibility_filter,
)
from pipeline_lib.czsl.lora import apply_lora
from pipeline_lib.czsl.model import (
    SamCzsl,
    compose_from_pair_probs,
    fuse,
    get_variant,
    list_variants,
)
from pipeline_lib.czsl.train import (
    Predictions,
    Progress,
    SplitData,
    TokenSource,
    TrainResult,
    build_model,
    modality_gap,
    predict,
    quiet_progress,
    seed_everything,
    train_model,
)
from pipeline_lib.engine.io import write_csv, write_json

log = logging.getLogger(__name__)

TRAINED_ROWS = ("baseline", "+sa", "+vac", "+kl")
BANK_ROWS = ("+bank_seen", "+dynamic")
METRIC_KEYS = ("auc", "hm", "seen", "unseen", "attr_acc", "obj_acc")


@dataclass
class Backend:
    """What the stage needs from the backbone: the CLIP (text tower for prompts, vision tower for LoRA mode)."""

    clip: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable | None = None


# ---------------------------------------------------------------------------------------------------- inputs


def load_splits(store: Path, ds: CzslDataset, mode: str) -> dict[str, SplitData]:
    """Labels from the loader; tokens from the features store (frozen mode) or image paths (LoRA mode).

    The store's rows must follow the loader's split order: its attr/obj arrays are checked against the loader's.
    Token 0 is replaced by the store's global image embedding (see `TokenSource`).
    """
    from pipeline_lib.engine.store import read_array

    out = {}
    for split in ("train", "val", "test"):
        df = ds.split(split)
        attr = torch.from_numpy(df["attr_idx"].to_numpy().copy())
        obj = torch.from_numpy(df["obj_idx"].to_numpy().copy())
        label = torch.from_numpy(df["pair_idx"].to_numpy().copy())
        tokens = paths = None
        if mode == "frozen":
            s_attr, s_obj = read_array(store, f"{split}/attr"), read_array(store, f"{split}/obj")
            if s_attr.shape[0] != len(attr) or not (np.array_equal(s_attr, attr.numpy())
                                                     and np.array_equal(s_obj, obj.numpy())):
                raise ValueError(f"{store}: {split} rows do not match the CZSL loader's {split} split "
                                 f"({s_attr.shape[0]} vs {len(attr)} rows); rerun the features stage")
            try:
                tokens = torch.from_numpy(read_array(store, f"{split}/tokens")).float()  # (N, 1 + L, D)
            except KeyError as err:
                raise KeyError(f"{store} has no {split}/tokens; frozen-mode CZSL needs features.patch_tokens=true") \
                    from err
            tokens[:, 0] = torch.from_numpy(read_array(store, f"{split}/image")).float()  # (N, D) global embedding
        else:
            paths = df["path"].to_list()
        out[split] = SplitData(attr=attr, obj=obj, label=label, tokens=tokens, paths=paths)
    return out


def pair_tensor(ds: CzslDataset, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """(P, 2) [attr_idx, obj_idx] for a list of (attr, obj) names."""
    return torch.tensor([[ds.attr2idx[a], ds.obj2idx[o]] for a, o in pairs], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------- scoring


def fused_scores(cfg: CzslConfig, pred: Predictions, pbar_bank: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted p_bar fusion (N, P); strictly positive, as the OW multiplicative filter needs."""
    pbars = {"sa": pred.pbar_sa}
    if pred.pbar_vac is not None:
        pbars["vac"] = pred.pbar_vac
    if pbar_bank is not None:
        pbars["bank"] = pbar_bank
    return fuse(pbars, {"sa": cfg.w_sa, "vac": cfg.w_vac, "bank": cfg.w_bank}).float()


def metric_row(m: CzslMetrics) -> dict[str, float]:
    return {k: float(getattr(m, k)) for k in METRIC_KEYS}


@dataclass
class WorldEval:
    """How one world is evaluated: dataset, its pair tensor and (OW) feasibility."""

    name: str
    ds: CzslDataset
    pairs: torch.Tensor  # (P, 2)
    feas: Feasibility | None = None

    def evaluate(self, scores: torch.Tensor, split: str, threshold: float | None, variant: str) -> CzslMetrics:
        transform = None
        if self.feas is not None and threshold is not None:
            transform = feasibility_filter(self.feas.scores, self.feas.seen_mask, threshold, variant)
        return evaluate_split(scores, self.ds, split, column_transform=transform, device="cpu")

    def calibrate(self, val_scores: torch.Tensor, variant: str) -> float | None:
        if self.feas is None:
            return None
        attr, obj, pair = self.ds.labels("val")
        cal = calibrate_threshold(val_scores, attr, obj, pair, self.ds.pair_attr_idx(), self.ds.pair_obj_idx(),
                                  self.feas, variant=variant, device="cpu")
        return cal.threshold

    def candidates(self, split: str, threshold: float | None) -> torch.Tensor:
        """The evaluator's candidate set the bank predicts over: CW closed mask, OW seen | feasible."""
        if self.feas is None:
            return self.ds.closed_mask(split)
        feasible = self.feas.scores >= float(threshold) if threshold is not None else torch.ones_like(self.feas.seen_mask)
        return feasible | self.feas.seen_mask


# ---------------------------------------------------------------------------------------------------- experiment


def _world_predictions(model: SamCzsl, sources: dict[str, TokenSource], splits: dict[str, SplitData], w: WorldEval,
                       ) -> dict[str, Predictions]:
    out = {}
    for split in ("train", "val", "test"):
        gt = torch.from_numpy(w.ds.split(split)["world_pair_idx"].to_numpy().copy())
        out[split] = predict(model, sources[split], len(splits[split]), w.pairs, gt)
    return out


def run_experiment(
    cfg: CzslConfig, backend: Backend, worlds: dict[str, WorldEval], splits: dict[str, SplitData],
    device: torch.device, progress: Progress = quiet_progress, out_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the four model rows, add the two bank rows, evaluate everything; returns the full results dict."""
    cw = worlds["closed"]
    ds = cw.ds
    train_pairs = pair_tensor(ds, ds.train_pairs)  # (P_train, 2)
    dim = _token_dim(splits, backend)
    rows: dict[str, dict[str, Any]] = {}
    loss_rows: list[dict] = []
    val_curves: list[dict] = []
    scores_out: dict[str, np.ndarray] = {}
    kl_state: dict[str, Any] = {}
    for name in TRAINED_ROWS:
        t0 = time.perf_counter()
        variant = get_variant(name)
        clip, lora_params = backend.clip, None
        if cfg.mode == "lora":
            clip = copy.deepcopy(backend.clip)
            lora_params = apply_lora(clip.visual, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                     dropout=cfg.lora_dropout, targets=cfg.lora_targets)
        sources = {s: TokenSource(splits[s], device, clip=clip, preprocess=backend.preprocess) for s in splits}
        model = build_model(cfg, variant, clip, backend.tokenizer, ds.attrs, ds.objs, dim, device)

        val_auc = functools.partial(_val_auc, cfg=cfg, world=cw, source=sources["val"], n=len(splits["val"]),
                                    visual=clip.visual)
        if lora_params:
            clip.visual.train()
        result: TrainResult = train_model(model, splits["train"], train_pairs, cfg, source=sources["train"],
                                          val_auc=val_auc, lora_params=lora_params, progress=progress, device=device)
        clip.visual.eval()
        loss_rows += result.history
        val_curves += result.val_curve
        row: dict[str, Any] = {"best_epoch": result.best_epoch, "val_auc_closed": result.best_val_auc,
                               "trainable_params": result.trainable_params}
        preds = {}
        for wname, w in worlds.items():
            preds[wname] = _world_predictions(model, sources, splits, w)
            val_s, test_s = (fused_scores(cfg, preds[wname][s]) for s in ("val", "test"))
            tau = w.calibrate(val_s, cfg.ow_filter)
            m = w.evaluate(test_s, "test", tau, cfg.ow_filter)
            row[wname] = {**metric_row(m), "threshold": tau, "curve_seen": m.curve_seen, "curve_unseen": m.curve_unseen}
            scores_out[f"{name}_{wname}"] = test_s.numpy()
        test_gt = torch.from_numpy(ds.split("test")["world_pair_idx"].to_numpy().copy())
        row["gap"] = modality_gap(preds["closed"]["test"].img_for_gap, preds["closed"]["test"].comp_text, test_gt)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows[name] = row
        log.info("czsl %s: CW AUC %.4f HM %.4f, RMG %.4f", name, row["closed"]["auc"], row["closed"]["hm"],
                 row["gap"]["rmg"])
        if out_dir is not None:
            torch.save(model.state_dict(), out_dir / f"head_{name.strip('+')}.pt")
            if lora_params:
                torch.save({n: p.detach().cpu() for n, p in clip.visual.named_parameters() if p.requires_grad},
                           out_dir / f"lora_{name.strip('+')}.pt")
        if name == "+kl":
            kl_state = {"preds": preds, "thresholds": {wn: rows[name][wn]["threshold"] for wn in worlds}}

    bank_info: dict[str, Any] = {}
    for name in BANK_ROWS:
        t0 = time.perf_counter()
        row = {"gap": rows["+kl"]["gap"], "best_epoch": rows["+kl"]["best_epoch"]}
        for wname, w in worlds.items():
            res = run_bank_row(cfg, name, w, kl_state["preds"][wname], kl_state["thresholds"][wname])
            row[wname] = res["test"]
            bank_info[f"{name}_{wname}"] = res["info"]
            scores_out[f"{name}_{wname}"] = res["scores"]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows[name] = row
        log.info("czsl %s: CW AUC %.4f HM %.4f", name, row["closed"]["auc"], row["closed"]["hm"])
    if out_dir is not None:
        np.savez_compressed(out_dir / "test_scores.npz", **{k.replace("+", ""): v for k, v in scores_out.items()})
    return {"rows": rows, "bank": bank_info, "loss": loss_rows, "val_curve": val_curves}


def _val_auc(model: SamCzsl, *, cfg: CzslConfig, world: WorldEval, source: TokenSource, n: int,
             visual: nn.Module) -> float:
    """Closed-world val AUC of the fused scores (checkpoint selection); the vision tower runs in eval mode."""
    gt = torch.from_numpy(world.ds.split("val")["world_pair_idx"].to_numpy().copy())
    was_training = visual.training
    visual.eval()
    pred = predict(model, source, n, world.pairs, gt)
    visual.train(was_training)
    return world.evaluate(fused_scores(cfg, pred), "val", None, cfg.ow_filter).auc


def _token_dim(splits: dict[str, SplitData], backend: Backend) -> int:
    tokens = splits["train"].tokens
    if tokens is not None:
        return int(tokens.shape[-1])
    return int(backend.clip.visual.proj.shape[1])


# ---------------------------------------------------------------------------------------------------- bank rows


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
                 beta: float) -> torch.Tensor:
    p_mb = bk.bank_probs(bk.bank_logits(trace, alpha, beta), cfg.bank_temperature)  # (N, P)
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
        for alpha, beta in itertools.product(cfg.bank_alpha_grid, cfg.bank_beta_grid):
            aucs = [w.evaluate(_bank_scores(cfg, w, preds["val"], t, alpha, beta), "val", threshold, cfg.ow_filter).auc
                    for t in val_traces]
            grid.append({"gate": gate, "alpha": alpha, "beta": beta, "val_auc": float(np.mean(aucs))})
    best = max(grid, key=lambda g: g["val_auc"])  # first best in grid order
    test_traces = traces("test", best["gate"])
    val_traces = traces("val", best["gate"])
    # OW threshold re-calibrated on val for the final fused scores (val stream of the first seed).
    tau = threshold
    if w.feas is not None:
        tau = w.calibrate(_bank_scores(cfg, w, preds["val"], val_traces[0], best["alpha"], best["beta"]),
                          cfg.ow_filter)
    per_seed, first_scores, first_curve = [], None, None
    for s, t in zip(seeds, test_traces):
        scores = _bank_scores(cfg, w, preds["test"], t, best["alpha"], best["beta"])
        m = w.evaluate(scores, "test", tau, cfg.ow_filter)
        per_seed.append({"seed": s, "order_digest": bk.order_digest(t.order), "events": t.events, **metric_row(m)})
        log.info("bank %s (%s) test stream seed %d (order %s): events %s, AUC %.4f", name, w.name, s,
                 per_seed[-1]["order_digest"], t.events, m.auc)
        if first_scores is None:
            first_scores, first_curve = scores.numpy(), (m.curve_seen, m.curve_unseen)
    test = {k: float(np.mean([r[k] for r in per_seed])) for k in METRIC_KEYS}
    test.update({f"{k}_std": float(np.std([r[k] for r in per_seed])) for k in ("auc", "hm")})
    test.update({"threshold": tau, "curve_seen": first_curve[0], "curve_unseen": first_curve[1]})
    info = {"chosen": best, "grid": grid, "per_seed": per_seed, "seen_init": "train features, lowest entropy",
            "text_entropy": None if not dynamic else (cfg.bank_text_entropy or 1.0), "key": cfg.bank_key}
    log.info("bank %s (%s): alpha %g beta %g gate %g, val AUC %.4f, test AUC %.4f +- %.4f", name, w.name,
             best["alpha"], best["beta"], best["gate"], best["val_auc"], test["auc"], test["auc_std"])
    return {"test": test, "info": info, "scores": first_scores}


# ---------------------------------------------------------------------------------------------------- outputs


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
            for i, (s, u) in enumerate(zip(r["curve_seen"], r["curve_unseen"])):
                rows.append([name, w, i, round(u, 6), round(s, 6)])
    write_csv(path, ["row", "world", "point", "unseen", "seen"], rows)


def run_czsl(ctx) -> dict:
    """Stage entry point: resolve inputs, run the experiment, write artifacts / metrics / plots."""
    from pipeline_lib.backbone.load import load_published_backbone

    cfg: CzslConfig = ctx.cfg.czsl
    t0 = time.perf_counter()
    device = ctx.device
    seed_everything(cfg.seed)
    root = ctx.inp("artifacts/data") / "czsl" / cfg.dataset
    bb = load_published_backbone(ctx.inp("artifacts/backbone"), device)
    bb.model.requires_grad_(False)
    worlds: dict[str, WorldEval] = {}
    ds_cw = load_czsl_dataset(root, "closed")
    worlds["closed"] = WorldEval("closed", ds_cw, pair_tensor(ds_cw, ds_cw.pairs))
    feas_source = None
    if "open" in cfg.worlds:
        ds_ow = load_czsl_dataset(root, "open")
        feas = dataset_feasibility(
            ds_ow.attrs, ds_ow.objs, ds_ow.train_pairs,
            word_vectors=Path(cfg.ow_word_vectors) if cfg.ow_word_vectors else None,
            fallback=backbone_word_embedder(bb.model, bb.tokenizer),
        )
        feas_source = feas.source
        worlds["open"] = WorldEval("open", ds_ow, pair_tensor(ds_ow, ds_ow.pairs), feas)
    if "closed" not in cfg.worlds:
        log.info("closed world is always evaluated: checkpoint selection uses the closed-world val AUC")
    splits = load_splits(ctx.inp("artifacts/features") / "czsl.zarr", ds_cw, cfg.mode)
    out_dir = ctx.out("artifacts/czsl")
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = Backend(bb.model, bb.tokenizer, bb.preprocess)
    results = run_experiment(cfg, backend, worlds, splits, device, ctx.progress, out_dir)
    world_names = list(worlds)
    summary = {
        "dataset": cfg.dataset, "mode": cfg.mode, "worlds": world_names, "ow_filter": cfg.ow_filter,
        "feasibility_source": feas_source, "rows": summarise(results, world_names),
        "bank": {k: v["chosen"] for k, v in results["bank"].items()}, "stream_seeds": cfg.stream_seeds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    full = {k: v for k, v in results.items() if k != "loss"}
    write_json(out_dir / "results.json", full, indent=1, default=float)
    orders = {f"{k}": [r["order_digest"] for r in v["per_seed"]] for k, v in results["bank"].items()}
    write_json(out_dir / "stream_orders.json", {"seeds": cfg.stream_seeds, "digests": orders}, indent=1)
    write_json(ctx.out("metrics/czsl.json"), summary, indent=1)
    write_loss_csv(ctx.out("plots/czsl_loss.csv"), results["loss"])
    write_curve_csv(ctx.out("plots/czsl_curve.csv"), results, world_names)
    return summary
