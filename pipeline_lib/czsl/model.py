"""SAM-CZSL: soft prompts + Sparse Alignment / CLS branch + VAC, fused as p_bar = p(c) + p(a) p(o) per branch.

Model variants (the ablation rows) are data: `VARIANTS` maps a row name to the parts it switches on, and
`list_variants()` gives them in table order. The memory bank lives in `bank.py`; its p_bar joins the fusion here.
All fused scores are sums of probabilities, hence strictly positive, as the open-world multiplicative feasibility
filter (spec 2.5.3) requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib.czsl.prompts import PromptLearner
from pipeline_lib.czsl.sparse import sparse_alignment
from pipeline_lib.czsl.vac import VisualAdaptiveCondensation


@dataclass(frozen=True)
class Variant:
    """One ablation row: which image branch, whether VAC / KL are trained, which memory bank is used."""

    name: str
    token_branch: Literal["cls", "sa"]  # CLS embedding only (baseline) or Sparse Alignment over all tokens
    use_vac: bool  # train VAC with its own base loss and fuse its prediction
    use_kl: bool  # distil SA into VAC (requires use_vac)
    bank: Literal["none", "static", "dynamic"]  # no bank, seen-only static bank, dynamic seen + unseen bank


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("baseline", "cls", False, False, "none"),
        Variant("+sa", "sa", False, False, "none"),
        Variant("+vac", "sa", True, False, "none"),
        Variant("+kl", "sa", True, True, "none"),
        Variant("+bank_seen", "sa", True, True, "static"),
        Variant("+dynamic", "sa", True, True, "dynamic"),
    )
}


def list_variants() -> list[str]:
    """Ablation rows in table order (each adds one part to the previous one)."""
    return list(VARIANTS)


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise KeyError(f"unknown SAM-CZSL variant {name!r}; expected one of {list_variants()}")
    return VARIANTS[name]


def compose_probs(comp: torch.Tensor, attr: torch.Tensor, obj: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """p_bar(c) = p(c) + p(a) p(o) from logits comp (B, P), attr (B, A), obj (B, O); pairs (P, 2) -> (B, P)."""
    p_c = comp.softmax(dim=-1)  # (B, P)
    p_a = attr.softmax(dim=-1)[:, pairs[:, 0]]  # (B, P)
    p_o = obj.softmax(dim=-1)[:, pairs[:, 1]]  # (B, P)
    return p_c + p_a * p_o


def compose_from_pair_probs(p: torch.Tensor, pairs: torch.Tensor, n_attr: int, n_obj: int) -> torch.Tensor:
    """p_bar for a branch that only predicts pairs (the bank): primitives are the marginals of p (B, P) -> (B, P)."""
    p_a = p.new_zeros(p.shape[0], n_attr).index_add_(1, pairs[:, 0], p)  # (B, A)
    p_o = p.new_zeros(p.shape[0], n_obj).index_add_(1, pairs[:, 1], p)  # (B, O)
    return p + p_a[:, pairs[:, 0]] * p_o[:, pairs[:, 1]]


def fuse(pbars: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of branch p_bar's (B, P); every branch present must have a weight, and at least one is > 0."""
    missing = [k for k in pbars if k not in weights]
    if missing or not pbars:
        raise ValueError(f"fusion weights {weights} miss branches {missing} (branches: {list(pbars)})")
    if sum(weights[k] for k in pbars) <= 0:
        raise ValueError(f"fusion weights {weights} sum to zero over branches {list(pbars)}")
    return sum(weights[k] * p for k, p in pbars.items())  # (B, P)


class SamCzsl(nn.Module):
    """Trainable SAM-CZSL head on top of visual tokens (B, 1 + L, D) in the joint space."""

    def __init__(
        self, prompts: PromptLearner, dim: int, variant: Variant, *, logit_scale: float = 100.0, sa_topk: int = 1,
        sa_chunk: int = 4096, vac_blocks: int = 2, vac_heads: int = 4, vac_mlp_ratio: float = 4.0,
        vac_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant.use_kl and not variant.use_vac:
            raise ValueError(f"variant {variant.name!r} distils into VAC but has use_vac=False")
        self.prompts = prompts
        self.variant = variant
        self.scale = logit_scale
        self.sa_topk, self.sa_chunk = sa_topk, sa_chunk
        self.vac = (
            VisualAdaptiveCondensation(dim, blocks=vac_blocks, heads=vac_heads, mlp_ratio=vac_mlp_ratio,
                                       dropout=vac_dropout)
            if variant.use_vac else None
        )

    def texts(self, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised text features for pairs (P, 2) and all primitives."""
        return self.prompts(pairs)

    def image_scores(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosines (B, C) of the image branch: CLS only, or SA's max over [CLS, patches]."""
        if self.variant.token_branch == "cls":
            return F.normalize(tokens[:, 0], dim=-1) @ text.t()  # (B, C)
        return sparse_alignment(tokens, text, topk=self.sa_topk, chunk=self.sa_chunk)  # (B, C)

    def condensed(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """VAC feature v_q (B, D), normalised; None when the variant has no VAC."""
        return F.normalize(self.vac(tokens), dim=-1) if self.vac is not None else None

    def forward(self, tokens: torch.Tensor, texts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits of every branch: img_{comp,attr,obj} and, with VAC, vac_{comp,attr,obj} plus `v` (B, D)."""
        out = {f"img_{k}": self.scale * self.image_scores(tokens, texts[k]) for k in ("comp", "attr", "obj")}
        v = self.condensed(tokens)
        if v is not None:
            out["v"] = v
            out.update({f"vac_{k}": self.scale * (v @ texts[k].t()) for k in ("comp", "attr", "obj")})
        return out

    def pbars(self, logits: dict[str, torch.Tensor], pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """p_bar (B, P) of the image branch ('sa') and, with VAC, of VAC ('vac')."""
        out = {"sa": compose_probs(logits["img_comp"], logits["img_attr"], logits["img_obj"], pairs)}
        if "vac_comp" in logits:
            out["vac"] = compose_probs(logits["vac_comp"], logits["vac_attr"], logits["vac_obj"], pairs)
        return out
