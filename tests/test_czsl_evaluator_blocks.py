"""The evaluator on score blocks (`ScoreBlocks`, float64, .npy files) equals the full-matrix evaluator; the C-GQA
scale benchmark runs tiny and reports its keys."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_czsl_evaluator import grid, naive

from pipeline_lib.czsl.evaluator import ScoreBlocks, evaluate
from pipeline_lib.czsl.feasibility import feasibility_filter

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "czsl_scale.py"
KEYS = ("seen", "unseen", "hm", "auc", "attr_acc", "obj_acc", "best_bias")


def instance(kind: str, seed: int = 0, n: int = 61, n_attr: int = 4, n_obj: int = 6):
    """Labels, masks and a float32 score matrix; `kind` picks continuous scores, integer ties or float32 near-ties."""
    gen = torch.Generator().manual_seed(seed)
    pa, po = grid(n_attr, n_obj)
    p = n_attr * n_obj
    seen = torch.rand(p, generator=gen) < 0.35
    seen[0], seen[-1] = True, False
    closed = seen | (torch.rand(p, generator=gen) < 0.75)
    candidates = torch.nonzero(closed).flatten()
    y = candidates[torch.randint(len(candidates), (n,), generator=gen)]
    y[0], y[1] = 0, p - 1 if closed[-1] else int(candidates[~seen[candidates]][0])  # a seen and an unseen sample
    if kind == "continuous":
        scores = torch.randn(n, p, generator=gen) + 2.5 * torch.nn.functional.one_hot(y, p)
    elif kind == "integer":  # many exact ties, more than the evaluator's 8 tie candidates
        scores = torch.randint(0, 3, (n, p), generator=gen).float()
    else:  # raw scores 1e-6 apart: distinct, but tied after + b in float32 at large biases
        scores = 25 + torch.randint(0, 20, (n, p), generator=gen).float() * 1e-6
        scores[torch.arange(n), y] += 2e-6
    return scores, y, pa, po, seen, closed


def run(scores, y, pa, po, seen, closed, **kw):
    return evaluate(scores, pa[y], po[y], y, pa, po, seen, closed, **kw)


def blocks_of(matrix: torch.Tensor, calls: list[tuple[int, int]] | None = None) -> ScoreBlocks:
    """A block source over a matrix that hands out fresh copies (and records the ranges asked for)."""

    def read(lo: int, hi: int) -> torch.Tensor:
        if calls is not None:
            calls.append((lo, hi))
        return matrix[lo:hi].clone()

    return ScoreBlocks(tuple(matrix.shape), read)


@pytest.mark.parametrize("kind", ["continuous", "integer", "near_ties"])
@pytest.mark.parametrize("world", ["closed", "open"])
def test_blocks_equal_full_matrix(kind: str, world: str) -> None:
    scores, y, pa, po, seen, closed = instance(kind, seed=len(kind))
    if world == "open":
        closed = torch.ones_like(closed)
    for k in (1, 2):
        full = run(scores, y, pa, po, seen, closed, top_k=k, chunk_size=10_000).to_dict()
        if k == 1:
            ref = naive(scores.numpy(), y.numpy(), pa.numpy(), po.numpy(), seen.numpy(), closed.numpy())
            assert {key: full[key] for key in KEYS} == pytest.approx({key: ref[key] for key in KEYS}, abs=1e-12)
            assert full["biases"] == ref["biases"]
        for chunk_size in (1, 3, 7, 16, len(y), len(y) + 5):
            calls: list[tuple[int, int]] = []
            out = run(blocks_of(scores, calls), y, pa, po, seen, closed, top_k=k, chunk_size=chunk_size)
            assert out.to_dict() == full, (kind, world, k, chunk_size)
            assert max(hi - lo for lo, hi in calls) <= chunk_size  # never more than one chunk of rows at a time
            rows_read = np.bincount(np.concatenate([np.arange(lo, hi) for lo, hi in calls]), minlength=len(y))
            assert set(rows_read.tolist()) <= {1, 2}  # pass 1, and pass 2 when there are biases to sweep


def test_blocks_equal_full_matrix_with_feasibility_filter() -> None:
    """Open world as the benchmark runs it: positive scores, the multiply filter applied to every block."""
    scores, y, pa, po, seen, _ = instance("continuous", seed=5, n=80, n_attr=5, n_obj=7)
    scores = scores + 10  # positive, as the multiply rule assumes
    feas = torch.rand(seen.numel(), generator=torch.Generator().manual_seed(6)) * (~seen).float()
    ones = torch.ones_like(seen)
    for variant in ("multiply", "mask"):
        transform = feasibility_filter(feas, seen, 0.4, variant)
        full = run(scores, y, pa, po, seen, ones, column_transform=transform, chunk_size=10_000).to_dict()
        for chunk_size in (1, 9, 80):
            out = run(blocks_of(scores), y, pa, po, seen, ones, column_transform=transform, chunk_size=chunk_size)
            assert out.to_dict() == full, (variant, chunk_size)


def test_float64_inputs_give_the_float32_result() -> None:
    """float64 scores (tensor, array, blocks) are rounded to float32 per chunk: the result of a whole-matrix cast."""
    scores, y, pa, po, seen, closed = instance("continuous", seed=7)
    wide = scores.double() + torch.randn(scores.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    want = run(wide.float(), y, pa, po, seen, closed).to_dict()
    assert run(wide, y, pa, po, seen, closed, chunk_size=5).to_dict() == want
    assert run(wide.numpy(), y, pa, po, seen, closed, chunk_size=5).to_dict() == want
    assert run(blocks_of(wide), y, pa, po, seen, closed, chunk_size=5).to_dict() == want
    as_arrays = ScoreBlocks(tuple(wide.shape), lambda lo, hi: wide.numpy()[lo:hi])
    assert run(as_arrays, y, pa, po, seen, closed, chunk_size=4).to_dict() == want


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8"])
def test_from_npy_equals_full_matrix(tmp_path: Path, dtype: str) -> None:
    scores, y, pa, po, seen, closed = instance("near_ties", seed=9)
    path = tmp_path / "scores.npy"
    np.save(path, scores.double().numpy().astype(dtype))
    want = run(torch.from_numpy(np.load(path).astype(np.float32)), y, pa, po, seen, closed).to_dict()
    for rows_per_read in (1, 4, 1000):
        blocks = ScoreBlocks.from_npy(path, rows_per_read=rows_per_read)
        assert blocks.shape == tuple(scores.shape) and blocks.ndim == 2
        assert run(blocks, y, pa, po, seen, closed, chunk_size=7).to_dict() == want


def test_from_npy_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "scores.npy"
    np.save(path, np.zeros((3, 4), np.float16))
    with pytest.raises(ValueError, match="dtype float16; expected float32 or float64"):
        ScoreBlocks.from_npy(path)
    np.save(path, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"shape \(4,\) .* expected a C-order \(N, P\)"):
        ScoreBlocks.from_npy(path)
    np.save(path, np.asfortranarray(np.zeros((3, 4), np.float32)))
    with pytest.raises(ValueError, match="fortran order True"):
        ScoreBlocks.from_npy(path)
    np.save(path, np.zeros((3, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-8])  # the last row loses two values
    blocks = ScoreBlocks.from_npy(path, rows_per_read=1)
    assert blocks.read(0, 2).shape == (2, 4)
    with pytest.raises(ValueError, match=r"rows 2..2 truncated \(8 of 16 bytes\)"):
        blocks.read(0, 3)


def test_bad_blocks_are_named() -> None:
    scores, y, pa, po, seen, closed = instance("continuous", seed=10, n=12)
    shape = tuple(scores.shape)
    with pytest.raises(
        ValueError, match=r"ScoreBlocks.read\(0, 5\) returned \(5, 23\) torch.float32; expected \(5, 24\)"
    ):
        run(ScoreBlocks(shape, lambda lo, hi: scores[lo:hi, 1:]), y, pa, po, seen, closed, chunk_size=5)
    with pytest.raises(ValueError, match="float16; expected .* float32 or float64"):
        run(ScoreBlocks(shape, lambda lo, hi: scores[lo:hi].half()), y, pa, po, seen, closed)
    with pytest.raises(TypeError, match="returned list; expected a tensor or array"):
        run(ScoreBlocks(shape, lambda lo, hi: scores[lo:hi].tolist()), y, pa, po, seen, closed)
    with pytest.raises(ValueError, match=r"pair_attrs has shape \(24,\); expected \(25,\) to match scores 12 x 25"):
        run(ScoreBlocks((12, 25), lambda lo, hi: scores[lo:hi]), y, pa, po, seen, closed)
    with pytest.raises(ValueError, match="expected \\(N samples, P pairs\\)"):
        ScoreBlocks((12,), lambda lo, hi: scores[lo:hi])  # type: ignore[arg-type]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("czsl_scale", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_full_size_is_cgqa_open_world() -> None:
    """--scale 1 is spec 1.3's C-GQA open-world test phase: 5098 images x 413 * 674 = 278362 pairs."""
    sizes = _benchmark_module().sizes_at(1.0)
    assert sizes == {
        "images": 5098,
        "attrs": 413,
        "objs": 674,
        "pairs": 278362,
        "seen_pairs": 5592,
        "test_seen_pairs": 888,
        "test_unseen_pairs": 923,
    }


@pytest.mark.slow
def test_benchmark_runs_tiny() -> None:
    """The benchmark script as a user runs it, at a tiny scale, from generated rows and from a float64 .npy file."""
    outputs = {}
    for source in (["--source", "generated"], ["--source", "npy", "--npy-dtype", "float64"]):
        cmd = [sys.executable, str(BENCHMARK), "--scale", "0.02", "--threads", "1", "--chunk-size", "16", *source]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        top = {"benchmark", "scale", "full_size", "source", "chunk_size", "threads", "seed", "filter", "threshold"}
        assert top | {"sizes", "seconds", "memory", "metrics", "target_gb", "target_holds", "machine"} <= set(out)
        assert {"images", "pairs", "seen_images", "unseen_images", "matrix_gb_float32"} <= set(out["sizes"])
        assert {"evaluate", "read_scores", "total_with_processes"} <= set(out["seconds"])
        assert {"peak_rss_gb", "rss_before_evaluate_gb"} <= set(out["memory"])
        assert set(KEYS) | {"n_biases", "n_seen", "n_unseen"} <= set(out["metrics"])
        assert out["full_size"] is False and out["target_holds"] is True and out["target_gb"] == 4.0
        assert out["memory"]["peak_rss_gb"] >= out["memory"]["rss_before_evaluate_gb"] > 0
        assert out["metrics"]["n_biases"] > 0  # the sweep is exercised, not only the max-bias point
        outputs[out["source"]] = out
    assert set(outputs) == {"generated", "npy:float64"}
    assert "write_npy" in outputs["npy:float64"]["seconds"]
    # float64 file rounded back to float32 = the generated float32 rows: the same metrics
    assert outputs["generated"]["metrics"] == outputs["npy:float64"]["metrics"]
