"""Functions behind `bridgeflow czsl-eval`: pair order listing and scoring a saved .npy matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from czsl_fixtures import write_czsl_fixture

from pipeline_lib.czsl.cli_support import evaluate_scores_file, pair_order, split_rows
from pipeline_lib.czsl.data import load_czsl_dataset
from pipeline_lib.czsl.evaluator import evaluate_split
from pipeline_lib.czsl.feasibility import feasibility_filter

KEYS = {"seen", "unseen", "hm", "auc", "attr_acc", "obj_acc", "best_bias"}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return write_czsl_fixture(tmp_path / "shapes")


def _scores(ds, split: str, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    _, _, pair = ds.labels(split)
    s = 1 + torch.rand(len(pair), len(ds.pairs), generator=gen)  # (N, P) positive
    s[torch.arange(len(pair)), pair] += 0.8
    return s.numpy()


def test_pair_order(root: Path) -> None:
    assert pair_order(root, "closed") == load_czsl_dataset(root, "closed").pairs
    ow = pair_order(root, "open")
    assert len(ow) == 9 and ow[:3] == [("blue", "ball"), ("blue", "cone"), ("blue", "cube")]
    with pytest.raises(ValueError, match="world='both'"):
        pair_order(root, "both")


@pytest.mark.parametrize("world", ["closed", "open"])
def test_evaluate_scores_file_matches_evaluator(root: Path, tmp_path: Path, world: str) -> None:
    ds = load_czsl_dataset(root, world)
    scores = _scores(ds, "test")
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    out = evaluate_scores_file(root, "test", world, path, chunk_size=2)
    assert KEYS <= set(out) and (out["world"], out["n_samples"], out["n_pairs"]) == (world, 4, len(ds.pairs))
    assert {k: out[k] for k in KEYS} == evaluate_split(torch.from_numpy(scores), ds, "test").summary()
    json.dumps(out)


def test_float64_scores_give_the_float32_result(root: Path, tmp_path: Path) -> None:
    """numpy's default dtype is accepted: the scores are evaluated in float32 either way."""
    ds = load_czsl_dataset(root, "closed")
    scores = _scores(ds, "test")
    wide, narrow = tmp_path / "f64.npy", tmp_path / "f32.npy"
    np.save(wide, scores.astype(np.float64))
    np.save(narrow, scores.astype(np.float32))
    assert evaluate_scores_file(root, "test", "closed", wide) == evaluate_scores_file(root, "test", "closed", narrow)


def test_shape_and_dtype_errors(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "scores.npy"
    np.save(path, np.zeros((4, 9), np.float32))  # open-world width given for the closed world
    with pytest.raises(ValueError, match=r"has shape 4 x 9; expected 4 x 8"):
        evaluate_scores_file(root, "test", "closed", path)
    np.save(path, np.zeros((4, 8), np.float16))
    with pytest.raises(ValueError, match="dtype float16; expected float32 or float64"):
        evaluate_scores_file(root, "test", "closed", path)
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        evaluate_scores_file(root, "test", "closed", tmp_path / "absent.npy")
    with pytest.raises(ValueError, match="split='train'"):
        evaluate_scores_file(root, "train", "closed", path)


def test_feasibility_options(root: Path, tmp_path: Path) -> None:
    ds = load_czsl_dataset(root, "open")
    feas = np.array([0.35, 0.0, 0.75, 0.3, 0.75, 0.0, 0.0, 0.35, 0.0], np.float32)  # OW order, seen pairs 0
    feas_path = tmp_path / "feas.npy"
    np.save(feas_path, feas)
    test_path, val_path = tmp_path / "test.npy", tmp_path / "val.npy"
    np.save(test_path, _scores(ds, "test"))
    np.save(val_path, _scores(ds, "val"))

    out = evaluate_scores_file(root, "test", "open", test_path, feas_path, threshold=0.5)
    expected = evaluate_split(
        torch.from_numpy(np.load(test_path)),
        ds,
        "test",
        column_transform=feasibility_filter(torch.from_numpy(feas), ds.seen_mask, 0.5),
    )
    assert {k: out[k] for k in KEYS} == expected.summary()
    assert (out["threshold"], out["threshold_source"], out["filter"], out["feasibility"]) == (
        0.5,
        "given",
        "multiply",
        "file:feas.npy",
    )
    masked = evaluate_scores_file(root, "test", "open", test_path, feas_path, threshold=0.5, filter_variant="mask")
    assert masked["filter"] == "mask"

    cal = evaluate_scores_file(root, "val", "open", val_path, feas_path)
    assert cal["threshold_source"] == "calibrated_on_val" and 0.3 <= cal["threshold"] <= 0.75

    with pytest.raises(ValueError, match=r"run `bridgeflow czsl-eval --split val .* pass the threshold it prints"):
        evaluate_scores_file(root, "test", "open", test_path, feas_path)
    with pytest.raises(ValueError, match="open world only"):
        evaluate_scores_file(root, "test", "closed", test_path, feas_path, threshold=0.5)
    with pytest.raises(ValueError, match="threshold was given without --feasibility"):
        evaluate_scores_file(root, "test", "open", test_path, threshold=0.5)
    np.save(feas_path, feas[:8])
    with pytest.raises(ValueError, match=r"feasibility vector .* has shape 8; expected 9"):
        evaluate_scores_file(root, "test", "open", test_path, feas_path, threshold=0.5)


def test_cli_commands(root: Path, tmp_path: Path) -> None:
    """`bridgeflow czsl-pairs` prints the column order and `bridgeflow czsl-eval` scores a matrix in that order."""
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["czsl-pairs", "--root", str(root), "--world", "open"])
    assert listed.exit_code == 0
    assert [tuple(line.split()) for line in listed.stdout.splitlines()] == pair_order(root, "open")
    rows = split_rows(root, "open")
    assert f"val {rows['val']} x 9, test {rows['test']} x 9" in " ".join(listed.stderr.split())
    ds = load_czsl_dataset(root, "closed")
    path = tmp_path / "scores.npy"
    np.save(path, _scores(ds, "test").astype(np.float32))
    result = runner.invoke(app, ["czsl-eval", "--root", str(root), "--split", "test", "--scores", str(path)])
    assert result.exit_code == 0, result.output
    assert KEYS <= set(json.loads(result.output))
    np.save(path, np.zeros((4, 9), np.float32))
    bad = runner.invoke(app, ["czsl-eval", "--root", str(root), "--split", "test", "--scores", str(path)])
    assert bad.exit_code == 2 and "expected 4 x 8" in bad.output
