"""`bridgeflow summary`: the claims first (one line each, at most 120 columns, numbers whole), then the headline
numbers of the other metrics files, whose key patterns resolve on the current metrics layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.engine.summary import SUMMARY_WIDTH, claims_lines, headline_rows, load_claims, summary_rows

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


# Hand-written metrics/claims.json rows, shared with tests/test_report_claims.py.
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
    path = root / "metrics" / "claims.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"level": 0.95, "bootstrap_resamples": 2000, "claims": CLAIMS if claims is None else claims}
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_metrics(root: Path, stem: str, data: dict[str, Any]) -> None:
    path = root / "metrics" / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def czsl_metrics() -> dict[str, Any]:
    """metrics/czsl.json as the multi-seed czsl stage writes it: means over seeds per row and world."""
    world = {"auc": 0.5, "hm": 0.4, "seen": 0.6, "unseen": 0.7, "attr_acc": 0.8, "obj_acc": 0.9}
    rows = {r: {"closed": dict(world), "open": dict(world), "rmg": 0.3} for r in ("baseline", "+sa", "+dynamic")}
    return {"dataset": "shapes", "mode": "frozen", "worlds": ["closed", "open"], "seeds": 3,
            "feasibility_source": None, "rows": rows, "bank_selects_off": {"+dynamic_closed": 1}, "seconds": 12.0}


def summary_output(root: Path) -> str:
    result = CliRunner().invoke(app, ["summary", "--root", str(root)])
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
    write_metrics(tmp_path, "czsl", czsl_metrics())
    out = summary_output(tmp_path)
    assert out.index("claims (95% intervals") < out.index("bridgeflow results") < out.index("rows.baseline.closed.auc")
    assert "semobridge_vs_prototype@1shot" in out and "+12.30 [+9.10, +15.50] (n=5)" in out
    assert "bootstrap_resamples" not in out  # the claims file is not repeated as headline numbers


def test_summary_without_claims_says_so(tmp_path: Path) -> None:
    write_metrics(tmp_path, "czsl", czsl_metrics())
    out = summary_output(tmp_path)
    assert out.index("claims: none yet") < out.index("rows.baseline.closed.auc")
    assert load_claims(tmp_path) is None
    summary_output(tmp_path / "empty")  # nothing at all: no crash


def test_summary_survives_a_broken_claims_file(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "claims.json").write_text("{not json")
    assert load_claims(tmp_path) is None
    write_metrics(tmp_path, "czsl", czsl_metrics())
    assert "claims: none yet" in summary_output(tmp_path)


def test_only_claims_no_other_metrics(tmp_path: Path) -> None:
    write_claims(tmp_path)
    out = summary_output(tmp_path)
    assert "ovi_vs_text" in out and "bridgeflow results" not in out


def test_headline_patterns_resolve_on_current_layouts(tmp_path: Path) -> None:
    write_metrics(tmp_path, "czsl", czsl_metrics())
    seeds = {"mean": 60.0, "std": 1.0, "n": 5}  # few-shot: 5 seeds now
    write_metrics(tmp_path, "fewshot", {"test_acc": {"prototype": {"16": seeds, "1": seeds}},
                                        "paired_test_diff": {"semobridge_all-minus-control": {"16": seeds}}})
    keys = {(stem, key) for stem, key, _ in summary_rows(tmp_path)}
    assert ("czsl", "seeds") in keys
    assert {("czsl", f"rows.{r}.closed.auc") for r in ("baseline", "+sa", "+dynamic")} <= keys
    assert {("czsl", "rows.+sa.closed.hm"), ("czsl", "rows.+sa.open.auc")} <= keys
    assert ("czsl", "rows.+sa.closed.attr_acc") not in keys  # headlines only, not the first numbers
    assert {("fewshot", "test_acc.prototype.16.mean"),
            ("fewshot", "paired_test_diff.semobridge_all-minus-control.16.mean")} <= keys


def test_claims_headline_rows_one_per_claim(tmp_path: Path) -> None:
    rows = dict(headline_rows(write_claims(tmp_path)))  # what Prefect artifacts and sweep comparisons show
    assert list(rows) == [c["id"] for c in CLAIMS]
    assert rows["ovi_vs_text"] == "undecided +0.40 [-1.20, +2.00] (n=120)"
    assert rows["kl_vs_vac"] == "not run"
