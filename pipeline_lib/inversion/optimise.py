"""The optimisation loop OTI and OVI share: per-sample parameters fitted so a frozen encoder's output matches targets.

A whole batch of samples is optimised at once as one parameter tensor (B, K, W); the loss is the batch mean of
(1 - cos), so samples only interact through the GradScaler's skip-on-overflow (CUDA) and Adam's eps. The last iterate
is returned (no best-step selection); features of intermediate iterates are recorded at chosen steps instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline_lib.inversion.config import OptimConfig

log = logging.getLogger(__name__)

#: encode(params (B, K, W)) -> features (B, D); must keep the autograd graph to params.
Encoder = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class InversionOutput:
    """Result of one batch; every tensor is fp32 on the CPU, rows in the order of the targets."""

    params: Tensor  # (B, K, W) the last iterate (pseudo-tokens / pseudo-patches)
    features: Tensor  # (B, D) encoder output of the last iterate, recomputed in fp32 without autocast
    snapshots: Tensor  # (B, S, D) encoder output after each of `snapshot_steps`, recomputed in fp32
    losses: Tensor  # (B, steps) per-sample loss at every step (of the iterate before that step's update)


def init_params(n: int, shape: tuple[int, int], std: float, seed: int) -> Tensor:
    """(n, K, W) i.i.d. N(0, std^2) drawn on the CPU, so the initialisation is the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen) * std  # (n, K, W)


def _recompute(encode: Encoder, params: Tensor) -> Tensor:
    """fp32 features of the current iterate, as used for evaluation (no autocast, no graph)."""
    with torch.no_grad():
        return encode(params.detach()).float()  # (B, D)


def invert(
    encode: Encoder,
    targets: Tensor,
    init: Tensor,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    snapshot_steps: Sequence[int] = (),
    amp: bool = True,
) -> InversionOutput:
    """Fit `init` (B, K, W) so that cos(encode(params), targets) -> 1 per row; return the last iterate.

    `targets` (B, D) may be raw (un-normalised) features. The parameters live on the targets' device. With `amp` and a
    CUDA device the forward runs under fp16 autocast with a GradScaler (a step with inf/NaN gradients is skipped for
    the whole batch); on the CPU everything is fp32.
    """
    if targets.dim() != 2 or init.dim() != 3 or init.shape[0] != targets.shape[0]:
        raise ValueError(
            f"targets must be (B, D) and init (B, K, W) with the same B; got {tuple(targets.shape)} and "
            f"{tuple(init.shape)}"
        )
    if any(s < 0 or s > steps for s in snapshot_steps):
        raise ValueError(f"snapshot_steps {list(snapshot_steps)} must lie in [0, steps={steps}]")
    device = targets.device
    use_amp = amp and device.type == "cuda"
    params = torch.nn.Parameter(init.to(device=device, dtype=torch.float32).clone())  # (B, K, W)
    optimiser = torch.optim.AdamW([params], lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    target_dirs = F.normalize(targets.detach().float(), dim=-1)  # (B, D)
    losses = torch.empty(targets.shape[0], steps, device=device)  # (B, steps)
    wanted = set(snapshot_steps)
    # Without autocast the training forward of step s+1 already computes the fp32 features of iterate s, so
    # snapshots reuse it; with autocast those are fp16 features and the iterate is recomputed in fp32 instead.
    reuse = not use_amp
    snaps: dict[int, Tensor] = {0: _recompute(encode, params)} if 0 in wanted and not reuse else {}

    for step in range(1, steps + 1):
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            feats = encode(params)  # (B, D) features of iterate step - 1
        if reuse and step - 1 in wanted:
            snaps[step - 1] = feats.detach().float()
        per_sample = 1.0 - (F.normalize(feats.float(), dim=-1) * target_dirs).sum(dim=-1)  # (B,)
        scaler.scale(per_sample.mean()).backward()
        scaler.step(optimiser)
        scaler.update()
        losses[:, step - 1] = per_sample.detach()
        if not reuse and step in wanted:
            snaps[step] = _recompute(encode, params)

    final = snaps[steps] if steps in snaps else _recompute(encode, params)  # the last iterate has no next forward
    snaps[steps] = final
    ordered = [snaps[s] for s in snapshot_steps]
    snapshots = torch.stack(ordered, dim=1) if ordered else final.new_zeros(final.shape[0], 0, final.shape[1])
    return InversionOutput(
        params=params.detach().float().cpu(),
        features=final.cpu(),
        snapshots=snapshots.cpu(),  # (B, S, D)
        losses=losses.float().cpu(),
    )


def invert_with_config(
    encode: Encoder, targets: Tensor, shape: tuple[int, int], cfg: OptimConfig, *, seed: int, amp: bool = True
) -> InversionOutput:
    """Fit fresh per-sample parameters of `shape` (K, W) with the init, optimiser and snapshot schedule of `cfg`."""
    init = init_params(targets.shape[0], shape, cfg.init_std, seed)  # (B, K, W)
    return invert(
        encode,
        targets,
        init,
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        snapshot_steps=cfg.recorded_steps,
        amp=amp,
    )
