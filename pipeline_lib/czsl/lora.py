"""LoRA on the vision encoder's attention projections (q, k, v, o) of an open_clip ViT.

Why our own small implementation rather than `peft`: open_clip's ResidualAttentionBlock uses torch's
nn.MultiheadAttention, whose q/k/v weights are one packed `in_proj_weight` parameter and whose forward goes through
a fused kernel that never calls a Linear module, so peft cannot target q, k and v separately without replacing the
module anyway; peft would also be a new dependency for ~100 lines of code. This wrapper keeps the frozen base
weights, adds a low-rank update per target (B zero-initialised, so the adapted model starts exactly equal to the
original) and computes attention with `scaled_dot_product_attention`, keeping the call signature open_clip uses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

TARGETS = ("q", "k", "v", "o")


class LoRALinearDelta(nn.Module):
    """x -> (alpha / r) * B(A(dropout(x))); B starts at zero so the delta is zero."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.drop(x) @ self.A.t() @ self.B.t()) * self.scale  # (..., d_out)


class LoRAMultiheadAttention(nn.Module):
    """Drop-in replacement for a (batch-first or not) nn.MultiheadAttention with LoRA on the chosen projections."""

    def __init__(
        self, base: nn.MultiheadAttention, *, rank: int, alpha: float, dropout: float, targets: Sequence[str]
    ) -> None:
        super().__init__()
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise ValueError(f"lora targets {list(targets)} invalid; expected a non-empty subset of {TARGETS}")
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ValueError("LoRA needs a self-attention nn.MultiheadAttention with a packed in_proj_weight")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        d = base.embed_dim
        self.heads = base.num_heads
        self.batch_first = base.batch_first
        self.deltas = nn.ModuleDict({t: LoRALinearDelta(d, d, rank, alpha, dropout) for t in targets})

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
        attn_mask: torch.Tensor | None = None, **_: object,
    ) -> tuple[torch.Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (B, L, D)
        b, lq, d = query.shape
        w, bias = self.base.in_proj_weight, self.base.in_proj_bias
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        q = F.linear(query, wq, bq)  # (B, Lq, D)
        k = F.linear(key, wk, bk)  # (B, Lk, D)
        v = F.linear(value, wv, bv)  # (B, Lk, D)
        if "q" in self.deltas:
            q = q + self.deltas["q"](query)
        if "k" in self.deltas:
            k = k + self.deltas["k"](key)
        if "v" in self.deltas:
            v = v + self.deltas["v"](value)
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], h, d // h).transpose(1, 2)  # (B, h, L, d/h)

        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        drop = self.base.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask, dropout_p=drop)
        o = o.transpose(1, 2).reshape(b, lq, d)  # (B, Lq, D)
        out = self.base.out_proj(o)
        if "o" in self.deltas:
            out = out + self.deltas["o"](o)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def apply_lora(
    visual: nn.Module, *, rank: int, alpha: float, dropout: float, targets: Sequence[str] = TARGETS
) -> list[nn.Parameter]:
    """Freeze `visual` and wrap every self-attention nn.MultiheadAttention in it; returns the LoRA parameters."""
    for p in visual.parameters():
        p.requires_grad_(False)
    replaced = 0
    for module in list(visual.modules()):
        attn = getattr(module, "attn", None)
        if isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim:  # self-attention blocks only
            module.attn = LoRAMultiheadAttention(attn, rank=rank, alpha=alpha, dropout=dropout, targets=targets)
            replaced += 1
    if replaced == 0:
        raise ValueError(f"no nn.MultiheadAttention found in {type(visual).__name__}; expected an open_clip ViT")
    params = lora_parameters(visual)
    log.info("LoRA r=%d alpha=%g on %s of %d attention blocks: %d parameters", rank, alpha, list(targets), replaced,
             sum(p.numel() for p in params))
    return params


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """All LoRA A/B parameters under `module` (the only trainable vision weights in LoRA mode)."""
    return [p for m in module.modules() if isinstance(m, LoRALinearDelta) for p in (m.A, m.B)]
