"""Sweep grids and comparison tables, and the prefect.yaml deployments, without running any stage."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline_lib.engine.params import ParamsError
from pipeline_lib.engine.sweep import (
    comparison,
    grid_points,
    headline_column_regex,
    parse_grid,
    point_name,
    split_values,
)


@pytest.mark.parametrize(("text", "values"), [
    ("1e-4,2e-4", ["1e-4", "2e-4"]),
    ("[1,4],[2, 8]", ["[1,4]", "[2, 8]"]),
    ("{a: 1, b: 2},[]", ["{a: 1, b: 2}", "[]"]),
    ("'a,b', c", ["'a,b'", "c"]),
    ("0.3", ["0.3"]),
])
def test_split_values_keeps_bracketed_and_quoted_commas(text: str, values: list[str]) -> None:
    assert split_values(text) == values


@pytest.mark.parametrize("text", ["1,,2", "[1,2", "'a,b", "1,"])
def test_split_values_rejects_malformed_lists(text: str) -> None:
    with pytest.raises(ParamsError):
        split_values(text)


def test_grid_is_the_product_of_the_axes() -> None:
    grid = parse_grid(["fewshot.training.lr=1e-4,2e-4", "fewshot.shots=[1,4],[2]"])
    assert grid == {"fewshot.training.lr": ["1e-4", "2e-4"], "fewshot.shots": ["[1,4]", "[2]"]}
    assert grid_points(grid) == [
        ["fewshot.training.lr=1e-4", "fewshot.shots=[1,4]"], ["fewshot.training.lr=1e-4", "fewshot.shots=[2]"],
        ["fewshot.training.lr=2e-4", "fewshot.shots=[1,4]"], ["fewshot.training.lr=2e-4", "fewshot.shots=[2]"],
    ]
    # deployment parameters arrive as JSON values
    assert grid_points({"fewshot.shots": [[1, 4]], "x.on": [True]}) == [["fewshot.shots=[1, 4]", "x.on=true"]]
    assert point_name(3, ["fewshot.training.lr=1e-4", "fewshot.shots=[1, 4]"]) == "003-lr=1e-4-shots=-1-4"


@pytest.mark.parametrize("specs", [[], ["fewshot.atol"], ["a=1", "a=2"], ["a=[1,"]])
def test_bad_grids_are_rejected(specs: list[str]) -> None:
    with pytest.raises(ParamsError):
        parse_grid(specs)


def test_comparison_has_one_row_per_point(tmp_path: Path) -> None:
    points = []
    for index, (atol, acc) in enumerate([(0.1, 0.5), (0.3, 0.75)]):
        folder = tmp_path / str(index)
        (folder / "metrics").mkdir(parents=True)
        metrics = {"matched_image_text": 0.7, "energy": {"weak": acc}}
        (folder / "metrics" / "gap.json").write_text(json.dumps(metrics))
        points.append(([f"backbone.diagnose.weak_atol={atol}"], folder))
    columns, rows = comparison(points)
    assert columns == ["backbone.diagnose.weak_atol", "gap:matched_image_text", "gap:energy.weak"]
    assert [r["gap:energy.weak"] for r in rows] == ["0.5", "0.75"]
    columns, rows = comparison(points, only_changed=True)
    assert columns == ["backbone.diagnose.weak_atol", "gap:energy.weak"]


def test_exp_show_keep_regex_picks_swept_params_and_headline_metrics() -> None:
    keep = re.compile(headline_column_regex(["diagnose"], ["backbone.diagnose.weak_atol"]))
    kept = ["backbone.diagnose.weak_atol", "energy.weak", "metrics/gap.json:energy.weak", "zero_shot.shape",
            "retrieval_map.image_to_image"]
    dropped = ["backbone.diagnose.bins", "fingerprint", "final_loss", "artifacts/features", "test_acc.zs.16.mean"]
    assert [c for c in kept + dropped if keep.match(c)] == kept


def test_prefect_yaml_deployments_match_the_flows() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"full", "grid"}
    assert [next(iter(step)) for step in spec["pull"]] == ["prefect.deployments.steps.set_working_directory"]
    for deployment in names.values():
        path, func = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        signature = inspect.signature(flow.fn)
        assert set(deployment["parameters"]) <= set(signature.parameters), deployment["name"]
        assert deployment["work_pool"]["name"] == "bridgeflow-process"
        bound = signature.bind(**deployment["parameters"])  # every required parameter has a value
        assert bound.arguments
    assert names["grid"]["parameters"]["grid"], "the sweep deployment needs an example grid"


def test_dvc_sweep_runs_points_serially_unless_jobs_are_given() -> None:
    from flows.dvc_sweep import exp_run_commands

    points = [["fewshot.atol=0.1"], ["fewshot.atol=0.3"]]
    assert exp_run_commands(points, ["fewshot_report"], jobs=1) == [
        ["exp", "run", "--temp", "-S", "fewshot.atol=0.1", "fewshot_report"],
        ["exp", "run", "--temp", "-S", "fewshot.atol=0.3", "fewshot_report"],
    ]
    queued = exp_run_commands(points, None, jobs=2)
    assert [c[:3] for c in queued] == [["exp", "run", "--queue"]] * 2 + [["exp", "run", "--run-all"]]
    assert queued[-1][-2:] == ["--jobs", "2"]
    with pytest.raises(ParamsError):
        exp_run_commands(points, None, jobs=0)
