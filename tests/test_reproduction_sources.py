"""The reproduction section reads this run's numbers from the full tables the stages publish, names the run by the
params its manifests recorded, and shows measured vs published in `bridgeflow summary` and the report."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.reproduction.sources import published_rows, run_params


def _publish(root: Path, stage: str, params: dict, files: dict[str, dict], summary: dict | None = None) -> None:
    folder = root / "artifacts" / stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"params": params, "summary": summary or {}}))
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc))


def _imagenet_run(root: Path) -> None:
    """A ViT-B/16 `openai` run on ImageNet: SeMoBridge-T at 16 shots, one CZSL row on the shapes benchmark."""
    _publish(root, "backbone", {"backbone.model": "ViT-B-16", "backbone.pretrained": "openai"}, {})
    acc = {"16": {"mean": 73.9, "std": 0.1, "n": 3}, "1": {"mean": 60.0, "std": 2.0, "n": 3}}
    tables = {"datasets": {"imnet": {"prompts": "ImageNet", "test_acc": {"semobridge_t": acc}}}}
    _publish(root, "fewshot_report", {}, {"summary.json": tables})
    czsl_rows = {"+dynamic": {"closed": {"auc": 0.31, "hm": 0.5, "seen": 0.6, "unseen": 0.7}}}
    _publish(root, "czsl/shapes", {}, {}, {"dataset": "shapes", "rows": czsl_rows, "seeds": 5})


def test_rows_come_from_the_published_tables_under_the_recorded_params(tmp_path: Path) -> None:
    _imagenet_run(tmp_path)
    assert run_params(tmp_path)["backbone"] == {"model": "ViT-B-16", "pretrained": "openai"}
    rows = {(r.task, r.dataset, r.method, r.setting, r.metric): r for r in published_rows(tmp_path)}
    row = rows["fewshot", "imagenet", "semobridge_t", "16", "accuracy"]
    assert (row.backbone, row.value, row.spread, row.n) == ("ViT-B/16", 73.9, 0.1, 3)
    assert rows["czsl", "shapes", "+dynamic", "closed", "auc"].n == 5
    assert published_rows(tmp_path / "nothing") == []  # nothing published: no rows, no error


def test_summary_and_report_compare_with_the_paper(tmp_path: Path) -> None:
    _imagenet_run(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "fewshot.json").write_text(json.dumps({"test_acc": {"semobridge_t": {"16": 73.9}}}))
    out = CliRunner().invoke(app, ["summary", "--root", str(tmp_path)], env={"COLUMNS": "120"}).output
    section = out[out.index("reproduction"):]
    assert "73.90 ± 0.10" in section and "73.98 ± 0.05" in section and "-0.08" in section  # paper: 73.98 ± 0.05
    assert "No published numbers exist" not in section and "matched for ViT-B/16: shapes" in section

    from pipeline_lib.report.page import reproduction_section

    html = reproduction_section(tmp_path)
    assert html.startswith("<h2 id='reproduction'>") and "73.98" in html and "<table class=\"reproduction\"" in html
    empty = reproduction_section(tmp_path / "nothing")
    assert "No published numbers exist" in empty
