"""RowSparseAdamW steps an embedding table exactly as torch's AdamW does, reading only the rows that had gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline_lib.optim.sparse_adamw import RowSparseAdamW

SETTINGS = {"betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.05}


def _batches(steps: int, vocab: int) -> list[torch.Tensor]:
    """Token batches drawn from a few small ranges, so rows come into use late and some are used only once."""
    g = torch.Generator().manual_seed(0)
    ranges = [(0, 8), (8, 12), (40, 48), (0, 4)]
    out = []
    for step in range(steps):
        lo, hi = ranges[step % len(ranges)] if step != 5 else (vocab - 3, vocab)  # rows used exactly once
        out.append(torch.randint(lo, hi, (6, 5), generator=g))
    return out


def _train(table: torch.nn.Embedding, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor],
           head: torch.Tensor, start: int = 0) -> None:
    for step, ids in enumerate(batches, start):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (1 + step % 3)  # the lr changes every step, as under a schedule
        table.zero_grad(set_to_none=True)
        (table(ids) @ head).tanh().sum().backward()
        optimizer.step()


def _twin_tables(seed: int) -> tuple[torch.nn.Embedding, torch.nn.Embedding, torch.Tensor]:
    """Two equal 64-row tables and a fixed head that turns looked-up rows into a loss."""
    torch.manual_seed(seed)
    table = torch.nn.Embedding(64, 16)
    return table, copy.deepcopy(table), torch.randn(16, 3)


def test_equals_torch_adamw_bit_for_bit() -> None:
    dense, sparse, head = _twin_tables(0)
    batches = _batches(24, 64)
    _train(dense, torch.optim.AdamW(dense.parameters(), lr=1e-2, **SETTINGS), batches, head)
    optimizer = RowSparseAdamW(sparse.parameters(), lr=1e-2, **SETTINGS)
    _train(sparse, optimizer, batches, head)
    assert torch.equal(sparse.weight, dense.weight)
    seen = optimizer.state[sparse.weight]["seen"]
    assert 0 < int(seen.sum()) < 64  # some rows were never read, yet they decayed like AdamW's


def test_resumes_from_its_state_dict_exactly() -> None:
    whole, resumed, head = _twin_tables(1)
    batches = _batches(20, 64)
    _train(whole, RowSparseAdamW(whole.parameters(), lr=1e-2, **SETTINGS), batches, head)
    first = RowSparseAdamW(resumed.parameters(), lr=1e-2, **SETTINGS)
    _train(resumed, first, batches[:7], head)
    state = copy.deepcopy(first.state_dict())
    second = RowSparseAdamW(resumed.parameters(), lr=1e-2, **SETTINGS)
    second.load_state_dict(state)
    _train(resumed, second, batches[7:], head, start=7)
    assert torch.equal(resumed.weight, whole.weight)


def test_rejects_what_it_cannot_step_row_by_row() -> None:
    with pytest.raises(ValueError, match="2-D parameters"):
        RowSparseAdamW([torch.nn.Parameter(torch.zeros(5))], lr=1e-3)
    table = torch.nn.Embedding(10, 4, sparse=True)
    table(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="dense gradients"):
        RowSparseAdamW(table.parameters(), lr=1e-3).step()
