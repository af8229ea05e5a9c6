"""An append-only log of what happened to each stage instance: computed (`ran`) or reused (`cached`, `republished`).

Manifests only record the last computation, so they cannot tell a cache hit from a fresh run; this log can, and the
report draws its cache-hit plot from it. It lives beside the scratch folders (git- and dvc-ignored) and is written by
whoever runs a stage (the shared runner, or the Prefect flow when Prefect's own cache skipped the task). One short line
per event, appended with a single write, so concurrent stage processes do not interleave lines.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline_lib.engine.artifacts import SCRATCH_DIR

log = logging.getLogger(__name__)

EVENTS_FILE = "stage_events.jsonl"
REUSED = ("cached", "republished", "cached (prefect)")  # statuses that reused published or scratch outputs


def events_path(root: Path) -> Path:
    return root / SCRATCH_DIR / EVENTS_FILE


def record_event(root: Path, instance_id: str, status: str, fingerprint: str, seconds: float) -> None:
    """Append one outcome; a log that cannot be written is reported, never allowed to fail the stage."""
    line = json.dumps({"id": instance_id, "status": status, "fingerprint": fingerprint, "seconds": round(seconds, 3),
                       "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    path = events_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(line + "\n")
    except OSError as err:
        log.warning("could not append to the stage event log %s: %s", path, err)


def read_events(root: Path) -> list[dict[str, Any]]:
    """Every logged event, oldest first; a torn last line (a process killed mid-write) is skipped and counted."""
    path = events_path(root)
    if not path.is_file():
        return []
    events, skipped = [], 0
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            skipped += 1
    if skipped:
        log.warning("skipped %d unreadable lines of %s", skipped, path)
    return events


def outcome_counts(events: list[dict[str, Any]], instance_ids: list[str]) -> dict[str, Counter[str]]:
    """Per instance id: how many times it ran and how many times it was reused."""
    counts: dict[str, Counter[str]] = {i: Counter() for i in instance_ids}
    for event in events:
        if event.get("id") in counts:
            counts[event["id"]]["reused" if event.get("status") in REUSED else "ran"] += 1
    return counts


def latest_status(events: list[dict[str, Any]]) -> dict[str, str]:
    """Per instance id: the outcome of its most recent event."""
    return {event["id"]: event.get("status", "") for event in events if "id" in event}
