"""Few-shot stage functions (stage contract): bridge fit, one (shots, seed) run, report over all runs.

Outputs (repo-relative):
(paths as declared in the stage registry, pipeline_lib/engine/stages.py)
- fewshot_bridge: artifacts/fewshot_bridge/   bridge.pt (W+, L), bridge.json (spectrum, rank)
- fewshot_run:    artifacts/fewshot_runs/k{shots}-s{seed}/  results.json, curves.csv, search.csv, bias_norms.csv,
                  semobridge_t.pt (last and best weights)
- fewshot_report: artifacts/fewshot_report/ (summary.json), metrics/fewshot.json, plots/fewshot_accuracy.csv
                  (long: shots, method, accuracy, std), plots/fewshot_train_curve.csv, plots/fewshot_bias_norms.csv
                  (long: class, shots, norm)
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

from pipeline_lib.fewshot.bridge import BridgeFit, fit_bridge
from pipeline_lib.fewshot.config import FewshotConfig
from pipeline_lib.fewshot.evaluate import FewshotInputs, SeedResult, aggregate, evaluate_seed, paired_differences
from pipeline_lib.fewshot.sampling import build_support, sample_fewshot_indices
from pipeline_lib.engine.io import write_csv, write_json
from pipeline_lib.engine.parallel import started_pool

log = logging.getLogger(__name__)

FEATURES = "artifacts/features"
STORE = "fewshot.zarr"
BRIDGE_OUT = "artifacts/fewshot_bridge"
REPORT_OUT = "artifacts/fewshot_report"


def seed_out(shots: int, seed: int) -> str:
    """Output directory of one (shots, seed) run."""
    return f"artifacts/fewshot_runs/k{shots}-s{seed}"


def read_store_array(store: Path, name: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """One whole array of the feature store, checked against the `shape` the caller expects (None: any length)."""
    from pipeline_lib.engine.store import read_array

    return read_array(store, name, shape)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _write_json(path: Path, obj: Any) -> None:
    """Few-shot JSON: non-finite floats as null (valid JSON), keys sorted."""
    write_json(path, _json_safe(obj), sort_keys=True)


# ------------------------------------------------------------------------------------------------------- fit


def run_fewshot_fit(ctx: Any) -> dict:
    """Truncated pinv of W_txt, the rescale constant L, the singular values and rank(W+ W_txt)."""
    cfg: FewshotConfig = ctx.cfg.fewshot
    store = ctx.inp(FEATURES) / STORE
    w_txt = _t(read_store_array(store, "clip/text_projection", (None, None)))  # (D_t, D_p)
    eos_raw = _t(read_store_array(store, "text/class_eos_raw", (None, w_txt.shape[0])))  # (C, D_t)
    fit = fit_bridge(w_txt, eos_raw, cfg.atol)
    out = ctx.out(BRIDGE_OUT)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"pinv": fit.pinv, "scale": fit.scale, "singular_values": fit.singular_values, "atol": cfg.atol},
               out / "bridge.pt")
    summary = {**fit.summary(), "atol": cfg.atol, "d_t": int(w_txt.shape[0]), "d_p": int(w_txt.shape[1]),
               "singular_values": [float(v) for v in fit.singular_values]}
    _write_json(out / "bridge.json", summary)
    return {k: v for k, v in summary.items() if k != "singular_values"}


def load_bridge(path: Path) -> BridgeFit:
    """Read what run_fewshot_fit published."""
    blob = torch.load(path / "bridge.pt", map_location="cpu")
    meta = json.loads((path / "bridge.json").read_text())
    return BridgeFit(blob["pinv"], float(blob["scale"]), blob["singular_values"], int(meta["n_dropped"]),
                     int(meta["rank_pinv_wtxt"]))


# ------------------------------------------------------------------------------------------------------ seed


def load_inputs(store: Path, shots: int, seed: int, augment_epochs: int) -> tuple[FewshotInputs, list[int]]:
    """Sample the K-shot subset from the train split and gather the cached features every method needs.

    Every array is checked against the widths of clip/text_projection (D_t, D_p), so a store that does not hang
    together fails here, naming the array, rather than in a matmul.
    """
    w_txt = _t(read_store_array(store, "clip/text_projection", (None, None)))  # (D_t, D_p)
    d_t, d_p = w_txt.shape
    train_labels = read_store_array(store, "train/label", (None,)).astype(np.int64)
    n_train = len(train_labels)
    class_proj = _t(read_store_array(store, "text/class_proj", (None, d_p)))  # (C, D_p)
    n_classes = class_proj.shape[0]
    idx = sample_fewshot_indices(train_labels.tolist(), shots, seed)
    try:
        views = read_store_array(store, "train/views", (n_train, None, d_p))  # (N, V, D_p)
    except KeyError:  # a store extracted with features.views = 1 has no views array: the images are view 0
        views = read_store_array(store, "train/image", (n_train, d_p))[:, None, :]  # (N, 1, D_p)
    support = build_support(views, train_labels, idx, n_classes, augment_epochs)  # (C, K', D_p)
    split = {name: read_store_array(store, f"{name}/image", (None, d_p)) for name in ("val", "test")}  # (N_s, D_p)
    labels = {name: read_store_array(store, f"{name}/label", (len(x),)).astype(np.int64) for name, x in split.items()}
    inp = FewshotInputs(
        support=support,
        text_proj=class_proj,
        text_eos=_t(read_store_array(store, "text/class_eos", (n_classes, d_t))),
        w_txt=w_txt,
        val_raw=_t(split["val"]),
        val_labels=torch.from_numpy(labels["val"]),
        test_raw=_t(split["test"]),
        test_labels=torch.from_numpy(labels["test"]),
    )
    return inp, idx


def run_fewshot_seed(ctx: Any, shots: int | None = None, seed: int | None = None) -> dict:
    """Sampling, training-free methods and SeMoBridge-T for one (shots, seed); shots/seed default to ctx.item."""
    item = getattr(ctx, "item", {}) or {}
    shots = int(item["shots"] if shots is None else shots)
    seed = int(item["seed"] if seed is None else seed)
    cfg: FewshotConfig = ctx.cfg.fewshot
    store = ctx.inp(FEATURES) / STORE
    parallel = ctx.cfg.runtime.processes > 1 and cfg.run_training
    with started_pool(1) if parallel else nullcontext() as pool:  # its worker starts before the store is opened
        fit = load_bridge(ctx.inp(BRIDGE_OUT))
        inp, idx = load_inputs(store, shots, seed, cfg.augment_epochs)
        res = evaluate_seed(inp, fit, cfg, seed, getattr(ctx, "device", "cpu"), pool)
    out = ctx.out(seed_out(shots, seed))
    out.mkdir(parents=True, exist_ok=True)
    record = {"shots": shots, "seed": seed, "support_shape": list(inp.support.shape), "train_indices": idx,
              "methods": res.methods}
    _write_json(out / "results.json", record)
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
    write_csv(out / "curves.csv", cols, rows)
    bias = tr.bias_last
    norms = bias.norm(dim=-1).tolist() if bias is not None else []
    write_csv(out / "bias_norms.csv", ["class", "norm"], [[c, v] for c, v in enumerate(norms)])
    torch.save({"pinv_last": tr.pinv_last, "bias_last": tr.bias_last, "pinv_best": tr.pinv_best,
                "bias_best": tr.bias_best, "best_step": tr.best_step}, out / "semobridge_t.pt")


# ---------------------------------------------------------------------------------------------------- report


def run_fewshot_report(ctx: Any) -> dict:
    """Mean +- population std over seeds per method x shots, paired differences, curves and bias norms."""
    cfg: FewshotConfig = ctx.cfg.fewshot
    runs = []
    for k in cfg.shots:
        for s in cfg.seeds:
            p = ctx.inp(seed_out(k, s)) / "results.json"
            if not p.exists():
                raise FileNotFoundError(f"{p} missing: run the few-shot stage for shots={k}, seed={s} first")
            runs.append(json.loads(p.read_text()))
    table = aggregate(runs)
    metrics = {"test_acc": table, "val_acc": aggregate(runs, "val_acc"), "paired_test_diff": paired_differences(runs)}
    bridge_meta = ctx.inp(BRIDGE_OUT) / "bridge.json"
    if bridge_meta.exists():
        meta = json.loads(bridge_meta.read_text())
        metrics["bridge"] = {k: v for k, v in meta.items() if k != "singular_values"}
    _write_json(ctx.out("metrics/fewshot.json"), metrics)

    methods = list(table)
    rows = [[k, m, table[m][str(k)]["mean"], table[m][str(k)]["std"]]
            for k in cfg.shots for m in methods if str(k) in table[m]]
    write_csv(ctx.out("plots/fewshot_accuracy.csv"), ["shots", "method", "accuracy", "std"], rows)
    _report_curves(ctx, cfg)
    out = ctx.out(REPORT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "summary.json", {"runs": len(runs), "methods": methods})
    return {m: {k: round(v["mean"], 3) for k, v in table[m].items()} for m in methods}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _report_curves(ctx: Any, cfg: FewshotConfig) -> None:
    """Training curve: mean over seeds at the largest shot count; bias norms (last step): per class and shot count,
    mean over seeds."""
    k_max = max(cfg.shots)
    curves = [_read_csv(p) for s in cfg.seeds if (p := ctx.inp(seed_out(k_max, s)) / "curves.csv").exists()]
    header = ["step", "lr", "total", "img", "txte", "txtp", "cons", "bias", "val_acc"]
    rows = []
    if curves:
        for i in range(min(len(c) for c in curves)):
            row = [int(curves[0][i]["step"])]
            for col in header[1:]:
                vals = [float(c[i][col]) for c in curves if c[i].get(col) not in (None, "", "nan")]
                row.append(float(np.mean(vals)) if vals else "")
            rows.append(row)
    write_csv(ctx.out("plots/fewshot_train_curve.csv"), header, rows)
    per_shot: dict[int, list[list[float]]] = {}
    for k in cfg.shots:
        for s in cfg.seeds:
            p = ctx.inp(seed_out(k, s)) / "bias_norms.csv"
            if p.exists():
                vals = [float(r["norm"]) for r in _read_csv(p)]
                if vals:
                    per_shot.setdefault(k, []).append(vals)
    n_cls = min((len(v) for runs in per_shot.values() for v in runs), default=0)
    brows = [[c, k, float(np.mean([v[c] for v in per_shot[k]]))] for k in sorted(per_shot) for c in range(n_cls)]
    write_csv(ctx.out("plots/fewshot_bias_norms.csv"), ["class", "shots", "norm"], brows)
