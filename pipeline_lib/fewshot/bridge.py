"""The SeMoBridge bridge (spec 3): truncated pseudo-inverse of W_txt, rescale constant, bridged embeddings, prototypes.

Row-vector convention: a pre-projection text EOS e (D_t) projects as e @ W_txt with W_txt (D_t, D_p); image features
f are raw post-projection outputs (D_p), never normalised before the bridge (trap 7.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.ops import l2_normalize

log = logging.getLogger(__name__)


def truncated_pinv(w_txt: torch.Tensor, atol: float) -> torch.Tensor:
    """W+ (D_p, D_t) = pinv(W_txt) with an absolute cut: torch keeps singular values > atol, drops those <= atol.

    rtol=0 is passed explicitly: with atol alone torch already uses rtol=0, but stating it guards against a relative
    cut (NumPy's rcond) sneaking in (trap 7.1).
    """
    if w_txt.ndim != 2:
        raise ValueError(f"W_txt has shape {tuple(w_txt.shape)}: expected (D_t, D_p)")
    return torch.linalg.pinv(w_txt.float(), atol=atol, rtol=0.0)  # (D_p, D_t)


def rescale_constant(class_eos_raw: torch.Tensor) -> float:
    """L = mean_c ||T_eos_raw[c]||: norm of each class's mean EOS, averaged (not the mean of per-prompt norms)."""
    return float(class_eos_raw.float().norm(dim=-1).mean())


@dataclass(frozen=True)
class BridgeFit:
    """Closed-form bridge plus the diagnostics the spec asks to log (trap 7.3b)."""

    pinv: torch.Tensor  # (D_p, D_t)
    scale: float  # L
    singular_values: torch.Tensor  # (min(D_t, D_p),) of W_txt, descending
    n_dropped: int  # singular values <= atol
    rank_pinv_wtxt: int  # rank of W+ W_txt (D_p x D_p): the joint-space subspace the bridge keeps

    def summary(self) -> dict:
        """JSON-friendly numbers for metrics and logs."""
        sv = self.singular_values
        return {
            "scale_L": self.scale,
            "sv_min": float(sv.min()),
            "sv_median": float(sv.median()),
            "sv_max": float(sv.max()),
            "n_singular_values": int(sv.numel()),
            "n_dropped": self.n_dropped,
            "rank_pinv_wtxt": self.rank_pinv_wtxt,
        }


def fit_bridge(w_txt: torch.Tensor, class_eos_raw: torch.Tensor, atol: float) -> BridgeFit:
    """W+, L and the spectrum of W_txt."""
    w = w_txt.float()
    pinv = truncated_pinv(w, atol)
    sv = torch.linalg.svdvals(w)  # (min(D_t, D_p),)
    n_dropped = int((sv <= atol).sum())
    proj = pinv @ w  # (D_p, D_p)
    rank = int(torch.linalg.matrix_rank(proj, atol=1e-3, rtol=0.0))
    fit = BridgeFit(pinv, rescale_constant(class_eos_raw), sv, n_dropped, rank)
    log.info("bridge: %d of %d singular values <= %g dropped, rank(W+ W_txt)=%d, L=%.4f",
             n_dropped, sv.numel(), atol, rank, fit.scale)
    return fit


def bridge(
    f: torch.Tensor, pinv: torch.Tensor, w_txt: torch.Tensor, scale: float, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bridge(f, b): u = f W+ + b; pseudo-EOS u~ = L n(u); bridged g^ = u~ W_txt. Returns (g^, u~), both unnormalised.

    f is (..., D_p) raw; bias broadcasts against (..., D_t) (per-view class bias for support, None for queries).
    """
    u = f @ pinv  # (..., D_t)
    if bias is not None:
        u = u + bias
    u_tilde = l2_normalize(u, float(scale))  # (..., D_t), norm L
    return u_tilde @ w_txt, u_tilde  # (..., D_p), (..., D_t)


def image_prototypes(support: torch.Tensor) -> torch.Tensor:
    """P_c = n(mean_k F_ck): raw views averaged, then normalised. support (C, K', D_p) -> (C, D_p)."""
    return F.normalize(support.mean(dim=1), dim=-1)


def bridged_prototypes(
    support: torch.Tensor,
    pinv: torch.Tensor,
    w_txt: torch.Tensor,
    scale: float,
    class_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """P^_c = n(mean_k Bridge(F_ck, b_c)) and U^_c = n(mean_k u~_ck) (trap 7.4: normalise in EOS space, project,
    average unnormalised in the joint space, then normalise).

    Returns (P^ (C, D_p), U^ (C, D_t), G^ (C, K', D_p), U~ (C, K', D_t)); the per-view tensors feed the losses.
    """
    bias = None if class_bias is None else class_bias[:, None, :]  # (C, 1, D_t): only the view's own class
    g_hat, u_tilde = bridge(support, pinv, w_txt, scale, bias)  # (C, K', D_p), (C, K', D_t)
    p_hat = F.normalize(g_hat.mean(dim=1), dim=-1)  # (C, D_p)
    u_hat = F.normalize(u_tilde.mean(dim=1), dim=-1)  # (C, D_t)
    return p_hat, u_hat, g_hat, u_tilde


def bridged_queries(f: torch.Tensor, pinv: torch.Tensor, w_txt: torch.Tensor) -> torch.Tensor:
    """q^ = n(Bridge(f, 0)) for queries; L and n(u) cancel under the final normalisation, so n(f W+ W_txt) is used.

    Equal to n(L n(f W+) W_txt) up to rounding (test-pinned); saves one normalisation of (N, D_t).
    """
    return F.normalize((f @ pinv) @ w_txt, dim=-1)  # (N, D_p)
