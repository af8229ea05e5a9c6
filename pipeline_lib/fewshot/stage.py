"""Few-shot stage functions (stage contract): bridge fit and (shots, seed) runs per dataset, report over all runs.

Every path comes from the stage context (the registry, pipeline_lib/engine/stages.py, says where each output lives):
- fewshot_bridge (one per classification dataset): bridge.pt (W+, L), bridge.json (spectrum, rank)
- fewshot_run (one per dataset x shots x seed): results.json, search.csv, curves.csv, bias_norms.csv,
  semobridge_t.pt (last and best weights)
- fewshot_report: summary.json (tables per dataset); its metrics (ctx.metrics(), per dataset) and plots
  fewshot_accuracy (long: dataset, shots, method, accuracy, std), fewshot_train_curve (long: dataset, step, ...),
  fewshot_bias_norms (long: dataset, class, shots, norm)
"""

from __future__ import annotations

import csv
import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.engine.parallel import started_pool
from pipeline_lib.fewshot.bridge import BridgeFit, fit_bridge
from pipeline_lib.fewshot.config import FewshotConfig
from pipeline_lib.fewshot.evaluate import FewshotInputs, SeedResult, aggregate, evaluate_seed, paired_differences
from pipeline_lib.fewshot.outputs import REPORT_TABLES, RESULTS
from pipeline_lib.fewshot.sampling import build_support, sample_fewshot_indices

log = logging.getLogger(__name__)

STORE = "fewshot.zarr"  # the few-shot store inside a `features_fewshot` instance's output folder
SUPPORT = "support.zarr"  # the support store inside the folder of a `support` instance this run reads (`Stage.reads`)
BRIDGE_WEIGHTS = "bridge.pt"
BRIDGE_META = "bridge.json"
# Files of one (shots, seed) run that the report reads.
CURVES = "curves.csv"
BIAS_NORMS = "bias_norms.csv"
# The metrics file keeps the test accuracy of these methods; the full tables are in outputs.REPORT_TABLES.
HEADLINE_METHODS = ("zero_shot", "prototype", "control", "semobridge_all", "semobridge_t")


def read_store_array(store: Path, name: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """One whole array of the feature store, checked against the `shape` the caller expects (None: any length)."""
    from pipeline_lib.engine.store import read_array

    return read_array(store, name, shape)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def json_safe(x: Any) -> Any:
    """Non-finite floats as None, so few-shot JSON stays valid JSON (NaN is not)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------------- fit


def run_fewshot_fit(ctx: StageContext) -> dict:
    """Truncated pinv of W_txt, the rescale constant L, the singular values and rank(W+ W_txt)."""
    cfg: FewshotConfig = ctx.cfg.fewshot
    store = ctx.input("features_fewshot") / STORE
    w_txt = _t(read_store_array(store, "clip/text_projection", (None, None)))  # (D_t, D_p)
    eos_raw = _t(read_store_array(store, "text/class_eos_raw", (None, w_txt.shape[0])))  # (C, D_t)
    fit = fit_bridge(w_txt, eos_raw, cfg.atol)
    out = ctx.output()
    torch.save({"pinv": fit.pinv, "scale": fit.scale, "singular_values": fit.singular_values, "atol": cfg.atol},
               out / BRIDGE_WEIGHTS)
    summary = {**fit.summary(), "atol": cfg.atol, "d_t": int(w_txt.shape[0]), "d_p": int(w_txt.shape[1]),
               "singular_values": [float(v) for v in fit.singular_values]}
    write_json(out / BRIDGE_META, json_safe(summary), sort_keys=True)
    return {k: v for k, v in summary.items() if k != "singular_values"}


def load_bridge(path: Path) -> BridgeFit:
    """Read what run_fewshot_fit published."""
    blob = torch.load(path / BRIDGE_WEIGHTS, map_location="cpu")
    meta = json.loads((path / BRIDGE_META).read_text())
    return BridgeFit(blob["pinv"], float(blob["scale"]), blob["singular_values"], int(meta["n_dropped"]),
                     int(meta["rank_pinv_wtxt"]))


# ------------------------------------------------------------------------------------------------------ seed


def support_views(support: Path, shots: int, seed: int, d_p: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The views of the K-shot sample (N_s, V, D_p), their labels and the sample's train indices (Dassl order).

    The sample is drawn again from the whole split's labels (`sampling/labels`), exactly as the support stage drew
    it; its images are the store's rows whose `train/index` they are (sorted there, in Dassl's order here).
    """
    labels = read_store_array(support, "sampling/labels", (None,)).astype(np.int64)
    idx = sample_fewshot_indices(labels.tolist(), shots, seed)
    index = read_store_array(support, "train/index", (None,)).astype(np.int64)
    rows = np.searchsorted(index, idx)
    missing = [i for i, r in zip(idx, rows, strict=True) if r >= len(index) or index[r] != i]
    if missing:
        raise KeyError(f"{support}: train images {missing[:5]} of the {shots}-shot sample of seed {seed} were not "
                       "extracted (the support store was made for another sample or another split)")
    try:
        views = read_store_array(support, "train/views", (len(index), None, d_p))[rows]  # (N_s, V, D_p)
    except KeyError:  # extracted with one view (E = 0) the store has no views array: the images are view 0
        views = read_store_array(support, "train/image", (len(index), d_p))[rows][:, None, :]  # (N_s, 1, D_p)
    return views, labels[idx], idx


def load_inputs(store: Path, support: Path, shots: int, seed: int, augment_epochs: int
                ) -> tuple[FewshotInputs, list[int]]:
    """Sample the K-shot subset and gather the cached features every method needs: the support views from the
    support store, everything else from the dataset's few-shot store.

    Every array is checked against the widths of clip/text_projection (D_t, D_p), so a store that does not hang
    together fails here, naming the array, rather than in a matmul.
    """
    w_txt = _t(read_store_array(store, "clip/text_projection", (None, None)))  # (D_t, D_p)
    d_t, d_p = w_txt.shape
    class_proj = _t(read_store_array(store, "text/class_proj", (None, d_p)))  # (C, D_p)
    n_classes = class_proj.shape[0]
    views, labels, idx = support_views(support, shots, seed, d_p)
    support_set = build_support(views, labels, range(len(idx)), n_classes, augment_epochs)  # (C, K', D_p)
    from pipeline_lib.engine.store import open_store

    # a dataset without a val split (ImageNet: val = test, spec 1.2) searches and validates on its test split
    sources = {"val": "val" if "val" in open_store(store) else "test", "test": "test"}
    split = {name: read_store_array(store, f"{src}/image", (None, d_p)) for name, src in sources.items()}  # (N, D_p)
    labels_by = {name: read_store_array(store, f"{src}/label", (len(split[name]),)).astype(np.int64)
                 for name, src in sources.items()}
    inp = FewshotInputs(
        support=support_set,
        text_proj=class_proj,
        text_eos=_t(read_store_array(store, "text/class_eos", (n_classes, d_t))),
        w_txt=w_txt,
        val_raw=_t(split["val"]),
        val_labels=torch.from_numpy(labels_by["val"]),
        test_raw=_t(split["test"]),
        test_labels=torch.from_numpy(labels_by["test"]),
    )
    return inp, idx


def dataset_config(ctx: StageContext) -> FewshotConfig:
    """`fewshot` with the instance's dataset's own settings for its shot count: augmentation epochs and the final
    model of SeMoBridge-T (the official per-dataset configs, e.g. ImageNet's last-step model)."""
    cfg: FewshotConfig = ctx.cfg.fewshot
    entry = ctx.cfg.datasets.classification[ctx.item["dataset"]]
    recipe = entry.augment.get(int(ctx.item["shots"]))
    update: dict[str, Any] = {} if recipe is None else {"augment_epochs": recipe.epochs}
    if entry.final_model is not None:
        update["training"] = cfg.training.model_copy(update={"final_model": entry.final_model})
    return cfg.model_copy(update=update) if update else cfg


def run_fewshot_seed(ctx: StageContext) -> dict:
    """Sampling, training-free methods and SeMoBridge-T for the (dataset, shots, seed) of `ctx.item`."""
    shots, seed = int(ctx.item["shots"]), int(ctx.item["seed"])
    cfg = dataset_config(ctx)
    store = ctx.input("features_fewshot") / STORE
    bridge_dir = ctx.input("fewshot_bridge")
    parallel = ctx.cfg.runtime.processes > 1 and cfg.run_training
    with started_pool(1) if parallel else nullcontext() as pool:  # its worker starts before the store is opened
        fit = load_bridge(bridge_dir)
        support = ctx.input("support") / ctx.inst.path(dict(ctx.inst.stage.reads)["support"]) / SUPPORT
        inp, idx = load_inputs(store, support, shots, seed, cfg.augment_epochs)
        res = evaluate_seed(inp, fit, cfg, seed, ctx.device, pool)
    out = ctx.output()
    record = {"shots": shots, "seed": seed, "support_shape": list(inp.support.shape), "train_indices": idx,
              "methods": res.methods}
    write_json(out / RESULTS, json_safe(record), sort_keys=True)
    _write_search_history(out / "search.csv", res)
    _write_training(out, res)
    return {"shots": shots, "seed": seed,
            "test_acc": {name: round(m["test_acc"], 3) for name, m in res.methods.items()}}


def _write_search_history(path: Path, res: SeedResult) -> None:
    names = list(res.searches)
    n = max((len(s.history) for s in res.searches.values()), default=0)
    rows = [[t] + [res.searches[k].history[t] if t < len(res.searches[k].history) else "" for k in names]
            for t in range(n)]
    write_csv(path, ["trial", *names], rows)


def _write_training(out: Path, res: SeedResult) -> None:
    tr = res.train
    if tr is None:
        return
    cols = list(tr.curves)
    rows = [[tr.curves[c][i] for c in cols] for i in range(len(tr.curves["step"]))]
    write_csv(out / CURVES, cols, rows)
    bias = tr.bias_last
    norms = bias.norm(dim=-1).tolist() if bias is not None else []
    write_csv(out / BIAS_NORMS, ["class", "norm"], [[c, v] for c, v in enumerate(norms)])
    torch.save({"pinv_last": tr.pinv_last, "bias_last": tr.bias_last, "pinv_best": tr.pinv_best,
                "bias_best": tr.bias_best, "best_step": tr.best_step}, out / "semobridge_t.pt")


# ---------------------------------------------------------------------------------------------------- report


def headline(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Mean test accuracy (points) of each headline method at every shot count run: {method: {shots}}, shots in
    increasing order."""
    return {m: {k: round(v["mean"], 2) for k, v in sorted(table[m].items(), key=lambda kv: int(kv[0]))}
            for m in HEADLINE_METHODS if m in table}


def dataset_tables(ctx: StageContext, dataset: str) -> tuple[dict[str, Any], dict[tuple[int, int], Path]]:
    """One dataset's tables over its runs (mean +- population std per method x shots, paired differences, the
    bridge) and each run's folder by (shots, seed)."""
    cfg: FewshotConfig = ctx.cfg.fewshot
    run_dirs = {(k, s): ctx.input_instance("fewshot_run", dataset=dataset, shots=k, seed=s)
                for k in cfg.shots for s in cfg.seeds}
    runs = []
    for (k, s), run_dir in run_dirs.items():
        p = run_dir / RESULTS
        if not p.exists():
            raise FileNotFoundError(f"{p} missing: run fewshot_run@{dataset}-{k}-{s} first")
        runs.append(json.loads(p.read_text()))
    tables: dict[str, Any] = {"runs": len(runs), "test_acc": aggregate(runs), "val_acc": aggregate(runs, "val_acc"),
                              "paired_test_diff": paired_differences(runs)}
    tables["methods"] = list(tables["test_acc"])
    tables["prompts"] = ctx.cfg.datasets.classification[dataset].prompts  # the CoOp name published numbers use
    bridge_meta = ctx.input_instance("fewshot_bridge", dataset=dataset) / BRIDGE_META
    if bridge_meta.exists():
        meta = json.loads(bridge_meta.read_text())
        tables["bridge"] = {k: v for k, v in meta.items() if k != "singular_values"}
    return tables, run_dirs


def run_fewshot_report(ctx: StageContext) -> dict:
    """Per classification dataset: mean +- population std over seeds per method x shots, paired differences, curves
    and bias norms. Metrics: {"test_acc": {dataset: {method: {shots: mean}}}}."""
    cfg: FewshotConfig = ctx.cfg.fewshot
    tables, rows, curves, norms = {}, [], [], []
    for dataset in ctx.cfg.datasets.classification:
        table, run_dirs = dataset_tables(ctx, dataset)
        tables[dataset] = table
        acc = table["test_acc"]
        rows += [[dataset, k, m, acc[m][str(k)]["mean"], acc[m][str(k)]["std"]]
                 for k in cfg.shots for m in table["methods"] if str(k) in acc[m]]
        curves += [[dataset, *row] for row in _train_curve(cfg, run_dirs)]
        norms += [[dataset, *row] for row in _bias_norms(cfg, run_dirs)]
    write_json(ctx.metrics(), {"test_acc": {d: headline(t["test_acc"]) for d, t in tables.items()}})
    write_csv(ctx.plot("fewshot_accuracy"), ["dataset", "shots", "method", "accuracy", "std"], rows)
    write_csv(ctx.plot("fewshot_train_curve"), ["dataset", *CURVE_COLUMNS], curves)
    write_csv(ctx.plot("fewshot_bias_norms"), ["dataset", "class", "shots", "norm"], norms)
    write_json(ctx.output() / REPORT_TABLES, json_safe({"datasets": tables}), sort_keys=True)
    return {d: {m: {k: round(v["mean"], 3) for k, v in t["test_acc"][m].items()} for m in HEADLINE_METHODS
                if m in t["test_acc"]} for d, t in tables.items()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


CURVE_COLUMNS = ["step", "lr", "total", "img", "txte", "txtp", "cons", "bias", "val_acc"]


def _train_curve(cfg: FewshotConfig, run_dirs: dict[tuple[int, int], Path]) -> list[list[Any]]:
    """Training curve at the largest shot count, mean over seeds (rows of CURVE_COLUMNS)."""
    k_max = max(cfg.shots)
    curves = [_read_csv(p) for s in cfg.seeds if (p := run_dirs[k_max, s] / CURVES).exists()]
    rows: list[list[Any]] = []
    if curves:
        for i in range(min(len(c) for c in curves)):
            row: list[Any] = [int(curves[0][i]["step"])]
            for col in CURVE_COLUMNS[1:]:
                vals = [float(c[i][col]) for c in curves if c[i].get(col) not in (None, "", "nan")]
                row.append(float(np.mean(vals)) if vals else "")
            rows.append(row)
    return rows


def _bias_norms(cfg: FewshotConfig, run_dirs: dict[tuple[int, int], Path]) -> list[list[Any]]:
    """Class-bias norms at the last step: (class, shots, mean over seeds) rows."""
    per_shot: dict[int, list[list[float]]] = {}
    for k in cfg.shots:
        for s in cfg.seeds:
            p = run_dirs[k, s] / BIAS_NORMS
            if p.exists():
                vals = [float(r["norm"]) for r in _read_csv(p)]
                if vals:
                    per_shot.setdefault(k, []).append(vals)
    n_cls = min((len(v) for runs in per_shot.values() for v in runs), default=0)
    return [[c, k, float(np.mean([v[c] for v in per_shot[k]]))] for k in sorted(per_shot) for c in range(n_cls)]
