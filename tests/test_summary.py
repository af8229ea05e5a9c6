"""`bridgeflow summary`: the claims first (one line each, at most 120 columns, numbers whole), then the headline
numbers of the other metrics files, whose key patterns resolve on the current metrics layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.claims.stage import headline as claims_headline
from pipeline_lib.engine.summary import (
    SUMMARY_WIDTH,
    claims_lines,
    claims_path,
    headline_rows,
    load_claims,
    summary_rows,
)

ACC, MAP, AUC = "test accuracy, points", "test-query mAP", "closed-world test AUC"
RHO = "Spearman correlation of RMG and AUC over the trained rows, per seed"
LONG_ID = "semobridge_t_vs_training_free_with_a_really_long_identifier_name_that_does_not_fit_the_line@16shot"


def claim(cid: str, metric: str, verdict: str, mean: float | None = None, low: float = 0.0, high: float = 0.0,
          n: int = 5, diagnostic: str = "") -> dict[str, Any]:
    """One row as the claims stage writes it (no numbers when the claim did not run)."""
    row: dict[str, Any] = {"id": cid, "paper": "SeMoBridge (arXiv 2509.26036)", "claim": f"claim {cid}",
                           "metric": metric, "paper_effect": "beats the baselines", "verdict": verdict}
    if mean is not None:
        interval = "percentile bootstrap over test queries" if metric == MAP else f"paired t over {n} seeds"
        row.update(mean=mean, low=low, high=high, n=n, interval=interval)
    return {**row, "diagnostic": diagnostic}


# Hand-written claims table rows (artifacts/claims/claims.json), shared with tests/test_report_claims.py.
CLAIMS: list[dict[str, Any]] = [
    claim("semobridge_vs_prototype@1shot", ACC, "holds", 12.3, 9.1, 15.5),
    claim(LONG_ID, ACC, "refuted", -1.25, -2.5, -0.125, diagnostic="the difference is -1.25, the interval excludes 0."),
    claim("ovi_vs_text", MAP, "undecided", 0.4, -1.2, 2.0, n=120,
          diagnostic="the mean difference +0.40 is within +-1.60 of the interval (mAP points over 120 test queries)."),
    claim("sa_vs_baseline", AUC, "undecided", 1.5, -0.75, 3.75),
    claim("smaller_gap_higher_auc", RHO, "holds", -0.6, -0.9, -0.3),
    claim("kl_vs_vac", AUC, "not run", diagnostic="rows +kl / +vac not run (czsl.rows)"),
]


def write_claims(root: Path, claims: list[dict[str, Any]] | None = None) -> Path:
    path = claims_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"level": 0.95, "bootstrap_resamples": 2000, "claims": CLAIMS if claims is None else claims}
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_metrics(root: Path, stem: str, data: dict[str, Any]) -> None:
    path = root / "metrics" / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def czsl_metrics() -> dict[str, Any]:
    """metrics/czsl/<dataset>.json as a czsl instance writes it: per row the closed-world table and open-world AUC."""
    closed = {"auc": 0.5, "hm": 0.4, "seen": 0.6, "unseen": 0.7}
    return {r: {"closed": dict(closed), "open": {"auc": 0.25}} for r in ("baseline", "+sa", "+dynamic")}


def summary_output(root: Path) -> str:
    result = CliRunner().invoke(app, ["summary", "--root", str(root)], env={"COLUMNS": "120"})  # as wide as it gets
    assert result.exit_code == 0, result.output
    return result.output


def test_claims_lines_one_per_claim_within_width_numbers_whole(tmp_path: Path) -> None:
    write_claims(tmp_path)
    lines = claims_lines(load_claims(tmp_path))
    assert lines[0] == "claims (95% intervals; paired over seeds or queries)"
    assert len(lines) == 1 + len(CLAIMS)
    assert all(len(line) <= SUMMARY_WIDTH for line in lines), [len(line) for line in lines]
    by_verdict = dict(zip([c["id"] for c in CLAIMS], lines[1:], strict=True))
    first = by_verdict["semobridge_vs_prototype@1shot"].split()
    assert first[:2] == ["semobridge_vs_prototype@1shot", "holds"]
    assert "+12.30 [+9.10, +15.50] (n=5)" in by_verdict["semobridge_vs_prototype@1shot"]
    assert "-1.25 [-2.50,  -0.12] (n=5)" in by_verdict[LONG_ID]
    assert "+0.40 [-1.20,  +2.00] (n=120)" in by_verdict["ovi_vs_text"]
    assert by_verdict["ovi_vs_text"].endswith("mAP pts") and by_verdict["sa_vs_baseline"].endswith("AUC pts")
    assert by_verdict["smaller_gap_higher_auc"].endswith("rho")
    long_line = by_verdict[LONG_ID].split()
    assert long_line[0].endswith("…@16shot") and LONG_ID.startswith(long_line[0][: -len("…@16shot")])
    assert long_line[1] == "refuted"
    assert by_verdict["kl_vs_vac"].split()[:3] == ["kl_vs_vac", "not", "run"]
    assert by_verdict["kl_vs_vac"].endswith("rows +kl / +vac not run (czsl.rows)")
    # the columns line up: every verdict starts at the same column
    assert len({line.index(c["verdict"], 2 + 16) for line, c in zip(lines[1:], CLAIMS, strict=True)}) == 1


def test_claims_lines_keep_numbers_when_narrow() -> None:
    doc = {"level": 0.9, "claims": [claim("x" * 80, ACC, "holds", 123456.789, 100000.5, 150000.25, n=5)]}
    lines = claims_lines(doc, width=60)
    assert lines[0].startswith("claims (90% intervals")
    assert "+123456.79 [+100000.50, +150000.25] (n=5)" in lines[1]
    assert "x" * 80 not in lines[1]


def test_summary_prints_claims_before_other_metrics(tmp_path: Path) -> None:
    write_claims(tmp_path)
    write_metrics(tmp_path, "czsl/shapes", czsl_metrics())
    out = summary_output(tmp_path)
    assert out.index("claims (95% intervals") < out.index("bridgeflow results") < out.index("czsl/shapes (closed)")
    assert "semobridge_vs_prototype@1shot" in out and "+12.30 [+9.10, +15.50] (n=5)" in out
    assert "bootstrap_resamples" not in out  # the claims file is not repeated as headline numbers


def test_summary_without_claims_says_so(tmp_path: Path) -> None:
    write_metrics(tmp_path, "czsl/shapes", czsl_metrics())
    out = summary_output(tmp_path)
    assert out.index("claims: none yet") < out.index("czsl/shapes (closed)")
    assert load_claims(tmp_path) is None
    summary_output(tmp_path / "empty")  # nothing at all: no crash


def test_summary_survives_a_broken_claims_file(tmp_path: Path) -> None:
    claims_path(tmp_path).parent.mkdir(parents=True)
    claims_path(tmp_path).write_text("{not json")
    assert load_claims(tmp_path) is None
    write_metrics(tmp_path, "czsl/shapes", czsl_metrics())
    assert "claims: none yet" in summary_output(tmp_path)


def test_only_claims_no_other_metrics(tmp_path: Path) -> None:
    write_claims(tmp_path)
    out = summary_output(tmp_path)
    assert "ovi_vs_text" in out and "bridgeflow results" not in out


def test_results_read_every_shot_count_as_tables_within_the_width(tmp_path: Path) -> None:
    write_metrics(tmp_path, "czsl/shapes", czsl_metrics())
    shots = {"1": 35.6, "4": 44.9, "16": 51.0, "32": 55.5}  # in the order the stage writes them
    write_metrics(tmp_path, "fewshot", {"test_acc": {"prototype": shots, "semobridge_t": shots}})
    write_metrics(tmp_path, "gap", {"matched_image_text": 0.55, "energy": {"weak": 0.011}})
    keys = {(stem, key) for stem, key, _ in summary_rows(tmp_path)}
    assert {("fewshot", f"test_acc.prototype.{k}") for k in shots} <= keys  # every shot count, none hidden
    lines = summary_output(tmp_path).splitlines()
    at = lines.index(next(line for line in lines if line.startswith("fewshot test_acc")))
    assert lines[at].split()[2:] == ["1", "4", "16", "32"]  # shots as columns, methods as rows
    assert lines[at + 1].split() == ["prototype", "35.6", "44.9", "51", "55.5"]
    assert lines[lines.index("czsl/shapes (closed)  auc   hm  seen  unseen") + 1].split() == ["baseline", "0.5", "0.4",
                                                                                       "0.6", "0.7"]
    assert "gap  matched_image_text 0.55" in lines and "gap energy  weak 0.011" in lines
    assert all(len(line) <= SUMMARY_WIDTH for line in lines)


def test_wide_tables_continue_in_blocks_of_columns() -> None:
    from pipeline_lib.engine.textgrid import grid_lines

    rows = [(f"acc.{m}.{k}", f"{k}.00") for m in ("a", "b") for k in range(1, 30)]
    lines = grid_lines("wide", rows, width=60)
    assert all(len(line) <= 60 for line in lines) and len(lines) > 3
    headers = [line for line in lines if line.startswith("wide acc")]
    assert len(headers) == len(lines) // 3 and headers[0].split()[2] == "1"  # each block: header + 2 rows
    assert [v for line in lines if line.strip().startswith("a ") for v in line.split()[1:]] == [
        f"{k}.00" for k in range(1, 30)]


def test_claims_headline_rows_one_per_claim(tmp_path: Path) -> None:
    write_metrics(tmp_path, "claims", claims_headline(CLAIMS))  # metrics/claims.json as the stage writes it
    rows = dict(headline_rows(tmp_path / "metrics" / "claims.json"))  # what Prefect artifacts and sweeps show
    assert list(rows) == [c["id"] for c in CLAIMS]
    assert rows["ovi_vs_text"] == "undecided +0.40 [-1.20, +2.00]"
    assert rows["kl_vs_vac"] == "not run"
