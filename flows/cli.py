"""The `bridgeflow` command line: run stages directly (DVC's commands), through Prefect, and inspect results."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from pipeline_lib import __version__

app = typer.Typer(
    help="Adapt CLIP models across the modality gap: a cached, reproducible pipeline.", no_args_is_help=True
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

RootOpt = Annotated[Path, typer.Option("--root", help="Project folder holding params.yaml.")]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="Params profile merged over params.yaml (e.g. smoke).")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("-S", "--set", help="Override a params key: -S key=value (repeatable).")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bridgeflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    """bridgeflow: SeMoBridge, OTI/OVI and SAM-CZSL on any open_clip backbone."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # per-request Prefect API and Dask scheduler chatter buries the stage logs
        for noisy in ("httpx", "httpcore", "distributed"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def print_error(err: BaseException) -> None:
    """One error line on stderr: never folded inside a word (paths stay copyable), brackets printed as they are."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)


def friendly_errors(fn: F) -> F:
    """Turn expected user errors (bad params, missing inputs, bad data) into a one-screen message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipeline_lib.engine.errors import user_errors

        try:
            return fn(*args, **kwargs)
        except user_errors() as err:
            print_error(err)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@friendly_errors
def stage(
    instance: Annotated[str, typer.Argument(help="Stage name, or NAME@ITEM for a matrix stage (as in dvc.yaml).")],
    root: RootOpt = Path("."),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when published outputs match.")] = False,
    lock_wait: Annotated[
        float, typer.Option(help="Seconds to wait while another process runs this stage (negative: no limit).")
    ] = -1.0,
) -> None:
    """Run one stage instance directly, without Prefect (this is each dvc.yaml stage's cmd)."""
    from pipeline_lib.engine.config import effective_params, load_config
    from pipeline_lib.engine.runner import run_instance
    from pipeline_lib.engine.stages import parse_instance_id

    cfg = load_config(root, profile, tuple(set_ or ()))
    inst = parse_instance_id(instance, effective_params(cfg))
    result = run_instance(root.resolve(), inst, cfg, force=force, lock_wait=None if lock_wait < 0 else lock_wait)
    console.print(
        f"[green]{result.id}[/]: {result.status} in {result.seconds:.1f} s (fingerprint {result.fingerprint})"
    )


@app.command()
@friendly_errors
def run(
    stage_names: Annotated[
        list[str] | None, typer.Option("--stage", help="Run this stage and what it needs (repeatable).")
    ] = None,
    root: RootOpt = Path("."),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="Publish into the workspace even when params differ from params.yaml.")
    ] = False,
) -> None:
    """Run the pipeline (or the named stages) as a Prefect flow with cached tasks.

    With a profile or overrides that change params.yaml's values, results go to .bridgeflow/runs/<name>/ (printed),
    never over the workspace results that dvc.lock describes, unless --publish.
    """
    from flows.graph import instance_graph
    from pipeline_lib.engine.config import effective_params
    from pipeline_lib.engine.preflight import preflight
    from pipeline_lib.engine.stages import get_stage
    from pipeline_lib.engine.stages import stage_names as all_stages

    cfg = preflight(root, profile, tuple(set_ or ()))  # before the Prefect server starts: a typo fails in a second
    for name in stage_names or []:
        get_stage(name)
    instance_graph(stage_names or all_stages(), effective_params(cfg))  # ... and so does an unlisted dataset
    from flows.prefect_env import configure_prefect_env

    configure_prefect_env(root)
    from flows.pipeline import pipeline_flow
    rows = pipeline_flow(
        root=str(root.resolve()), stages=stage_names, profile=profile, overrides=list(set_ or []), publish=publish
    )
    table = Table(title="bridgeflow run")
    for column in ("stage", "status", "seconds"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["stage"], row["status"], f"{row['seconds']:.1f}")
    Console().print(table)
    results = Path(rows[0]["results"]) if rows else root.resolve()
    _print_summary(results)
    if results != root.resolve():
        console.print(
            f"results of this run: {results} (params differ from params.yaml; the workspace results are "
            "untouched; --publish writes them there)"
        )


@app.command()
@friendly_errors
def sweep(
    axes: Annotated[
        list[str],
        typer.Option(
            "-S",
            "--set",
            help="A grid axis: -S key=v1,v2 (commas inside [] {} or quotes belong to a value; repeatable).",
        ),
    ],
    stage_names: Annotated[
        list[str] | None, typer.Option("--stage", help="Run this stage and what it needs (repeatable).")
    ] = None,
    root: RootOpt = Path("."),
    profile: ProfileOpt = None,
    via: Annotated[
        str, typer.Option(help="prefect: subflows of one flow run; dvc: `dvc exp run` experiments.")
    ] = "prefect",
    jobs: Annotated[
        int, typer.Option(help="Points run at once (dvc queue workers); the Prefect sweep runs one at a time.")
    ] = 1,
    only_changed: Annotated[
        bool,
        typer.Option("--only-changed/--all-columns", help="Show only the metrics that differ between points."),
    ] = True,
) -> None:
    """Run every point of a params grid without clobbering results, then print a table of the points' metrics.

    The table has one column per point, headed by its swept values, and one row per metric (each metrics file's
    keys); it fits the terminal's width (COLUMNS, else 100), wrapping many points into several blocks.
    """
    import shutil

    from pipeline_lib.engine.params import ParamsError
    from pipeline_lib.engine.stages import get_stage
    from pipeline_lib.engine.sweep import TABLE_WIDTH, grid_points, parse_grid, render_comparison, validate_points

    for name in stage_names or []:
        get_stage(name)
    grid = parse_grid(axes)
    validate_points(root, profile, grid_points(grid))  # before any server starts or experiment is queued
    width = shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    if via == "dvc":
        if profile:
            raise ParamsError("--profile applies to --via prefect only: DVC experiments read params.yaml")
        from flows.dvc_sweep import dvc_sweep

        table = dvc_sweep(
            root.resolve(),
            grid_points(grid),
            stage_names,
            jobs=jobs,
            only_changed=only_changed,
            width=width,
            say=lambda line: typer.echo(line, err=True),
        )
        typer.echo(table)
        return
    if via != "prefect" or jobs != 1:
        raise ParamsError(f"--via {via} --jobs {jobs}: expected --via dvc, or --via prefect with --jobs 1")
    from flows.prefect_env import configure_prefect_env

    configure_prefect_env(root)
    from flows.sweep import sweep_flow

    result = sweep_flow(
        grid=grid, root=str(root.resolve()), stages=stage_names, profile=profile, only_changed=only_changed
    )
    typer.echo(render_comparison(result["columns"], result["rows"], list(grid), width))
    console.print(f"each point's metrics and plots, and comparison.csv: {result['dir']}")


@app.command()
@friendly_errors
def params(root: RootOpt = Path("."), profile: ProfileOpt = None, set_: SetOpt = None) -> None:
    """Print the validated params (params.yaml + profile + overrides, defaults filled in) as YAML."""
    from pipeline_lib.engine.config import effective_params, load_config

    cfg = load_config(root, profile, tuple(set_ or ()))
    typer.echo(yaml.safe_dump(effective_params(cfg), sort_keys=False, width=120), nl=False)


def _amount(value: float, unit: str = "") -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.1f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else (
        f"{seconds:.1f} s")


@app.command()
@friendly_errors
def plan(
    stage_names: Annotated[
        list[str] | None, typer.Option("--stage", help="Plan this stage and what it needs (repeatable; default all).")
    ] = None,
    root: RootOpt = Path("."),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    probe: Annotated[bool, typer.Option(help="Time the backbone on the configured device to estimate hours.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as one JSON object on stdout.")] = False,
) -> None:
    """Before anything runs: each stage instance's forward passes (or optimisation steps), estimated time and disk.

    Times come from a few-second probe of the configured backbone (random weights, nothing downloaded) on the
    configured device; steps on cached features are counted, not timed. Published instances are planned too.
    """
    from pipeline_lib.engine.preflight import preflight
    from pipeline_lib.plan.build import build_plan

    cfg = preflight(root, profile, tuple(set_ or ()))
    result = build_plan(root.resolve(), cfg, stage_names, with_probe=probe)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=1))
        return
    table = Table(title="bridgeflow plan")
    for column in ("instance", "work", "time", "disk", "note"):
        table.add_column(column)
    for row in result.rows:
        work = ", ".join(f"{_amount(n)} {kind}" for kind, n in row["work"].items()) or "-"
        table.add_row(row["instance"], work, _duration(row["seconds"]), _amount(row["disk_bytes"], "B"), row["note"])
    Console().print(table)
    totals = result.totals()
    rates = ", ".join(f"{kind} {rate:.1f}/s" for kind, rate in result.probe.rates.items()) if result.probe else "none"
    console.print(f"{totals['instances']} instances, {_duration(totals['seconds'])} of timed work, "
                  f"{_amount(totals['disk_bytes'], 'B')} of features; probe: {rates}")


@app.command("check-params")
@friendly_errors
def check_params(
    root: RootOpt = Path("."),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write 'ok' here when the params pass.")] = None,
) -> None:
    """Check params (keys, values, dataset paths, backbone name) without running anything; dvc.yaml's first stage."""
    from pipeline_lib.engine.preflight import preflight

    preflight(root, profile, tuple(set_ or ()), require_dvc_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("ok\n")  # constant: a params edit that passes never makes the stages below stale
    console.print("params ok")


@app.command("dvc-yaml")
def dvc_yaml(
    root: RootOpt = Path("."),
    write: Annotated[bool, typer.Option("--write", help="Write dvc.yaml instead of printing it.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when dvc.yaml differs from the registry.")] = False,
) -> None:
    """Render dvc.yaml from the stage registry (pipeline_lib/engine/stages.py)."""
    from pipeline_lib.engine.dvcfile import render

    text = render(root)
    path = root / "dvc.yaml"
    if check:
        if not path.is_file() or path.read_text() != text:
            console.print("[red]dvc.yaml is out of date with the stage registry: run `bridgeflow dvc-yaml --write`[/]")
            raise typer.Exit(1)
        console.print("dvc.yaml matches the stage registry")
    elif write:
        path.write_text(text)
    else:
        typer.echo(text, nl=False)


@app.command()
@friendly_errors
def status(
    root: RootOpt = Path("."),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per instance on stdout.")] = False,
) -> None:
    """Which stage instances are published with the fingerprint the current params and code give.

    "stale: upstream X" marks a stage whose own outputs match but whose upstream X is stale or missing; a stage whose
    metrics or plot files were overwritten by another run (a profile, an override) lists them as foreign results.
    """
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.engine.status import instance_states

    rows = instance_states(root, load_config(root, profile, tuple(set_ or ())))
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=1))
        return
    table = Table(title="bridgeflow status")
    for column in ("stage", "state", "published fingerprint", "results not from this run"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.id, row.state, row.published_fingerprint or "-", ", ".join(row.foreign_results) or "-")
    Console().print(table)


@app.command()
def summary(root: RootOpt = Path(".")) -> None:
    """Print the claims (paired intervals and verdicts), then the headline results from metrics/*.json."""
    _print_summary(root)


def _print_summary(root: Path) -> None:
    from pipeline_lib.engine.summary import claims_lines, load_claims, reproduction_lines, results_lines

    claims, lines = load_claims(root), results_lines(root, width=_terminal_width())
    if claims is None and not lines:
        console.print("no metrics yet: run `dvc repro` or `bridgeflow run`")
        return
    # plain text: rich would read "[low, high]" as markup
    typer.echo("\n".join(claims_lines(claims, width=_terminal_width())))
    if lines:
        typer.echo("\n".join(["", "bridgeflow results (metrics/*.json; means over seeds)", *lines]))
        typer.echo("\n".join(["", "reproduction", *reproduction_lines(root, width=_terminal_width())]))


def _terminal_width() -> int:
    """The terminal's width, capped at the summary's width (80 when not a terminal, e.g. in a pipe)."""
    import shutil

    from pipeline_lib.engine.summary import SUMMARY_WIDTH

    return min(SUMMARY_WIDTH, shutil.get_terminal_size((SUMMARY_WIDTH, 24)).columns)


@app.command()
@friendly_errors
def report(root: RootOpt = Path("."), profile: ProfileOpt = None, set_: SetOpt = None) -> None:
    """Write reports/index.html (static, offline) from the latest results; same as `bridgeflow stage report`."""
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.engine.runner import run_stage

    for result in run_stage(root.resolve(), "report", load_config(root, profile, tuple(set_ or ()))):
        console.print(f"{result.id}: {result.status} -> {root / 'reports' / 'index.html'}")


@app.command("czsl-pairs")
@friendly_errors
def czsl_pairs(
    root: Annotated[Path, typer.Option("--root", help="CZSL dataset folder (standard layout).")],
    world: Annotated[str, typer.Option(help="closed or open.")] = "closed",
) -> None:
    """Print the pair order (one `attr obj` per line) that score columns must follow; the matrix shapes on stderr."""
    from pipeline_lib.czsl.cli_support import pair_order, split_rows

    pairs = pair_order(root, world)
    for attr, obj in pairs:
        typer.echo(f"{attr} {obj}")
    shapes = ", ".join(f"{split} {rows} x {len(pairs)}" for split, rows in split_rows(root, world).items())
    console.print(f"{world} world: {len(pairs)} pairs; score matrices (rows in metadata order x pairs): {shapes}")


@app.command("czsl-eval")
@friendly_errors
def czsl_eval(
    root: Annotated[Path, typer.Option("--root", help="CZSL dataset folder (standard layout).")],
    scores: Annotated[Path, typer.Option("--scores", help="float32/64 .npy, N x P, rows in metadata order.")],
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    world: Annotated[str, typer.Option(help="closed or open.")] = "closed",
    feasibility: Annotated[Path | None, typer.Option(help="float32/64 .npy over the open-world pair order.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Feasibility threshold for the open-world filter.")] = None,
) -> None:
    """Evaluate any model's pair scores with the standard CZSL protocol; prints JSON."""
    from pipeline_lib.czsl.cli_support import evaluate_scores_file

    try:
        result = evaluate_scores_file(root, split, world, scores, feasibility_path=feasibility, threshold=threshold)
    except ValueError as err:  # a scores/feasibility file of the wrong shape or dtype, or a bad option
        print_error(err)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
