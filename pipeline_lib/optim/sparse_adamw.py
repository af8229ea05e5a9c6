"""AdamW for an embedding table of which a step's gradient reaches only a few rows.

The tiny CLIP keeps CLIP's 49408-token BPE table, but the shapes-world captions use about a hundred of those tokens.
Dense AdamW reads and writes the whole table, both moments and the gradient every step (~30 ms of a ~500 ms
pretraining step on two CPU cores). A row that has never had a non-zero gradient has zero moments, so AdamW only
decays it (p *= 1 - lr * weight_decay). This optimiser applies the decay to the table in one pass and the rest of the
update to the rows that have ever had a gradient, with the element-wise arithmetic of torch's single-tensor AdamW (the
CPU default; pipeline_lib.optim.adamw), so the parameters equal `torch.optim.AdamW`'s bit for bit
(tests/test_backbone_sparse_adamw.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from pipeline_lib.optim.adamw import adamw_update_


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, no amsgrad) for 2-D parameters updated row by row; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError(
                f"RowSparseAdamW needs 2-D parameters (rows x width), got {[tuple(p.shape) for p in params]}"
            )
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader, which casts every tensor of the state to the parameter's dtype; `seen` is a mask."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "seen" in state:
                state["seen"] = state["seen"].bool()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:  # as torch's AdamW: a parameter without a gradient is not stepped at all
                    continue
                if p.grad.is_sparse:
                    raise ValueError("RowSparseAdamW takes dense gradients (it finds the rows itself)")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["seen"] = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
                seen = state["seen"]
                seen |= _nonzero_rows(p.grad)
                state["step"] += 1
                rows = seen.nonzero().squeeze(1)  # (n,)
                p.mul_(1 - lr * wd)
                _adam_rows(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], rows, float(state["step"]), lr, beta1, beta2, eps
                )
        return loss


def _nonzero_rows(grad: Tensor) -> Tensor:
    """(V,) True where a row of `grad` (V, W) has an element other than 0 (NaN counts): two reductions without a
    table-sized temporary. A -0.0 leaves AdamW's moments at +0.0, so such a row may stay unseen."""
    return (torch.amax(grad, dim=1) != 0) | (torch.amin(grad, dim=1) != 0)


def _adam_rows(
    p: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    rows: Tensor,
    step: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """AdamW's moment and parameter update (after the decay) on `rows` only."""
    g, m, v, x = grad[rows], exp_avg[rows], exp_avg_sq[rows], p[rows]  # (n, W) copies
    adamw_update_(x, g, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0)
    exp_avg[rows], exp_avg_sq[rows], p[rows] = m, v, x
