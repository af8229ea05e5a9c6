"""benchmarks/gpu_check.py at tiny scale on the CPU, as a user runs it: every section present, no error, numbers > 0.

The device check is run rarely and on borrowed time; this keeps it from rotting between runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("extraction", "inversion", "semobridge_t", "czsl_lora")  # every section the script must report


def test_tiny_cpu_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--scale", "tiny", "--device", "cpu", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"gpu_check exited {proc.returncode}; stderr tail:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report, "--out file differs from the JSON printed on stdout"

    env = report["env"]
    assert env["device"] == "cpu" and env["scale"] == "tiny", f"unexpected env {env}"
    for key in ("device_name", "torch", "dtypes", "timing"):
        assert env.get(key), f"env.{key} missing or empty: {env}"

    assert set(report["sections"]) == set(SECTIONS), f"sections {sorted(report['sections'])}, expected {SECTIONS}"
    for name, section in report["sections"].items():
        assert section["ok"] is True and "error" not in section, f"section {name} failed: {section.get('error')}"
        metrics = section["metrics"]
        assert metrics, f"section {name} reports no metrics"
        for key, value in metrics.items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name}.{key}={value!r}"
            assert math.isfinite(value) and value > 0, f"{name}.{key}={value}: expected a finite number > 0"
        assert section["wall_s"] > 0, f"section {name} wall_s={section['wall_s']}"
