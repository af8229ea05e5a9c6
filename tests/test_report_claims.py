"""The report's Claims section: forest-plot data and panels, the section leading the page, escaped text, and a
page without the claims table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_summary import ACC, AUC, CLAIMS, MAP, RHO, claim, write_claims

from pipeline_lib.engine.config import Config, effective_params
from pipeline_lib.engine.summary import claim_panel, claims_path
from pipeline_lib.report.claims import FOREST_PNG, PANEL_ORDER, forest_panels, forest_png
from pipeline_lib.report.page import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("metric", "panel"),
    [
        (ACC, "accuracy"),
        ("test accuracy (%)", "accuracy"),
        (MAP, "mAP"),
        ("retrieval mAP, points", "mAP"),
        (AUC, "AUC"),
        ("open-world AUC", "AUC"),
        (RHO, "correlation"),  # mentions AUC, but is a correlation
        ("Spearman rho", "correlation"),
        ("seconds", "other"),
    ],
)
def test_claim_panel_from_metric(metric: str, panel: str) -> None:
    assert claim_panel(metric) == panel
    assert panel in PANEL_ORDER


def test_forest_panels_group_by_unit_and_skip_not_run() -> None:
    panels, skipped = forest_panels(CLAIMS)
    assert [p for p, _ in panels] == ["accuracy", "mAP", "AUC", "correlation"]
    ids = {p: [c["id"] for c in rows] for p, rows in panels}
    assert ids["accuracy"] == ["semobridge_vs_prototype@1shot", CLAIMS[1]["id"]]  # file order within a panel
    assert ids["mAP"] == ["ovi_vs_text"] and ids["AUC"] == ["sa_vs_baseline"]
    assert ids["correlation"] == ["smaller_gap_higher_auc"]
    assert [c["id"] for c in skipped] == ["kl_vs_vac"]
    # a claim marked as run but without numbers is not plotted either
    panels, skipped = forest_panels([{"id": "odd", "metric": ACC, "verdict": "holds"}])
    assert panels == [] and [c["id"] for c in skipped] == ["odd"]


def test_forest_png_draws(tmp_path: Path) -> None:
    panels, _ = forest_panels(CLAIMS)
    forest_png(panels, tmp_path / "forest.png", "claims")
    assert (tmp_path / "forest.png").read_bytes()[:8] == PNG_MAGIC


def write_page(root: Path) -> tuple[str, dict[str, Any]]:
    out = root / "reports"
    included = write_report(root, out, effective_params(Config()))
    return (out / "index.html").read_text(), included


def test_claims_section_leads_the_page_and_escapes_text(tmp_path: Path) -> None:
    nasty = claim("x<y>&z", ACC, "undecided", 0.5, -1.0, 2.0,
                  diagnostic="<script>alert('d')</script> & more")
    nasty["paper_effect"] = "<b>+2</b> points"
    nasty["claim"] = "A <img src=x onerror=alert(1)> beats B"
    write_claims(tmp_path, [*CLAIMS, nasty])
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gap.json").write_text(json.dumps({"matched_image_text": 0.5, "image_image": 0.2}))
    page, included = write_page(tmp_path)

    assert included["claims"] == len(CLAIMS) + 1 and included["metrics"] == 2
    assert (tmp_path / "reports" / FOREST_PNG).read_bytes()[:8] == PNG_MAGIC
    claims_at = page.index("<h2 id='claims'>Claims</h2>")
    assert claims_at < page.index("<h2>diagnose</h2>")  # the existing sections follow
    assert claims_at == page.index("<h2")  # the first section
    assert "<h2>claims</h2>" not in page  # the claims stage's generic section is replaced
    claims_html = page[claims_at : page.index("<h2>diagnose</h2>")]
    assert f"src='{FOREST_PNG}'" in claims_html
    assert claims_html.count("<tr class='claim'>") == len(CLAIMS) + 1
    assert "95% intervals" in claims_html and "2000 resamples" in claims_html
    assert "+12.30 [+9.10, +15.50]" in claims_html and "n=5, paired t over 5 seeds" in claims_html
    assert "Not plotted (not run): kl_vs_vac (rows +kl / +vac not run (czsl.rows))" in claims_html
    # every text field escaped: no markup from the JSON reaches the page
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>+2</b>" not in page
    assert "&lt;script&gt;alert(&#x27;d&#x27;)&lt;/script&gt; &amp; more" in claims_html
    assert "A &lt;img src=x onerror=alert(1)&gt; beats B" in claims_html
    assert "&lt;b&gt;+2&lt;/b&gt; points" in claims_html and "x&lt;y&gt;&amp;z" in claims_html


def test_page_without_claims_says_so(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gap.json").write_text(json.dumps({"matched_image_text": 0.5}))
    page, included = write_page(tmp_path)
    assert included["claims"] == 0
    assert page.index("<h2 id='claims'>Claims</h2>") < page.index("<h2>diagnose</h2>")
    assert "No claims yet: artifacts/claims/claims.json is missing" in page
    assert not (tmp_path / "reports" / FOREST_PNG).exists()


def test_page_with_unreadable_or_unrun_claims(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    claims_path(tmp_path).parent.mkdir(parents=True)
    claims_path(tmp_path).write_text("[1, 2")
    page, _ = write_page(tmp_path)
    assert "could not be read" in page
    write_claims(tmp_path, [claim("kl_vs_vac", AUC, "not run", diagnostic="czsl did not run")])
    page, _ = write_page(tmp_path)
    assert "No claim has an interval yet" in page and "czsl did not run" in page
    assert not (tmp_path / "reports" / FOREST_PNG).exists()
