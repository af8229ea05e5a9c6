"""Visual Adaptive Condensation (VAC): a learnable query condenses all visual tokens into one feature.

One query (or a few, averaged) attends over the LayerNorm'd tokens [CLS, patches] through K pre-norm blocks
(cross-attention, then a 4x FFN), in the style of Troika's Cross-Modal Traction. The result v_q is a single,
cheap image feature that SA's token-level evidence can be distilled into (KL with SA as teacher), and that the
memory bank stores as its key.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionBlock(nn.Module):
    """q <- q + MHA(LN(q), LN(kv)); q <- q + FFN(LN(q)) (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"vac dim={dim} is not divisible by heads={heads}")
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv_n = self.ln_kv(kv)  # (B, T, D)
        q = q + self.drop(self.attn(self.ln_q(q), kv_n, kv_n, need_weights=False)[0])  # (B, Q, D)
        return q + self.drop(self.mlp(self.ln_mlp(q)))  # (B, Q, D)


class VisualAdaptiveCondensation(nn.Module):
    """Learnable queries through K cross-attention blocks over all tokens -> condensed feature (B, D)."""

    def __init__(
        self, dim: int, *, blocks: int = 2, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1,
        queries: int = 1,
    ) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, dim) * dim**-0.5)  # (Q, D)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, mlp_ratio, dropout) for _ in range(blocks))
        self.ln_out = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, D) in the joint space -> v_q (B, D) (not normalised)."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.query.shape[-1]:
            raise ValueError(f"expected tokens (B, T, {self.query.shape[-1]}); got {tuple(tokens.shape)}")
        q = self.query.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (B, Q, D)
        for blk in self.blocks:
            q = blk(q, tokens)  # (B, Q, D)
        return self.proj(self.ln_out(q)).mean(dim=1)  # (B, D)
