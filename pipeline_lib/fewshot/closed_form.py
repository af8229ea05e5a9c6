"""The SeMoBridge-T loss (spec 5) and its gradients in closed form, for the training loop.

With C x K' support views (6 x 32 in the default world) a training step is a few dozen tiny tensor ops, and on a CPU
autograd's graph, the custom-function wrappers and their bookkeeping cost about twice the arithmetic. This module
computes the loss terms and dL/dW+, dL/dbias with plain tensor ops. `train.semobridge_t_losses` (autograd) stays the
definition: tests/test_fewshot_train.py pins the two against each other for every loss variant.

Row-vector convention as in bridge.py. Forward: u = F W+ + b_c, u~ = L n(u), g^ = u~ W_txt, P^ = n(mean_k g^),
U^ = n(mean_k u~). Backward through y = n(x): dx = (dy - y (y . dy)) / ||x||.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline_lib.fewshot.ops import NORM_EPS, inverse_norm


@dataclass
class StepTerms:
    """One forward and backward: the loss terms, the gradients of the two trained tensors, the prototypes."""

    terms: dict[str, Tensor]  # unweighted terms with a non-zero weight, plus "total" (0-d tensors)
    grad_pinv: Tensor  # (D_p, D_t)
    grad_bias: Tensor | None  # (C, D_t)
    p_hat: Tensor  # (C, D_p) bridged prototypes at the weights the step was computed at


def _unit(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x / ||x||, 1 / ||x||) along the last dim, the norm clamped like F.normalize's."""
    r = inverse_norm(x)  # (..., 1)
    return x * r, r


def _unit_backward(y: Tensor, r: Tensor, dy: Tensor) -> Tensor:
    """Gradient wrt x of y = x r, r = 1 / ||x||, given dL/dy."""
    return torch.addcmul(dy, y, (y * dy).sum(dim=-1, keepdim=True), value=-1.0).mul_(r)


def _cross_entropy(logits: Tensor, targets: Tensor, weight: float) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of (N, C) logits and weight * its gradient, (softmax - onehot) * weight / N."""
    shifted = logits - logits.amax(dim=1, keepdim=True)  # (N, C)
    e = shifted.exp()
    total = e.sum(dim=1, keepdim=True)  # (N, 1)
    loss = (total.log().squeeze(1) - shifted.gather(1, targets[:, None]).squeeze(1)).mean()
    n = logits.shape[0]
    grad = e.div_(total)
    grad[torch.arange(n, device=logits.device), targets] -= 1.0
    return loss, grad.mul_(weight / n)


def semobridge_t_step(
    support: Tensor,
    support_n: Tensor,
    pinv: Tensor,
    class_bias: Tensor | None,
    w_txt: Tensor,
    scale: float,
    text_proj: Tensor,
    text_eos: Tensor,
    weights: dict[str, float],
    logit_scale: float,
) -> StepTerms:
    """Loss terms of `train.semobridge_t_losses` and the gradients of the weighted total wrt `pinv` and `class_bias`.

    support (C, K', D_p) raw and support_n its normalised copy; pinv (D_p, D_t); class_bias (C, D_t) or None.
    """
    c, k, width_p = support.shape
    width_t = pinv.shape[1]
    view_targets = torch.arange(c, device=support.device).repeat_interleave(k)  # (C K',)
    class_targets = torch.arange(c, device=support.device)
    u = support @ pinv  # (C, K', D_t)
    if class_bias is not None:
        u += class_bias[:, None, :]
    n_u, r_u = _unit(u)  # u~ = L n_u
    g = (n_u * scale) @ w_txt  # (C, K', D_p)
    p_hat, r_p = _unit(g.mean(dim=1))  # (C, D_p)
    terms: dict[str, Tensor] = {}
    d_p = torch.zeros_like(p_hat)  # dL/dP^
    d_g = torch.zeros_like(g)  # dL/dg^ from the consistency term
    d_u_tilde = torch.zeros_like(u)  # dL/du~ from the EOS-space term

    if weights["img"]:
        flat = support_n.reshape(c * k, width_p)
        terms["img"], dz = _cross_entropy(flat @ (logit_scale * p_hat).T, view_targets, weights["img"])
        d_p.addmm_(dz.T, flat, alpha=logit_scale)
    if weights["txte"]:
        u_hat, r_uh = _unit(n_u.mean(dim=1) * scale)  # (C, D_t)
        terms["txte"], dz = _cross_entropy(u_hat @ text_eos.T, class_targets, weights["txte"])
        d_u_tilde += (_unit_backward(u_hat, r_uh, dz @ text_eos) / k)[:, None, :]
    if weights["txtp"]:
        terms["txtp"], dz = _cross_entropy(p_hat @ text_proj.T, class_targets, weights["txtp"])
        d_p.addmm_(dz, text_proj)
    if weights["cons"]:
        g_n, r_g = _unit(g.reshape(c * k, width_p))  # (C K', D_p)
        terms["cons"], dz = _cross_entropy(g_n @ p_hat.T, view_targets, weights["cons"])
        d_p.addmm_(dz.T, g_n)
        d_g += _unit_backward(g_n, r_g, dz @ p_hat).reshape(c, k, width_p)
    grad_bias_norms = None
    if weights["bias"] and class_bias is not None:
        norms = torch.linalg.vector_norm(class_bias, dim=-1)  # (C,)
        centred = norms - norms.mean()
        terms["bias"] = centred.square().mean()
        # d var / d norm_c = 2 (norm_c - mean) / C; d norm / d b = b / norm, taken as 0 at b = 0 (as torch does)
        coef = torch.where(norms > 0, 2.0 * weights["bias"] / c * centred / norms.clamp_min(NORM_EPS), 0.0)
        grad_bias_norms = class_bias * coef[:, None]

    d_g += (_unit_backward(p_hat, r_p, d_p) / k)[:, None, :]  # through P^ = n(mean_k g^)
    d_u_tilde.view(c * k, width_t).addmm_(d_g.view(c * k, width_p), w_txt.T)  # through g^ = u~ W_txt
    d_u = _unit_backward(n_u, r_u, d_u_tilde).mul_(scale)  # through u~ = L n(u)
    grad_pinv = support.reshape(c * k, width_p).T @ d_u.reshape(c * k, width_t)  # (D_p, D_t)
    grad_bias = None
    if class_bias is not None:
        grad_bias = d_u.sum(dim=1)
        if grad_bias_norms is not None:
            grad_bias += grad_bias_norms
    total = sum(weights[name] * value for name, value in terms.items())
    terms["total"] = total if isinstance(total, Tensor) else torch.zeros((), device=support.device)
    return StepTerms(terms, grad_pinv, grad_bias, p_hat)
