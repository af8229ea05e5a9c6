"""SeMoBridge-T (spec 5): learn the inverse projection and per-class EOS biases on cached support features.

Full-batch AdamW, one step per "epoch", Dassl's warm-up schedule, per-step validation with the INIT blend and
best-val selection. Pure tensors in, tensors and curves out; CPU-deterministic (no sampling anywhere). The loss is
defined with autograd in `semobridge_t_losses`; the loop steps with its closed-form gradients (closed_form.py), which
cost half as much per step at few-shot sizes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.bridge import bridged_prototypes
from pipeline_lib.fewshot.closed_form import semobridge_t_step
from pipeline_lib.fewshot.config import LOSS_VARIANTS, BlendParams, TrainingConfig
from pipeline_lib.fewshot.logits import blend_score, percent, subset_mask
from pipeline_lib.fewshot.ops import cross_entropy_mean, l2_normalize
from pipeline_lib.optim.adamw import adamw_update_

log = logging.getLogger(__name__)

LOSS_TERMS: tuple[str, ...] = ("img", "txte", "txtp", "cons", "bias")


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """Learning rate of optimiser step `step` (0-based epoch).

    Dassl's linear warm-up: epoch 0 runs at warmup_min_lr, epochs 1..W-1 at lr * t / W (so the lr first drops to
    lr / W), then the constant base lr (single_step with gamma 1).
    """
    if step < 0:
        raise ValueError(f"step={step}: expected >= 0")
    w = cfg.warmup_steps
    if w == 0 or step >= w:
        return cfg.lr
    if step == 0:
        return cfg.warmup_min_lr
    return cfg.lr * step / w


def loss_weights(cfg: TrainingConfig, has_bias: bool) -> dict[str, float]:
    """Weight of each loss term: L = l_it L_img + (1 - l_it)(L_txtp + L_txte)/2 + l_c L_cons + l_b L_bias,
    with the terms outside cfg.loss_variant (and L_bias without class biases) at 0."""
    on = LOSS_VARIANTS[cfg.loss_variant]
    txt = (1.0 - cfg.lambda_it) / 2.0
    w = {
        "img": cfg.lambda_it if "img" in on else 0.0,
        "txte": txt if "txt" in on else 0.0,
        "txtp": txt if "txt" in on else 0.0,
        "cons": cfg.lambda_c if "cons" in on else 0.0,
        "bias": cfg.lambda_b if ("bias" in on and has_bias) else 0.0,
    }
    return w


def bias_norm_variance(class_bias: torch.Tensor) -> torch.Tensor:
    """L_bias: population variance of the per-class bias norms (C, D_t) -> ()."""
    norms = class_bias.norm(dim=-1)  # (C,)
    return ((norms - norms.mean()) ** 2).mean()


def semobridge_t_losses(
    support_n: torch.Tensor,
    p_hat: torch.Tensor,
    u_hat: torch.Tensor,
    g_hat: torch.Tensor,
    text_proj: torch.Tensor,
    text_eos: torch.Tensor,
    class_bias: torch.Tensor | None,
    weights: dict[str, float],
    logit_scale: float,
) -> dict[str, torch.Tensor]:
    """Unweighted loss terms (only those with a non-zero weight) plus "total".

    support_n (C, K', D_p) normalised support; p_hat (C, D_p), u_hat (C, D_t), g_hat (C, K', D_p) from
    `bridged_prototypes`. Only L_img is scaled (x logit_scale); the others use raw cosines (trap 7.5).
    """
    c, k, d = g_hat.shape
    view_targets = torch.arange(c, device=g_hat.device).repeat_interleave(k)  # [0]*K' + [1]*K' + ... (trap 7.14)
    class_targets = torch.arange(c, device=g_hat.device)
    terms: dict[str, torch.Tensor] = {}
    if weights["img"]:
        # the x100 is applied to the (C, D) prototypes rather than the (C K', C) logits: same product, less traffic
        terms["img"] = cross_entropy_mean(support_n.reshape(c * k, d) @ (logit_scale * p_hat).T, view_targets)
    if weights["txte"]:
        terms["txte"] = cross_entropy_mean(u_hat @ text_eos.T, class_targets)
    if weights["txtp"]:
        terms["txtp"] = cross_entropy_mean(p_hat @ text_proj.T, class_targets)
    if weights["cons"]:
        g_n = l2_normalize(g_hat).reshape(c * k, d)  # (C K', D_p)
        terms["cons"] = cross_entropy_mean(g_n @ p_hat.T, view_targets)
    if weights["bias"] and class_bias is not None:
        terms["bias"] = bias_norm_variance(class_bias)
    total = sum(weights[n] * v for n, v in terms.items())
    terms["total"] = total if isinstance(total, torch.Tensor) else torch.zeros(())
    return terms


class InitValidator:
    """Per-step val accuracy with the fixed INIT blend (spec 5.4): the z1 term, the KL weights and the image
    prototypes do not change during training, so they are computed once; each call bridges the queries with the
    current W+ and scores against the current bridged prototypes."""

    def __init__(self, val_raw: torch.Tensor, val_labels: torch.Tensor, text_proj: torch.Tensor,
                 image_proto: torch.Tensor, kl: torch.Tensor, init: BlendParams, subset: str = "all",
                 chunk: int = 8192) -> None:
        self.use = subset_mask(subset)
        self.p = torch.tensor(init.as_tuple(), dtype=torch.float32, device=val_raw.device)  # (7,)
        self.f = val_raw.float()  # (N, D_p)
        self.q = F.normalize(self.f, dim=-1)  # (N, D_p)
        self.labels = val_labels.long()
        self.image_proto = image_proto
        self.w = torch.exp(self.p[0] * kl)  # (C,)
        self.chunk = chunk
        use1 = self.use[0]
        self.z1 = (torch.mul(self.q @ text_proj.T - 1.0, self.p[1]).exp_().mul_(self.p[4])  # (N, C)
                   if use1 else None)

    @torch.no_grad()
    def __call__(self, pinv: torch.Tensor, w_txt: torch.Tensor, p_hat: torch.Tensor) -> float:
        correct = 0
        a = pinv @ w_txt  # (D_p, D_p): n(f W+ W_txt) = n(f A)
        for lo in range(0, self.f.shape[0], self.chunk):
            sl = slice(lo, lo + self.chunk)
            d2 = self.q[sl] @ p_hat.T - 1.0 if self.use[1] else None  # (n, C)
            d3 = (F.normalize(self.f[sl] @ a, dim=-1) @ self.image_proto.T - 1.0) if self.use[2] else None
            if self.use[1] or self.use[2]:
                sc = blend_score(None, d2, d3, self.w, self.p, (False, self.use[1], self.use[2]))  # (n, C)
                if self.z1 is not None:
                    sc = sc.add_(self.z1[sl])
            else:
                sc = self.z1[sl]
            correct += int((sc.argmax(dim=1) == self.labels[sl]).sum())
        return percent(correct, self.f.shape[0])


@dataclass
class TrainResult:
    """Last-step and best-val weights, the curves, and which weights each part of inference uses."""

    pinv_last: torch.Tensor  # (D_p, D_t)
    bias_last: torch.Tensor | None  # (C, D_t)
    pinv_best: torch.Tensor
    bias_best: torch.Tensor | None
    best_step: int  # 0-based step after which the best val was measured (-1: no validation)
    best_val_acc: float
    curves: dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0

    def inference_weights(self, final_model: str, checkpoint_mixing: str) -> tuple[torch.Tensor,
                                                                                   torch.Tensor | None,
                                                                                   torch.Tensor]:
        """(W+ and bias for the bridged prototypes P^ (z2), W+ for bridging queries (z3)).

        faithful + best_val reproduces trap 7.12: P^ from the last step, queries with the best-val W+.
        """
        if final_model == "last_step":
            return self.pinv_last, self.bias_last, self.pinv_last
        if checkpoint_mixing == "faithful":
            return self.pinv_last, self.bias_last, self.pinv_best
        return self.pinv_best, self.bias_best, self.pinv_best


@torch.no_grad()
def train_semobridge_t(
    support: torch.Tensor,
    w_txt: torch.Tensor,
    pinv_init: torch.Tensor,
    scale: float,
    text_proj: torch.Tensor,
    text_eos: torch.Tensor,
    cfg: TrainingConfig,
    validator: InitValidator | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train inv_text (init W+) and class_bias (init 0) for cfg.steps full-batch AdamW steps (torch.optim.AdamW's
    arithmetic, pipeline_lib.optim.adamw).

    support (C, K', D_p) raw; validation (if a validator is given) runs after every `cfg.validate_every`-th step
    and after the last, on the updated weights; best-val selection picks among the validated steps. The forward pass
    of step t+1 uses exactly those weights, so its detached prototypes serve the validation of step t (one bridging
    pass per step instead of two); a last forward after the loop validates the final step.
    """
    if cfg.final_model == "best_val" and validator is None:
        raise ValueError("final_model='best_val' needs a validator (per-step validation)")
    t0 = time.perf_counter()
    c = support.shape[0]
    dev = support.device  # everything follows the support tensor (CPU by default, CUDA when the caller moved it)
    # plain tensors: closed_form.semobridge_t_step computes their gradients, no autograd graph is built
    inv_text = pinv_init.detach().clone().float().to(dev)  # (D_p, D_t)
    class_bias = torch.zeros(c, w_txt.shape[0], device=dev) if cfg.use_class_bias else None  # (C, D_t)
    params = [inv_text] + ([class_bias] if class_bias is not None else [])
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]  # AdamW's exp_avg, exp_avg_sq
    weights = loss_weights(cfg, class_bias is not None)
    support = support.float()
    support_n = F.normalize(support, dim=-1)  # (C, K', D_p), constant
    curves: dict[str, list] = {k: [] for k in ("step", "lr", "total", *LOSS_TERMS, "val_acc")}
    best = {"acc": -math.inf, "step": -1, "pinv": inv_text.detach().clone(),
            "bias": None if class_bias is None else class_bias.detach().clone()}

    def validate(step: int, p_hat: torch.Tensor) -> None:
        acc = validator(inv_text.detach(), w_txt, p_hat.detach())
        curves["val_acc"][step] = acc
        if acc > best["acc"]:  # strict improvement, as Dassl's is_best
            best.update(acc=acc, step=step, pinv=inv_text.detach().clone(),
                        bias=None if class_bias is None else class_bias.detach().clone())

    for step in range(cfg.steps):
        out = semobridge_t_step(support, support_n, inv_text, class_bias, w_txt, scale, text_proj, text_eos, weights,
                                cfg.logit_scale)
        if validator is not None and step > 0 and step % cfg.validate_every == 0:
            validate(step - 1, out.p_hat)
        lr = lr_at(step, cfg)
        for param, grad, (exp_avg, exp_avg_sq) in zip(params, (out.grad_pinv, out.grad_bias), moments, strict=False):
            adamw_update_(param, grad, exp_avg, exp_avg_sq, step + 1, lr, *cfg.betas, cfg.eps, cfg.weight_decay)
        curves["step"].append(step)
        curves["lr"].append(lr)
        values = torch.stack(list(out.terms.values())).tolist()  # one host read per step
        values = dict(zip(out.terms, values, strict=True))
        for name in ("total", *LOSS_TERMS):
            curves[name].append(values.get(name, float("nan")))
        curves["val_acc"].append(float("nan"))
        if on_step is not None:
            on_step(step)
    if validator is not None:
        validate(cfg.steps - 1, bridged_prototypes(support, inv_text, w_txt, scale, class_bias)[0])
    seconds = time.perf_counter() - t0
    log.info("SeMoBridge-T: %d steps in %.1f s, best val %.2f%% after step %d", cfg.steps, seconds, best["acc"],
             best["step"])
    def cpu(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.detach().to("cpu", copy=True)

    return TrainResult(
        pinv_last=cpu(inv_text),
        bias_last=cpu(class_bias),
        pinv_best=cpu(best["pinv"]),
        bias_best=cpu(best["bias"]),
        best_step=best["step"],
        best_val_acc=float(best["acc"]) if validator is not None else float("nan"),
        curves=curves,
        seconds=seconds,
    )
