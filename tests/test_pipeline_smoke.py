"""The whole pipeline at smoke size through the stage functions: every stage publishes its declared outputs."""

from __future__ import annotations

import json

from conftest import SmokePipeline

from pipeline_lib.engine.artifacts import read_manifest
from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.events import outcome_counts, read_events
from pipeline_lib.engine.runner import run_stage
from pipeline_lib.engine.stages import STAGES, instances


def test_every_stage_runs_and_publishes(smoke_pipeline: SmokePipeline) -> None:
    root = smoke_pipeline.root
    assert set(smoke_pipeline.first_pass.values()) == {"ran"}, smoke_pipeline.first_pass
    cfg = load_config(root)
    params = effective_params(cfg)
    for stage in STAGES:
        for inst in instances(stage, params):
            assert read_manifest(root, inst) is not None, inst.id
            for out in inst.outputs():
                assert (root / out).exists(), out
    for metrics in ("data", "backbone", "gap", "fewshot", "inversion/oti/shapes", "inversion/ovi/shapes", "czsl/shapes",
                    "claims"):
        assert json.loads((root / "metrics" / f"{metrics}.json").read_text()), metrics
    claims = json.loads((root / "artifacts/claims/claims.json").read_text())["claims"]
    ran = {c["id"]: c for c in claims if c["verdict"] != "not run"}
    # smoke: 2 few-shot seeds, 2 CZSL seeds, 16 test queries per retrieval direction: every claim has an interval
    assert {"semobridge_t_vs_training_free@1shot", "oti_vs_image", "ovi_vs_text", "sa_vs_baseline",
            "smaller_gap_higher_auc"} <= set(ran), claims
    assert all(c["low"] <= c["mean"] <= c["high"] and c["verdict"] in ("holds", "refuted", "undecided")
               for c in ran.values())
    html = (root / "reports/index.html").read_text()
    assert html.index("<h2") == html.index("<h2 id='claims'>")  # the report opens with the claims
    pngs = sorted(p.name for p in (root / "reports").glob("*.png"))
    assert len(pngs) >= 6 and all(name in html for name in pngs)
    # a second pass reuses everything, and the event log the report's cache-hit plot reads says so
    assert {r.status for s in STAGES for r in run_stage(root, s.name, cfg)} == {"cached"}
    counts = outcome_counts(read_events(root), list(smoke_pipeline.first_pass))
    assert all(c == {"ran": 1, "reused": 1} for c in counts.values()), counts
