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
    compare_points,
    comparison,
    grid_points,
    headline_column_regex,
    metrics_paths,
    parse_grid,
    point_name,
    render_comparison,
    shorten_key,
    split_values,
    transposed,
    unique_labels,
)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1e-4,2e-4", ["1e-4", "2e-4"]),
        ("[1,4],[2, 8]", ["[1,4]", "[2, 8]"]),
        ("{a: 1, b: 2},[]", ["{a: 1, b: 2}", "[]"]),
        ("'a,b', c", ["'a,b'", "c"]),
        ("0.3", ["0.3"]),
    ],
)
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
        ["fewshot.training.lr=1e-4", "fewshot.shots=[1,4]"],
        ["fewshot.training.lr=1e-4", "fewshot.shots=[2]"],
        ["fewshot.training.lr=2e-4", "fewshot.shots=[1,4]"],
        ["fewshot.training.lr=2e-4", "fewshot.shots=[2]"],
    ]
    # deployment parameters arrive as JSON values
    assert grid_points({"fewshot.shots": [[1, 4]], "x.on": [True]}) == [["fewshot.shots=[1, 4]", "x.on=true"]]
    assert point_name(3, ["fewshot.training.lr=1e-4", "fewshot.shots=[1, 4]"]) == "003-lr=1e-4-shots=-1-4"


@pytest.mark.parametrize("specs", [[], ["fewshot.atol"], ["a=1", "a=2"], ["a=[1,"]])
def test_bad_grids_are_rejected(specs: list[str]) -> None:
    with pytest.raises(ParamsError):
        parse_grid(specs)


def test_comparison_has_one_row_per_point_with_every_key_of_the_metrics_files(tmp_path: Path) -> None:
    points = []
    for index, (atol, acc) in enumerate([(0.1, 0.5), (0.3, 0.75)]):
        folder = tmp_path / str(index)
        (folder / "metrics").mkdir(parents=True)
        # invented key names: the comparison takes whatever flat keys the files hold, none is special
        metrics = {"matched_image_text": 0.7, "energy": {"weak": acc}, "a_new_number": {"x": 3}, "verdict": "holds"}
        (folder / "metrics" / "gap.json").write_text(json.dumps(metrics))
        points.append(([f"backbone.diagnose.weak_atol={atol}", "backbone.diagnose.bins=40"], folder))
    columns, rows = comparison(points)
    assert columns == [
        "backbone.diagnose.weak_atol",
        "backbone.diagnose.bins",
        "gap:matched_image_text",
        "gap:energy.weak",
        "gap:a_new_number.x",
        "gap:verdict",
    ]
    assert [r["gap:energy.weak"] for r in rows] == ["0.5", "0.75"]
    assert rows[0]["gap:a_new_number.x"] == "3" and rows[0]["gap:verdict"] == "holds"
    columns, rows = comparison(points, only_changed=True)
    # swept keys stay even when equal across points: they head the printed table
    assert columns == ["backbone.diagnose.weak_atol", "backbone.diagnose.bins", "gap:energy.weak"]


def test_exp_show_keep_regex_picks_exactly_the_swept_params_and_the_given_metrics() -> None:
    keep = re.compile(headline_column_regex(["backbone.diagnose.weak_atol"], ["energy.weak", "zero_shot.shape"]))
    kept = [
        "backbone.diagnose.weak_atol",
        "energy.weak",
        "metrics/gap.json:energy.weak",
        "zero_shot.shape",
        "params.yaml:backbone.diagnose.weak_atol",
    ]
    dropped = [
        "backbone.diagnose.bins",
        "energy.weak_extra",
        "energyXweak",
        "fingerprint",
        "artifacts/features",
        "final_loss",
    ]
    assert [c for c in kept + dropped if keep.match(c)] == kept


def sweep_table(points: int, metrics: dict[str, float], width: int) -> tuple[str, list[list[str]]]:
    """The printed table of `points` points over two swept keys, each point with `metrics` scaled by its index."""
    grid = grid_points({"fewshot.training.lr": [f"{i}e-4" for i in range(1, points + 1)], "fewshot.shots": ["[1,4]"]})
    data = [
        (point, {"fewshot": {key: value * (i + 1) for key, value in metrics.items()}}) for i, point in enumerate(grid)
    ]
    columns, rows = compare_points(data)
    return render_comparison(columns, rows, ["fewshot.training.lr", "fewshot.shots"], width=width), grid


def test_printed_table_has_a_column_per_point_headed_by_its_swept_values() -> None:
    text, _ = sweep_table(3, {"test_acc.semobridge.16.mean": 0.25, "test_acc.zero_shot.16.mean": 0.125}, width=100)
    lines = text.splitlines()
    assert lines[0].split() == ["fewshot.training.lr", "1e-4", "2e-4", "3e-4"]  # swept values first
    assert lines[1].split() == ["fewshot.shots", "[1,4]", "[1,4]", "[1,4]"]
    assert set(lines[2]) == {"-"}
    assert lines[3] == "fewshot"  # metrics grouped under their file, one row each
    assert lines[4].split() == ["test_acc.semobridge.16.mean", "0.25", "0.5", "0.75"]
    assert lines[5].split() == ["test_acc.zero_shot.16.mean", "0.125", "0.25", "0.375"]
    assert len(lines) == 6 and "…" not in text


def test_many_points_wrap_into_blocks_that_fit_the_width() -> None:
    text, grid = sweep_table(12, {f"m{k}": 1.0 + k for k in range(3)}, width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    blocks = [block.splitlines() for block in text.split("\n\n")]
    assert len(blocks) > 1
    first = 1
    for block in blocks:
        values = block[1].split()[1:]
        assert block[0] == f"points {first}-{first + len(values) - 1} of 12"
        # each block repeats the swept keys and every metric, with a value per point of the block
        assert [line.split()[0] for line in block[1:] if set(line) != {"-"}] == [
            "fewshot.training.lr",
            "fewshot.shots",
            "fewshot",
            "m0",
            "m1",
            "m2",
        ]
        assert all(len(line.split()) == 1 + len(values) for line in block[1:] if line.startswith(("fewshot.", "  m")))
        first += len(values)
    seen = [value for block in blocks for value in block[1].split()[1:]]
    assert seen == [point[0].split("=")[1] for point in grid]  # every point once, in grid order


def test_long_metric_names_are_shortened_but_never_ambiguous() -> None:
    keys = [f"paired_test_diff.semobridge_t_vs_zero_shot_plus_prototype_{suffix}.16.mean" for suffix in "ab"]
    keys += ["paired_test_diff.semobridge_vs_zero_shot.16.mean", "test_acc.semobridge.16.mean", "short"]
    labels = unique_labels(keys, 30)
    assert len(set(labels.values())) == len(keys), labels
    assert labels["short"] == "short" and labels[keys[3]] == keys[3]  # what fits stays whole
    assert all(label.endswith(".mean") for key, label in labels.items() if key != "short")  # the leaf stays whole
    assert "…" in labels[keys[0]] and len(labels[keys[2]]) <= 30
    # parts that differ only in their middle: cut alike, so the two labels grow until they differ
    middle = [f"test_acc.prototype_{m}_intra_modal_blend.16.mean" for m in ("zs", "zz")]
    assert shorten_key(middle[0], 30) == shorten_key(middle[1], 30)
    resolved = unique_labels(middle, 30)
    assert resolved[middle[0]] != resolved[middle[1]], resolved
    text, _ = sweep_table(2, dict.fromkeys(keys, 0.5), width=70)
    assert max(len(line) for line in text.splitlines()) <= 70
    assert text.splitlines()[-1].startswith("(… marks a shortened name")
    wide, _ = sweep_table(2, dict.fromkeys(keys, 0.5), width=300)
    assert "…" not in wide and all(key in wide for key in keys)


def test_table_artifact_records_put_the_swept_values_first() -> None:
    columns, rows = compare_points([(["a.b=1"], {"m": {"x": 0.5}}), (["a.b=2"], {"m": {"x": 0.25}})])
    assert transposed(columns, rows, ["a.b"], ["000-b=1", "001-b=2"]) == [
        {"name": "a.b", "000-b=1": "1", "001-b=2": "2"},
        {"name": "m:x", "000-b=1": "0.5", "001-b=2": "0.25"},
    ]


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
    from flows.dvc_sweep import exp_names, exp_run_commands

    points = [["fewshot.atol=0.1"], ["fewshot.atol=0.3"]]
    assert exp_run_commands(points, ["fewshot_report"], jobs=1) == [
        ["exp", "run", "--temp", "-S", "fewshot.atol=0.1", "fewshot_report"],
        ["exp", "run", "--temp", "-S", "fewshot.atol=0.3", "fewshot_report"],
    ]
    names = exp_names(2)
    assert names[0].endswith("-000") and names[1].endswith("-001") and names[0][:-4] == names[1][:-4]
    assert re.fullmatch(r"[a-z0-9-]+", names[0]), names  # a valid Git ref name
    named = exp_run_commands(points, None, jobs=1, names=names)
    assert [c[3:5] for c in named] == [["--name", names[0]], ["--name", names[1]]]
    queued = exp_run_commands(points, None, jobs=2, names=names)
    assert [c[:3] for c in queued] == [["exp", "run", "--queue"]] * 2 + [["exp", "run", "--run-all"]]
    assert queued[-1][-2:] == ["--jobs", "2"]
    with pytest.raises(ParamsError):
        exp_run_commands(points, None, jobs=0)


def test_queue_status_states_are_read_per_experiment() -> None:
    from flows.dvc_sweep import queue_states

    status = """Task     Name          Created    Status
02de80d  sweep-x-000   07:23 AM   Running
6242f93  sweep-x-001   07:23 AM   Queued
1111111  other-exp     07:20 AM   Failed

Worker status: 1 active, 0 idle
"""
    assert queue_states(status, ["sweep-x-000", "sweep-x-001"]) == {"sweep-x-000": "Running", "sweep-x-001": "Queued"}


def test_progress_has_one_line_per_point_start_and_end() -> None:
    from flows.dvc_sweep import PointProgress

    lines: list[str] = []
    progress = PointProgress([["a=1"], ["a=2"], ["a=3"]], lines.append)
    progress.update({0: "Running", 1: "Queued", 2: "Queued"})
    progress.update({0: "Success", 1: "Running", 2: "Queued"})
    progress.update({0: "Success", 1: "Failed", 2: "Success"})  # 2 started and ended between two polls
    progress.update({0: "Success", 1: "Failed", 2: "Success"})  # nothing new: no line
    events = [re.match(r"\[(\d)/3\] (\w+) +(a=\d)", line).groups() for line in lines]  # type: ignore[union-attr]
    assert events == [
        ("1", "started", "a=1"),
        ("1", "finished", "a=1"),
        ("2", "started", "a=2"),
        ("2", "FAILED", "a=2"),
        ("3", "started", "a=3"),
        ("3", "finished", "a=3"),
    ]
    ends = [line for line in lines if "started" not in line]
    assert all(re.search(r"in (<=)?\d+\.\d s \(sweep at \d+ s\)$", line) for line in ends), ends
    assert ["<=" in line for line in ends] == [False, False, True]  # a=3's time is only bounded by the polls


def fake_exp_show(names: list[str], values: list[float]) -> list[dict[str, object]]:
    """`dvc exp show --json` as DVC 3 writes it: baselines, each with its experiments' revs."""
    gap = next(p for p in metrics_paths(["diagnose"]) if p.endswith("gap.json"))
    revs = [
        {
            "rev": f"{i:040x}",
            "name": name,
            "error": None,
            "data": {
                "params": {},
                "metrics": {
                    gap: {"data": {"energy": {"weak": value}}},
                    "metrics/missing.json": {"error": {"type": "FileNotFoundError"}},
                },
            },
        }
        for i, (name, value) in enumerate(zip(names, values, strict=True))
    ]
    return [
        {"rev": "workspace", "name": None, "data": {}, "experiments": None},
        {
            "rev": "abc",
            "name": "main",
            "data": {},
            "experiments": [{"revs": [rev], "name": rev["name"]} for rev in reversed(revs)],
        },
    ]


def test_dvc_sweep_prints_progress_and_the_table_of_its_own_experiments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.dvc_sweep as dvc_sweep_module

    (tmp_path / ".dvc").mkdir()
    calls: list[tuple[str, ...]] = []
    names: list[str] = []

    def fake_dvc(root: Path, *args: str) -> str:
        calls.append(args)
        if args[:2] == ("exp", "run"):
            names.append(args[args.index("--name") + 1])
            if "fail=1" in args:
                raise RuntimeError("dvc exp run failed")
            return ""
        assert args == ("exp", "show", "--json"), args
        return json.dumps(fake_exp_show(names, [0.5, 0.75]) + fake_exp_show(["older-sweep-000"], [0.1]))

    monkeypatch.setattr(dvc_sweep_module, "_dvc", fake_dvc)
    monkeypatch.setattr(dvc_sweep_module, "validate_points", lambda root, profile, points: None)
    lines: list[str] = []
    points = [["backbone.diagnose.weak_atol=0.1"], ["backbone.diagnose.weak_atol=0.3"]]
    table = dvc_sweep_module.dvc_sweep(tmp_path, points, ["diagnose"], say=lines.append, width=80)
    assert [line.split()[:2] for line in lines] == [
        ["[1/2]", "started"],
        ["[1/2]", "finished"],
        ["[2/2]", "started"],
        ["[2/2]", "finished"],
    ]
    assert table.splitlines()[0].split() == ["backbone.diagnose.weak_atol", "0.1", "0.3"]
    assert table.splitlines()[-1].split() == ["energy.weak", "0.5", "0.75"]  # not the older sweep's experiment
    assert len({name[:-4] for name in names}) == 1

    lines.clear()
    with pytest.raises(RuntimeError, match="failed"):
        dvc_sweep_module.dvc_sweep(tmp_path, [["fail=0"], ["fail=1"], ["fail=2"]], say=lines.append)
    assert [line.split()[1] for line in lines] == ["started", "finished", "started", "FAILED"]  # stops at the failure


def test_dvc_sweep_names_a_missing_experiment() -> None:
    from flows.dvc_sweep import experiment_metrics

    doc = fake_exp_show(["s-000"], [0.5])
    found = experiment_metrics(doc, ["s-000"], metrics_paths(["diagnose"]))
    assert found == {"s-000": {"gap": {"energy": {"weak": 0.5}}}}
    with pytest.raises(RuntimeError, match="s-001"):
        experiment_metrics(doc, ["s-000", "s-001"], metrics_paths(["diagnose"]))
