"""Atomic result-file writers: content, parents, dict rows, and no partial or temporary files left behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline_lib.engine.io import write_csv, write_json


def test_write_json_creates_parents_and_formats(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "m.json"
    write_json(path, {"b": 1, "a": [1.5, None]})
    assert path.read_text() == '{\n  "b": 1,\n  "a": [\n    1.5,\n    null\n  ]\n}\n'
    write_json(path, {"b": 1, "a": 2}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "a": 2,\n "b": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_write_json_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    write_json(path, {"x": object()}, default=lambda _: "obj")
    assert json.loads(path.read_text()) == {"x": "obj"}


def test_write_json_file_mode_follows_umask(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    path = tmp_path / "m.json"
    write_json(path, 1)
    assert path.stat().st_mode == plain.stat().st_mode


def test_write_csv_lists_and_dicts(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "p.csv"
    write_csv(path, ["step", "loss", "kl"], [[1, 0.5, ""], {"step": 2, "loss": 0.25, "extra": 9}, (3, None, 0.1)])
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["step", "loss", "kl"], ["1", "0.5", ""], ["2", "0.25", ""], ["3", "", "0.1"]]
    assert path.read_bytes().count(b"\r\n") == 4  # csv's own line ends, not translated


def test_write_csv_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    write_csv(path, ["a"], [[1]])

    def rows():
        yield [2]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_csv(path, ["a"], rows())
    assert path.read_bytes() == b"a\r\n1\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]
