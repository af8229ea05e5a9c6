"""The Prefect sweep: one `pipeline_flow` subflow per grid point, one at a time, each point's results kept apart.

Points run serially inside one flow run, so a sweep talks to one Prefect server (no two ephemeral servers on one
SQLite database). A point whose params differ from params.yaml publishes into its own results folder
(`.bridgeflow/runs/<name>/`, see `engine.results`), never over the workspace results; right after each point its
metrics and plots are copied into `.bridgeflow/sweeps/<sweep>/<point>/` for the comparison. The stage outputs stay
in the fingerprint-keyed scratch cache, so re-running any point republishes it without computing.
"""

from __future__ import annotations

import csv
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.pipeline import pipeline_flow
from pipeline_lib.engine.stages import get_stage
from pipeline_lib.engine.sweep import (
    SWEEPS_DIR,
    comparison,
    grid_points,
    keep_point,
    point_name,
    transposed,
    validate_points,
)


def new_sweep_dir(root: Path) -> Path:
    """A fresh folder for one sweep, named so that listings sort by start time."""
    path = root / SWEEPS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


def write_comparison_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@flow(name="bridgeflow-sweep", log_prints=False)
def sweep_flow(
    grid: dict[str, list[Any]],
    root: str = ".",
    stages: list[str] | None = None,
    profile: str | None = None,
    overrides: list[str] | None = None,
    only_changed: bool = False,
) -> dict[str, Any]:
    """Run the pipeline (or the named stages) once per point of `grid` ({params key: values}); compare the points.

    Every point is validated before the first one runs, so a bad key or value fails the sweep up front.
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    for name in stages or []:
        get_stage(name)
    base = list(overrides or [])
    points = grid_points(grid)
    validate_points(root_path, profile, [base + point for point in points])
    sweep_dir = new_sweep_dir(root_path)
    kept: list[tuple[list[str], Path]] = []
    for index, point in enumerate(points):
        name = point_name(index, point)
        logger.info("sweep point %d/%d: %s", index + 1, len(points), " ".join(point))
        rows = pipeline_flow.with_options(flow_run_name=f"sweep-{name}")(
            root=str(root_path), stages=stages, profile=profile, overrides=base + point
        )
        results = Path(rows[0]["results"]) if rows else root_path
        kept.append((point, keep_point(results, sweep_dir / name, point, stages, rows)))
    columns, table = comparison(kept, only_changed=only_changed)
    write_comparison_csv(sweep_dir / "comparison.csv", columns, table)
    create_table_artifact(
        key="bridgeflow-sweep-comparison",
        table=transposed(columns, table, list(grid), [folder.name for _, folder in kept]),
        description=f"Swept values, then every metric, per sweep point (a column each, named as in {sweep_dir})",
    )
    return {"dir": str(sweep_dir), "columns": columns, "rows": table}
