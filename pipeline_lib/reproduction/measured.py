"""Our metrics files -> MeasuredRow, in one place a caller can adapt when those files change shape.

Reads (all optional, missing keys skipped):
- the few-shot report's tables: datasets[name].test_acc[method][shots] = {mean, std, n} in points -> task fewshot,
  dataset = the entry's `prompts` (its CoOp name), setting = shots; zero_shot (identical at every shot count) once
  more as setting "0"; datasets[name].bridge.{sv_median, sv_max, n_dropped, n_singular_values} -> dataset "-",
  method "bridge", setting "atol=<atol>" (once: the spectrum is the backbone's, the same for every dataset).
- each czsl instance's summary: dataset, rows[row][world][auc|hm|seen|unseen] as fractions (a number, or
  {mean, std, n}) -> task czsl, setting = world; rows[row].rmg -> metric rmg, setting "closed".
- each oti / ovi instance's retrieval table: image.{image_to_image, oti_to_image}.map or
  text.{text_to_text, ovi_to_text}.map as fractions -> image_retrieval / text_retrieval, setting "-";
  *.map_gain -> "<inverted>-minus-<native>", map_diff.
  The *_selected entries (step chosen on validation queries) are left out: the paper keeps the last iterate.
Rows whose key has no published counterpart are harmless: compare() drops them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline_lib.reproduction.compare import MeasuredRow
from pipeline_lib.reproduction.published import backbone_id, dataset_id

#: The text-retrieval set of an entry without a path (the data stage's synthetic captions).
DEFAULT_TEXT_DATASET = "shapes-captions"


@dataclass(frozen=True)
class RunIdentity:
    """What a run's numbers are keyed by, besides dataset, method, setting and metric."""

    backbone: str  # the paper's form, from backbone_id(backbone.model, backbone.pretrained)


def run_identity(params: Mapping[str, Any]) -> RunIdentity:
    """The identity from a loaded params.yaml (the dict; only the backbone keys are read)."""
    backbone = params.get("backbone", {})
    return RunIdentity(backbone=backbone_id(str(backbone.get("model", "")), backbone.get("pretrained")))


Stat = tuple[float, float | None, int | None]  # (value, spread, n)


def _stat(entry: Any) -> Stat | None:
    """(value, spread, n) from a number or a {mean, std, n} dict; None when absent."""
    if isinstance(entry, Mapping):
        if "mean" not in entry:
            return None
        std, n = entry.get("std"), entry.get("n")
        return float(entry["mean"]), None if std is None else float(std), None if n is None else int(n)
    if isinstance(entry, int | float) and not isinstance(entry, bool):
        return float(entry), None, None
    return None


def _row(
    task: str, dataset: str, run: RunIdentity, method: str, setting: str, metric: str, stat: Stat, unit: str
) -> MeasuredRow:
    value, spread, n = stat
    return MeasuredRow(task, dataset, run.backbone, method, setting, metric, value, unit, spread, n)


def _fewshot_rows(run: RunIdentity, fewshot: Mapping[str, Any]) -> list[MeasuredRow]:
    """Every dataset's accuracy rows; the bridge spectrum (a property of the backbone's text projection, the same
    for every dataset) once."""
    rows = []
    for name, table in fewshot.get("datasets", {}).items():
        rows += _dataset_rows(run, dataset_id(str(table.get("prompts", name))), table)
    return list({row.key: row for row in reversed(rows)}.values())[::-1]  # the first of equal keys


def _dataset_rows(run: RunIdentity, dataset: str, table: Mapping[str, Any]) -> list[MeasuredRow]:
    rows = []
    for method, by_shot in table.get("test_acc", {}).items():
        for shots in sorted(by_shot, key=int):
            stat = _stat(by_shot[shots])
            if stat is not None:
                rows.append(_row("fewshot", dataset, run, method, str(shots), "accuracy", stat, "points"))
        if method == "zero_shot" and by_shot:  # the same number at every shot count; the paper's setting is "0"
            stat = _stat(by_shot[max(by_shot, key=int)])
            if stat is not None:
                rows.append(_row("fewshot", dataset, run, method, "0", "accuracy", stat, "points"))
    bridge = table.get("bridge", {})
    if "atol" in bridge:
        setting = f"atol={float(bridge['atol']):g}"
        units = {"sv_median": "ratio", "sv_max": "ratio", "n_dropped": "count", "n_singular_values": "count"}
        for metric, unit in units.items():
            stat = _stat(bridge.get(metric))
            if stat is not None:
                rows.append(_row("fewshot", "-", run, "bridge", setting, metric, stat, unit))
    return rows


def _czsl_rows(run: RunIdentity, czsl: Mapping[str, Any]) -> list[MeasuredRow]:
    dataset = dataset_id(str(czsl["dataset"]))
    seeds = czsl.get("seeds")
    n = seeds if isinstance(seeds, int) else len(seeds) if isinstance(seeds, list) else None
    rows = []

    def add(name: str, setting: str, metric: str, entry: Any, unit: str) -> None:
        stat = _stat(entry)
        if stat is not None:
            rows.append(_row("czsl", dataset, run, name, setting, metric, (stat[0], stat[1], stat[2] or n), unit))

    for name, row in czsl.get("rows", {}).items():
        for world, metrics in row.items():
            if isinstance(metrics, Mapping):
                for metric in ("auc", "hm", "seen", "unseen"):
                    add(name, world, metric, metrics.get(metric), "fraction")
        add(name, "closed", "rmg", row.get("rmg"), "ratio")
    return rows


def _retrieval_rows(run: RunIdentity, dataset: str, retrieval: Mapping[str, Any]) -> list[MeasuredRow]:
    rows = []
    for direction, task, native, inverted in (
        ("image", "image_retrieval", "image_to_image", "oti_to_image"),
        ("text", "text_retrieval", "text_to_text", "ovi_to_text"),
    ):
        block = retrieval.get(direction) or {}
        for method in (native, inverted):
            entry = block.get(method) or {}
            if "map" in entry:
                n = entry.get("n_queries")
                stat = (float(entry["map"]), None, None if n is None else int(n))
                rows.append(_row(task, dataset, run, method, "-", "map", stat, "fraction"))
        gain = _stat(block.get("map_gain"))
        if gain is not None:
            rows.append(_row(task, dataset, run, f"{inverted}-minus-{native}", "-", "map_diff", gain, "fraction"))
    return rows


def measured_rows(
    run: RunIdentity,
    *,
    fewshot: Mapping[str, Any] | None = None,
    czsl: Sequence[Mapping[str, Any]] = (),
    retrieval: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> list[MeasuredRow]:
    """MeasuredRow for every number of the given metrics dicts (the parsed JSON files; `czsl`: one summary per CZSL
    dataset; `retrieval`: (dataset id, retrieval table) per OTI or OVI instance) that has a published kind."""
    rows: list[MeasuredRow] = []
    if fewshot:
        rows += _fewshot_rows(run, fewshot)
    for summary in czsl:
        rows += _czsl_rows(run, summary)
    for dataset, table in retrieval:
        rows += _retrieval_rows(run, dataset, table)
    return rows
