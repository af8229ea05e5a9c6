"""Project-local, offline-quiet Prefect settings, applied before Prefect is imported.

Prefect keeps its home (SQLite database of the ephemeral server), results and cache records under
`.bridgeflow/prefect/` (git- and dvc-ignored) unless the user already set them, and never phones home.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_prefect_env(root: Path) -> None:
    """Set Prefect defaults for this project; values the user exported win."""
    home = (root / ".bridgeflow" / "prefect").resolve()
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
