"""Dynamic Memory Bank (spec 5): N image-feature slots per composition, updated at test time without labels.

* Keys are L2-normalised image features (VAC's v_q by default). Seen compositions start from their N most confident
  training features (lowest normalised entropy of the model's own prediction; training labels only pick the
  composition, which is allowed: it is training data). Unseen compositions start from their text feature in one
  slot, marked with a "text" entropy H0 (default 1 = log C, the lowest priority, so real images replace it first).
* Update, per test sample in stream order, gated by entropy: y_hat = arg-max of p over the evaluator's candidate
  set, h = H(p) / log C. If y_hat has a free slot and h < tau_gate: insert. If it is full: replace its
  highest-entropy entry when h is lower. Following TDA, a sample updates the bank before its own bank logits are
  read.
* Bank logits: alpha * sum_slots exp(-beta (1 - f . k)) per composition.
* The stream functions take features and predicted probabilities only: the bank never sees labels. The initial
  state is built once and copied, so val and test streams start from the same bank.
The static "seen only" ablation is the initial state without the unseen text slots and without updates.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class BankState:
    """keys (P, N, D) normalised; entropy (P, N) normalised to [0, 1]; filled (P, N) bool."""

    keys: torch.Tensor
    entropy: torch.Tensor
    filled: torch.Tensor

    def clone(self) -> BankState:
        return BankState(self.keys.clone(), self.entropy.clone(), self.filled.clone())

    @property
    def slots(self) -> int:
        return self.keys.shape[1]


@dataclass
class StreamTrace:
    """What a stream produced: per-sample slot similarities at read time and the update events."""

    sims: torch.Tensor  # (M, P, N) cos(f_t, k) read right after sample t's own update
    valid: torch.Tensor  # (M, P, N) bool, slot filled at that time
    order: np.ndarray  # (M,) processing order (sample indices)
    events: dict[str, int] = field(default_factory=dict)  # insert / replace / gated / kept counts
    final: BankState | None = None


def empty_bank(num_pairs: int, slots: int, dim: int) -> BankState:
    if num_pairs < 1 or slots < 1 or dim < 1:
        raise ValueError(f"bank sizes must be positive; got pairs={num_pairs}, slots={slots}, dim={dim}")
    return BankState(
        keys=torch.zeros(num_pairs, slots, dim),
        entropy=torch.full((num_pairs, slots), float("inf")),
        filled=torch.zeros(num_pairs, slots, dtype=torch.bool),
    )


def normalised_entropy(probs: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arg-max pair (B,) and H / log C (B,) of probs (B, P) renormalised over the candidate mask (P,) of size C."""
    c = int(candidates.sum())
    if c < 2:
        raise ValueError(f"candidate set has {c} pairs; expected at least 2 for a normalised entropy")
    p = probs * candidates.to(probs.dtype)  # (B, P)
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    h = -(p * p.clamp_min(1e-12).log()).sum(dim=-1) / math.log(c)  # (B,)
    return p.argmax(dim=-1), h


def fill_from_features(
    state: BankState, feats: torch.Tensor, pair_idx: torch.Tensor, entropy: torch.Tensor
) -> BankState:
    """Fill each composition's free slots with its lowest-entropy features (training data) -> new state."""
    out = state.clone()
    f = F.normalize(feats.float(), dim=-1)  # (M, D)
    for p in pair_idx.unique().tolist():
        rows = (pair_idx == p).nonzero().squeeze(1)
        rows = rows[entropy[rows].argsort()]  # most confident first
        free = (~out.filled[p]).nonzero().squeeze(1)
        for slot, r in zip(free.tolist(), rows.tolist(), strict=False):  # as many as fit
            out.keys[p, slot] = f[r]
            out.entropy[p, slot] = float(entropy[r])
            out.filled[p, slot] = True
    return out


def fill_from_text(
    state: BankState, text: torch.Tensor, pair_mask: torch.Tensor, text_entropy: float = 1.0
) -> BankState:
    """Put the text feature (P, D) into the first free slot of every masked composition that is still empty."""
    out = state.clone()
    t = F.normalize(text.float(), dim=-1)  # (P, D)
    for p in pair_mask.nonzero().squeeze(1).tolist():
        if not out.filled[p].any():
            out.keys[p, 0] = t[p]
            out.entropy[p, 0] = text_entropy
            out.filled[p, 0] = True
    return out


def update(state: BankState, f: torch.Tensor, pred: int, h: float, gate: float) -> str:
    """In-place entropy-gated update of composition `pred` with feature f (D,); returns the event name."""
    free = (~state.filled[pred]).nonzero()
    if free.numel() > 0:
        if h >= gate:
            return "gated"
        slot = int(free[0, 0])
    else:
        slot = int(state.entropy[pred].argmax())
        if h >= float(state.entropy[pred, slot]):
            return "kept"
    event = "insert" if free.numel() > 0 else "replace"
    state.keys[pred, slot] = f
    state.entropy[pred, slot] = h
    state.filled[pred, slot] = True
    return event


def stream_order(n: int, seed: int) -> np.ndarray:
    """The seeded random processing order of a test stream (batch size 1, shuffled, as TOMCAT)."""
    return np.random.default_rng(seed).permutation(n)


def order_digest(order: np.ndarray) -> str:
    """Short fingerprint of a stream order for the logs and metrics."""
    return hashlib.sha256(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:12]


@torch.no_grad()
def run_stream(
    initial: BankState, feats: torch.Tensor, probs: torch.Tensor, candidates: torch.Tensor, order: np.ndarray,
    *, gate: float = 1.0, dynamic: bool = True,
) -> StreamTrace:
    """Process samples in `order`: (dynamic) update, then read similarities to every slot. No labels are taken.

    feats (M, D) are the bank-key features of the samples, probs (M, P) the model's composition probabilities that
    decide the pseudo-label and entropy, candidates (P,) the evaluator's candidate mask.
    """
    if feats.shape[0] != probs.shape[0] or probs.shape[1] != initial.keys.shape[0]:
        raise ValueError(f"feats {tuple(feats.shape)} / probs {tuple(probs.shape)} do not match bank "
                         f"{tuple(initial.keys.shape)}")
    if sorted(order.tolist()) != list(range(feats.shape[0])):
        raise ValueError("order must be a permutation of the sample indices")
    state = initial.clone()
    f = F.normalize(feats.float(), dim=-1)  # (M, D)
    pred, h = normalised_entropy(probs.float(), candidates)  # (M,), (M,)
    m, (p, n, _) = f.shape[0], state.keys.shape
    sims = torch.zeros(m, p, n)
    valid = torch.zeros(m, p, n, dtype=torch.bool)
    events = {"insert": 0, "replace": 0, "gated": 0, "kept": 0}
    for t in order.tolist():
        if dynamic:
            events[update(state, f[t], int(pred[t]), float(h[t]), gate)] += 1
        sims[t] = state.keys @ f[t]  # (P, N)
        valid[t] = state.filled
    return StreamTrace(sims=sims, valid=valid, order=order, events=events, final=state)


def bank_logits(trace: StreamTrace, alpha: float, beta: float) -> torch.Tensor:
    """alpha * sum over filled slots of exp(-beta (1 - f . k)) -> (M, P), non-negative."""
    aff = torch.exp(-beta * (1.0 - trace.sims)) * trace.valid  # (M, P, N)
    return alpha * aff.sum(dim=-1)  # (M, P)


def bank_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p_mb = softmax(bank logits / tau_mb) (M, P)."""
    return (logits / temperature).softmax(dim=-1)
