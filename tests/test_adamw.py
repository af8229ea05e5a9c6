"""adamw_update_ is torch.optim.AdamW's step, bit for bit."""

from __future__ import annotations

import pytest
import torch

from pipeline_lib.optim.adamw import adamw_update_


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_equals_torch_adamw_bit_for_bit(weight_decay: float) -> None:
    g = torch.Generator().manual_seed(0)
    theirs = torch.randn(7, 5, generator=g).requires_grad_()
    ours = theirs.detach().clone()
    exp_avg, exp_avg_sq = torch.zeros_like(ours), torch.zeros_like(ours)
    betas, eps = (0.9, 0.999), 1e-8
    opt = torch.optim.AdamW([theirs], lr=1e-3, betas=betas, eps=eps, weight_decay=weight_decay)
    for step in range(30):
        lr = 1e-3 * (1 + step % 4)
        grad = torch.randn(7, 5, generator=g) * (0.0 if step == 3 else 1.0)  # a zero gradient once
        opt.param_groups[0]["lr"] = lr
        theirs.grad = grad.clone()
        opt.step()
        adamw_update_(ours, grad, exp_avg, exp_avg_sq, step + 1, lr, *betas, eps, weight_decay)
    assert torch.equal(ours, theirs.detach())
    assert torch.equal(exp_avg, opt.state[theirs]["exp_avg"])
