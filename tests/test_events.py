"""The stage event log behind the report's cache-hit plot: outcomes are counted per instance, torn lines skipped."""

from __future__ import annotations

from pathlib import Path

from pipeline_lib.engine.events import events_path, latest_status, outcome_counts, read_events, record_event


def test_outcomes_are_counted_per_instance(tmp_path: Path) -> None:
    for instance_id, status in [("data", "ran"), ("data", "cached"), ("czsl", "ran"), ("czsl", "republished"),
                                ("data", "cached (prefect)"), ("report", "ran")]:
        record_event(tmp_path, instance_id, status, "f" * 20, 1.5)
    with events_path(tmp_path).open("a") as fh:
        fh.write('{"id": "data", "sta')  # a process killed mid-write
    events = read_events(tmp_path)
    assert len(events) == 6
    counts = outcome_counts(events, ["data", "czsl", "oti@shapes"])
    assert counts == {"data": {"ran": 1, "reused": 2}, "czsl": {"ran": 1, "reused": 1}, "oti@shapes": {}}
    assert latest_status(events) == {"data": "cached (prefect)", "czsl": "republished", "report": "ran"}


def test_no_log_means_no_events(tmp_path: Path) -> None:
    assert read_events(tmp_path) == []
