"""The report of a finished smoke pipeline, rendered in headless Chromium: every plot the report promises loads.

Chromium comes from the `chromium` Debian package (`make browser`, a prerequisite of `make test`). Without it the
tests skip locally and fail under CI. A screenshot of the rendered page is kept in test-artifacts/report.png.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import IN_CI, REPO, SmokePipeline

pytestmark = pytest.mark.slow  # a smoke pipeline rendered in headless Chromium

ARTIFACTS = REPO / "test-artifacts"
# What the report must show: the backbone's modality gap, few-shot accuracy vs shots per method, inversion mAP intra
# vs inverted and vs step, the CZSL ablation and seen/unseen curve, stage timings and cache hits.
REQUIRED_PLOTS = {
    "gap_similarity.png", "gap_summary.png", "fewshot_accuracy.png", "oti_map_shapes.png", "oti_map_vs_step_shapes.png",
    "claims_forest.png", "czsl_ablation_shapes.png", "czsl_curve_shapes.png", "stage_timings.png", "cache_hits.png",
}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")  # session scope: resolved before the session-wide smoke pipeline is built
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium is not installed; `make browser` installs the Debian package"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(binary: str, page: Path, profile: Path, *args: str) -> str:
    """One headless Chromium run on a local page with a fresh profile; its stdout."""
    done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


class ImageMarks(HTMLParser):
    """The <img> sources with their data-loaded marks, and the body's loaded/total count, from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: dict[str, str | None] = {}
        self.count: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.loaded[found.get("src") or ""] = found.get("data-loaded")
        elif tag == "body":
            self.count = found.get("data-images-loaded")


def rendered_marks(binary: str, page: Path, profile: Path) -> ImageMarks:
    marks = ImageMarks()
    marks.feed(run_chromium(binary, page, profile, "--dump-dom"))
    return marks


def test_report_plots_load_in_chromium(chromium: str, smoke_pipeline: SmokePipeline, tmp_path: Path) -> None:
    page = smoke_pipeline.root / "reports" / "index.html"
    marks = rendered_marks(chromium, page, tmp_path / "profile-dom")
    assert REQUIRED_PLOTS <= set(marks.loaded), f"missing plots: {sorted(REQUIRED_PLOTS - set(marks.loaded))}"
    assert all(mark == "yes" for mark in marks.loaded.values()), marks.loaded
    assert marks.count == f"{len(marks.loaded)}/{len(marks.loaded)}", marks.count

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    run_chromium(chromium, page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,5000")
    print(f"report screenshot: {shot}")
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (width, height) == (1280, 5000), (width, height)
    assert shot.stat().st_size > 100_000, f"{shot} is {shot.stat().st_size} bytes: a blank page?"


def test_a_broken_plot_is_reported(chromium: str, smoke_pipeline: SmokePipeline, tmp_path: Path) -> None:
    """The load marks are real: a plot whose PNG is corrupt renders as not loaded."""
    reports = shutil.copytree(smoke_pipeline.root / "reports", tmp_path / "reports")
    (reports / "cache_hits.png").write_bytes(b"not a png")
    marks = rendered_marks(chromium, reports / "index.html", tmp_path / "profile")
    assert marks.loaded["cache_hits.png"] == "no"
    assert marks.count == f"{len(marks.loaded) - 1}/{len(marks.loaded)}", marks.count
