"""The SAM-CZSL ablation on loaded data: train the four model rows, add the two bank rows, evaluate every world.

Rows (each adds one part, as the paper's ablation table): baseline (CLS) -> +SA -> +VAC (base loss) -> +KL
distillation -> +memory bank (seen only, static) -> +dynamic update (seen + unseen). The first four are trained
models; the bank rows reuse the +KL model. Every row reports AUC / HM / S / U from the standard evaluator in each
world, plus a modality-gap measure. Bank hyper-parameters (alpha, beta, gate) and the open-world threshold are tuned
on val only; bank rows are averaged over the stream seeds, each stream starting from the same initial bank.

Nothing here reads or writes files: `run_experiment` takes the loaded backbone, worlds and splits and returns the
results; trained weights go to an optional `save` callback as each row finishes (the stage writes them).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline_lib.czsl.bank_rows import run_bank_row
from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.lora import apply_lora
from pipeline_lib.czsl.model import SamCzsl, get_variant
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
    train_model,
)
from pipeline_lib.czsl.worlds import WorldEval, fused_scores, metric_row, pair_tensor

log = logging.getLogger(__name__)

TRAINED_ROWS = ("baseline", "+sa", "+vac", "+kl")
BANK_ROWS = ("+bank_seen", "+dynamic")

#: save(file name, object): receives each trained row's weights (head_*.pt, lora_*.pt) as soon as the row is done
Save = Callable[[str, Any], None]


@dataclass
class Backend:
    """What the stage needs from the backbone: the CLIP (text tower for prompts, vision tower for LoRA mode)."""

    clip: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable | None = None


@dataclass
class CzslOutcome:
    """What the ablation returns: the results (rows, bank, loss, val_curve) and the test score matrices."""

    results: dict[str, Any]
    test_scores: dict[str, np.ndarray] = field(default_factory=dict)  # "<row>_<world>" -> (N_test, P) fused scores


def _world_predictions(model: SamCzsl, sources: dict[str, TokenSource], splits: dict[str, SplitData], w: WorldEval,
                       ) -> dict[str, Predictions]:
    out = {}
    for split in ("train", "val", "test"):
        gt = torch.from_numpy(w.ds.split(split)["world_pair_idx"].to_numpy().copy())
        out[split] = predict(model, sources[split], len(splits[split]), w.pairs, gt)
    return out


def run_experiment(
    cfg: CzslConfig, backend: Backend, worlds: dict[str, WorldEval], splits: dict[str, SplitData],
    device: torch.device, progress: Progress = quiet_progress, save: Save | None = None, seed: int = 0,
) -> CzslOutcome:
    """Train the model rows of `cfg.rows` with one training seed, add the bank rows, evaluate everything."""
    cw = worlds["closed"]
    ds = cw.ds
    train_pairs = pair_tensor(ds, ds.train_pairs)  # (P_train, 2)
    dim = _token_dim(splits, backend)
    rows: dict[str, dict[str, Any]] = {}
    loss_rows: list[dict] = []
    val_curves: list[dict] = []
    scores_out: dict[str, np.ndarray] = {}
    kl_state: dict[str, Any] = {}
    for name in (r for r in TRAINED_ROWS if r in cfg.rows):
        t0 = time.perf_counter()
        variant = get_variant(name)
        clip, lora_params = backend.clip, None
        if cfg.mode == "lora":
            clip = copy.deepcopy(backend.clip)
            lora_params = apply_lora(clip.visual, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                     dropout=cfg.lora_dropout, targets=cfg.lora_targets)
        sources = {s: TokenSource(splits[s], device, clip=clip, preprocess=backend.preprocess) for s in splits}
        model = build_model(cfg, variant, clip, backend.tokenizer, ds.attrs, ds.objs, dim, device, seed=seed)

        val_auc = functools.partial(_val_auc, cfg=cfg, world=cw, source=sources["val"], n=len(splits["val"]),
                                    visual=clip.visual)
        if lora_params:
            clip.visual.train()
        result: TrainResult = train_model(model, splits["train"], train_pairs, cfg, source=sources["train"],
                                          val_auc=val_auc, lora_params=lora_params, progress=progress, device=device,
                                          seed=seed)
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
            val = metric_row(w.evaluate(val_s, "val", tau, cfg.ow_filter))  # does val predict test? (world check)
            row[wname] = {**metric_row(m), "val": val, "threshold": tau, "curve_seen": m.curve_seen,
                          "curve_unseen": m.curve_unseen}
            scores_out[f"{name}_{wname}"] = test_s.numpy()
        test_gt = torch.from_numpy(ds.split("test")["world_pair_idx"].to_numpy().copy())
        row["gap"] = modality_gap(preds["closed"]["test"].img_for_gap, preds["closed"]["test"].comp_text, test_gt)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows[name] = row
        log.info("czsl %s: CW AUC %.4f HM %.4f, RMG %.4f", name, row["closed"]["auc"], row["closed"]["hm"],
                 row["gap"]["rmg"])
        if save is not None:
            save(f"head_{name.strip('+')}.pt", model.state_dict())
            if lora_params:
                save(f"lora_{name.strip('+')}.pt",
                     {n: p.detach().cpu() for n, p in clip.visual.named_parameters() if p.requires_grad})
        if name == "+kl":
            kl_state = {"preds": preds, "thresholds": {wn: rows[name][wn]["threshold"] for wn in worlds}}

    bank_info: dict[str, Any] = {}
    for name in (r for r in BANK_ROWS if r in cfg.rows):
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
    return CzslOutcome({"rows": rows, "bank": bank_info, "loss": loss_rows, "val_curve": val_curves}, scores_out)


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
