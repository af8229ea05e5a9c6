"""Two fused autograd ops for the SeMoBridge-T step: on CPU the step is matmul-bound only if the (C K' x C) logits
and the (C K' x D) normalisations cost few memory passes. Both equal their unfused PyTorch forms (test-pinned).
"""

from __future__ import annotations

import torch

NORM_EPS = 1e-12  # F.normalize's default clamp of the norm (the one definition; closed_form.py uses it too)


def inverse_norm(x: torch.Tensor) -> torch.Tensor:
    """1 / max(||x||, NORM_EPS) along the last dim, kept as (..., 1): the L2 normalisation of F.normalize is x * r."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS).reciprocal_()  # (..., 1)


class _ScaledNormalize(torch.autograd.Function):
    """y = s x r along the last dim, r = 1/max(||x||, eps); backward dx = s r (g - n (n . g)) with n = y / s,
    written as s r (g - y (y . g) / s^2) so that only y and r are kept and each pass touches (..., D) once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        r = inverse_norm(x)  # (..., 1)
        y = x * (r * scale)  # (..., D)
        ctx.save_for_backward(y, r)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        y, r = ctx.saved_tensors
        s = ctx.scale
        dot = (g * y).sum(dim=-1, keepdim=True)  # (..., 1)
        dx = torch.addcmul(g, y, dot, value=-1.0 / (s * s)).mul_(r * s)
        return dx, None


def l2_normalize(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * x / ||x|| along the last dim (F.normalize semantics, one fused backward)."""
    return _ScaledNormalize.apply(x, scale)


class _CrossEntropyMean(torch.autograd.Function):
    """mean_i (lse_i - z_i,t_i). Forward keeps e = exp(z - max) and its row sums; backward turns e into
    (softmax - onehot) / N in one pass, so the (N, C) logits are touched ~5 times in all instead of ~8."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        m = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        e = torch.sub(logits, m).exp_()  # (N, C)
        s = e.sum(dim=-1, keepdim=True)  # (N, 1)
        lse = m.squeeze(1) + s.squeeze(1).log()  # (N,)
        picked = logits.gather(1, targets[:, None]).squeeze(1)  # (N,)
        ctx.save_for_backward(e, s, targets)
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        e, s, targets = ctx.saved_tensors
        n = e.shape[0]
        grad = e * (g / (n * s))  # softmax * g / N (out of place: a retained graph may call backward again)
        grad[torch.arange(n, device=e.device), targets] -= g / n
        return grad, None


def cross_entropy_mean(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, targets) (mean, no smoothing) with a single-pass backward."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} / targets {tuple(targets.shape)}: expected (N, C) and (N,)")
    return _CrossEntropyMean.apply(logits, targets)
