"""Sparse Alignment (SA): each text is matched with its single best visual token.

Instead of comparing a text with the pooled CLS embedding, SAM-CZSL scores every composition (or primitive) text
against all L2-normalised visual tokens [CLS, patch_1..patch_L] in the joint space and keeps the maximum cosine, so
small, localised evidence (a colour patch, a shape edge) is not averaged away and the CLS token remains a candidate.
A top-k mean is offered as an ablation (k = 1 is the max).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparse_alignment(
    tokens: torch.Tensor, texts: torch.Tensor, *, topk: int = 1, chunk: int = 4096, return_index: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores (B, C) = max_j cos(token_j, text_c), or the mean of the top-k cosines.

    tokens (B, T, D) and texts (C, D) need not be normalised. Texts are processed `chunk` at a time so the (B, T, C)
    similarity never exists for large open-world text sets. With `return_index` also returns the arg-max token
    index (B, C) (top-1 token; useful for modality-gap diagnostics).
    """
    if tokens.ndim != 3 or texts.ndim != 2 or tokens.shape[-1] != texts.shape[-1]:
        raise ValueError(
            f"expected tokens (B, T, D) and texts (C, D); got {tuple(tokens.shape)} and {tuple(texts.shape)}"
        )
    if topk < 1 or topk > tokens.shape[1]:
        raise ValueError(f"topk={topk} must lie in [1, T={tokens.shape[1]}]")
    tok = F.normalize(tokens, dim=-1)  # (B, T, D)
    txt = F.normalize(texts, dim=-1)  # (C, D)
    scores, index = [], []
    for start in range(0, txt.shape[0], chunk):
        sim = torch.einsum("btd,cd->bct", tok, txt[start : start + chunk])  # (B, c, T)
        if topk == 1:
            val, idx = sim.max(dim=-1)  # (B, c)
        else:
            top, top_idx = sim.topk(topk, dim=-1)  # (B, c, k)
            val, idx = top.mean(dim=-1), top_idx[..., 0]  # (B, c)
        scores.append(val)
        index.append(idx)
    out = torch.cat(scores, dim=1)  # (B, C)
    return (out, torch.cat(index, dim=1)) if return_index else out
