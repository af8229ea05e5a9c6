"""Every claim the three papers make that the pipeline can test, with the paper's reported effect and its source.

A claim is a paired comparison on the same data: "B beats A" on the same few-shot seeds (support sets), the same
CZSL training seeds, or the same retrieval queries. The paper effects are quoted as published (percent points,
AUC points); where a paper gives only a sentence, the sentence is quoted. `compute.py` turns each claim into an
interval and a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SEMOBRIDGE = "SeMoBridge (arXiv 2509.26036)"
CROSS_THE_GAP = "Cross the Gap (arXiv 2502.04263)"
SAM_CZSL = "SAM-CZSL (CVPR 2026)"

Family = Literal["fewshot", "inversion", "czsl", "czsl_gap"]


@dataclass(frozen=True)
class Claim:
    """One testable claim: `better` beats `worse` on `metric` (for czsl_gap: lower gap goes with higher AUC)."""

    key: str  # short id, unique with the shot count appended for few-shot claims
    family: Family
    statement: str
    better: str  # method / row / inverted direction that should win
    worse: str  # its paired reference
    metric: str  # the unit of the difference
    paper_effect: str
    source: str

    @property
    def higher_is_better(self) -> bool:
        return self.family != "czsl_gap"  # the gap claim predicts a negative correlation


# SeMoBridge-T minus training-free, 11-dataset average, ViT-B/16, per shot count (specs/semobridge.md section 6).
_T_GAIN = {1: 74.01 - 72.25, 2: 76.20 - 73.91, 4: 78.21 - 75.77, 8: 80.10 - 77.00, 16: 82.20 - 78.09}

CLAIMS: tuple[Claim, ...] = (
    Claim("semobridge_vs_prototype", "fewshot", "SeMoBridge beats the intra-modal prototype classifier",
          "semobridge_all", "prototype", "test accuracy, points",
          "beats intra-modal few-shot baselines at every shot count (no single number)", SEMOBRIDGE),
    Claim("semobridge_vs_control", "fewshot",
          "SeMoBridge beats zero-shot + prototype blended with the same search budget",
          "semobridge_all", "control", "test accuracy, points",
          "not reported (this control is ours: the bridge's added value over its two ingredients)", SEMOBRIDGE),
    Claim("semobridge_t_vs_training_free", "fewshot", "SeMoBridge-T beats training-free SeMoBridge",
          "semobridge_t", "semobridge_all", "test accuracy, points",
          "+{gain:.2f} points (11-dataset average, ViT-B/16)", SEMOBRIDGE),
    Claim("oti_vs_image", "inversion", "OTI-inverted image queries retrieve images better than image->image",
          "oti_to_image", "image_to_image", "test-query mAP",
          "about +2 to +3 mAP points on average over 15+ datasets", CROSS_THE_GAP),
    Claim("ovi_vs_text", "inversion", "OVI-inverted text queries retrieve texts better than text->text",
          "ovi_to_text", "text_to_text", "test-query mAP",
          "about +2 to +3 mAP points on average over 15+ datasets", CROSS_THE_GAP),
    Claim("sa_vs_baseline", "czsl", "+SA beats the CLS baseline", "+sa", "baseline", "closed-world test AUC",
          "+6.9 / +0.8 / +0.9 AUC points (UT-Zappos / MIT-States / C-GQA)", SAM_CZSL),
    Claim("vac_vs_sa", "czsl", "+VAC beats +SA", "+vac", "+sa", "closed-world test AUC",
          "+1.8 / +0.2 / +0.4 AUC points", SAM_CZSL),
    Claim("kl_vs_vac", "czsl", "+KL distillation beats +VAC", "+kl", "+vac", "closed-world test AUC",
          "+2.4 / +0.8 / +0.2 AUC points", SAM_CZSL),
    Claim("bank_vs_kl", "czsl", "+memory bank (seen only) beats +KL", "+bank_seen", "+kl", "closed-world test AUC",
          "+0.7 / +0.4 / +0.2 AUC points", SAM_CZSL),
    Claim("dynamic_vs_seen_bank", "czsl", "the dynamic bank beats the seen-only bank", "+dynamic", "+bank_seen",
          "closed-world test AUC", "+0.7 / +0.6 / +0.2 AUC points (\"+0.2 to +0.7\")", SAM_CZSL),
    Claim("smaller_gap_higher_auc", "czsl_gap", "a smaller relative modality gap goes with a higher AUC",
          "rmg", "auc", "Spearman correlation of RMG and AUC over the trained rows, per seed",
          "UT-Zappos: RMG 0.1825 -> 0.1271 -> 0.1072 while AUC 37.5 -> 44.4 -> 48.6", SAM_CZSL),
)

#: shot counts the few-shot claims are tested at (those the params list; all of them when none of these is listed)
CLAIM_SHOTS = (1, 4, 16)


def paper_effect(claim: Claim, shots: int | None = None) -> str:
    """The paper's effect, with the per-shot number filled in where the paper gives one."""
    if "{gain" in claim.paper_effect:
        gain = _T_GAIN.get(shots or 0)
        return claim.paper_effect.format(gain=gain) if gain is not None else "no published number at this shot count"
    return claim.paper_effect
