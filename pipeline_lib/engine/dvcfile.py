"""Render `dvc.yaml` from the stage registry, so the DVC graph can never drift from the one Prefect runs.

Each stage's `cmd` runs the stage function directly (`bridgeflow stage NAME`), with no Prefect server start per stage.
Deps are the stage's code and its upstream outputs; params are exactly the dotted keys the registry lists, so a stage
reruns only when its own keys change. A first stage, `check_params`, validates the whole params file whenever it
changes; the stages without upstream stages depend on its (constant) output, so DVC runs it before any of them and a
bad param stops `dvc repro` before any output is removed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline_lib.engine.closure import code_paths, import_closure, module_file, package_dir
from pipeline_lib.engine.stages import PARAMS_CHECK, STAGES, Stage, dvc_template, get_stage

PREFLIGHT_MODULE = "pipeline_lib.engine.preflight"

HEADER = (
    "# Generated from pipeline_lib/engine/stages.py by `bridgeflow dvc-yaml --write`:"
    " edit the registry, not this file.\n"
)


def upstream_out(template: str, bound: dict[str, str]) -> str:
    """One upstream output path as this stage's DVC dep: its variables this stage binds become DVC references
    (`${item.dataset}` or a pinned `${inversion.dataset}`); from the first part with an unbound variable on, the path
    stops at the parent folder of the instances (`artifacts/fewshot_runs/${item.dataset}` for all shots and seeds)."""
    parts: list[str] = []
    for part in template.split("/"):
        names = re.findall(r"\{(\w+)\}", part)
        if any(name not in bound for name in names):
            break
        parts.append(re.sub(r"\{(\w+)\}", lambda m: bound[m.group(1)], part))
    return "/".join(parts)


def upstream_outs(stage: Stage) -> list[str]:
    """The cached outputs of the upstream instances this stage reads (`stages.upstream_instances`, as DVC paths; only
    the part named in `Stage.reads` of such an upstream)."""
    bound = {var: f"${{{key}}}" for var, key in stage.pins} | {var: f"${{item.{var}}}" for var, _ in stage.matrix}
    bound |= {var: f"${{item.{own}}}" for var, own in stage.binds}
    reads = dict(stage.reads)
    paths = [upstream_out(f"{out}/{reads[dep]}" if dep in reads and i == 0 else out, bound)
             for dep in stage.deps for i, out in enumerate(get_stage(dep).outs)]
    return list(dict.fromkeys(paths))


def stage_entry(stage: Stage, root: Path) -> dict[str, Any]:
    cmd = "bridgeflow stage " + stage.name
    if stage.matrix:
        cmd += "@" + "-".join(f"${{item.{var}}}" for var, _ in stage.matrix)
    entry: dict[str, Any] = {}
    if stage.matrix:
        entry["matrix"] = {var: f"${{{key}}}" for var, key in stage.matrix}
    entry["desc"] = stage.description
    entry["cmd"] = cmd
    entry["deps"] = code_paths(stage) + (upstream_outs(stage) if stage.deps else [PARAMS_CHECK])
    entry["params"] = [dvc_template(key) for key in stage.params]
    entry["outs"] = [dvc_template(p) for p in stage.outs]
    if stage.metrics:
        entry["metrics"] = [{dvc_template(p): {"cache": False}} for p in stage.metrics]
    if stage.plots:
        entry["plots"] = [{dvc_template(p.path): {"cache": False}} for p in stage.plots]
    return entry


def plots_section() -> list[dict[str, Any]]:
    """Top-level named plots with their axes (a matrix stage's plot by its folder, one file per instance)."""
    section = []
    for stage in STAGES:
        for plot in stage.plots:
            path = plot.path if "{" not in plot.path else str(Path(plot.path).parent)
            y = {path: list(plot.y)} if len(plot.y) > 1 else {path: plot.y[0]}
            section.append({plot.title: {"template": plot.template, "x": plot.x, "y": y}})
    return section


def check_entry() -> dict[str, Any]:
    """The params check: reruns when params.yaml or the check's code changes, in about a second."""
    base = package_dir().parent
    files = {module_file(m) for m in import_closure(PREFLIGHT_MODULE) if m != "pipeline_lib"}
    code = sorted(f.relative_to(base).as_posix() for f in files if f is not None)
    return {"desc": "Check params.yaml (keys, values, dataset paths, backbone name) before any stage can remove "
                    "its outputs.",
            "cmd": f"bridgeflow check-params --out {PARAMS_CHECK}",
            "deps": ["params.yaml", *code], "outs": [{PARAMS_CHECK: {"cache": False}}]}  # in git: a clone has it


def render(root: Path) -> str:
    stages = {"check_params": check_entry(), **{s.name: stage_entry(s, root) for s in STAGES}}
    document = {"stages": stages, "plots": plots_section()}
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120)
