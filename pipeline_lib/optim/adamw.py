"""AdamW's update written out, for training loops where `torch.optim`'s per-step bookkeeping costs more than the
arithmetic (SeMoBridge-T's 5000 tiny full-batch steps, the rows of a token-embedding table).

The operations and their order are those of torch's single-tensor AdamW (`torch.optim.adam._single_tensor_adam` with
decoupled weight decay, the CPU default), so parameters equal `torch.optim.AdamW`'s bit for bit
(tests/test_backbone_sparse_adamw.py, tests/test_fewshot_train.py).
"""

from __future__ import annotations

from torch import Tensor


def adamw_update_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float,
                  beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Step `param` and its moments in place; `step` counts from 1 (the bias corrections use it)."""
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)
