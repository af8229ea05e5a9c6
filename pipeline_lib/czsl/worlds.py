"""How the czsl stage scores and evaluates one world (closed or open): fused scores, metric rows, calibration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.data import CzslDataset
from pipeline_lib.czsl.evaluator import CzslMetrics, evaluate_split
from pipeline_lib.czsl.feasibility import Feasibility, calibrate_threshold, feasibility_filter
from pipeline_lib.czsl.model import fuse
from pipeline_lib.czsl.train import Predictions

METRIC_KEYS = ("auc", "hm", "seen", "unseen", "attr_acc", "obj_acc")


def pair_tensor(ds: CzslDataset, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """(P, 2) [attr_idx, obj_idx] for a list of (attr, obj) names."""
    return torch.tensor([[ds.attr2idx[a], ds.obj2idx[o]] for a, o in pairs], dtype=torch.long)


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
        if threshold is None:
            feasible = torch.ones_like(self.feas.seen_mask)
        else:
            feasible = self.feas.scores >= float(threshold)
        return feasible | self.feas.seen_mask
