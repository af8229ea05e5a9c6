"""Benchmark: one 1000-trial SeMoBridge blend search (spec 4) at ImageNet shape on random class-structured features.
Prints one JSON object: time in the sampler (and Optuna's study machinery) vs in the objective (BlendEvaluator),
CPU time (time.process_time, single thread by default) next to wall time, and the shape used.

    python benchmarks/search.py                         # 1000 classes, 50k val queries, sampler from SearchConfig
    python benchmarks/search.py --sampler optuna_tpe    # Optuna's own TPESampler with 4.4's defaults, for comparison
    python benchmarks/search.py --val 5000 --trials 200 # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch
from semobridge_t import make_features  # the sibling benchmark's synthetic features (run as a script)

from pipeline_lib.fewshot.bridge import bridged_prototypes, fit_bridge, image_prototypes
from pipeline_lib.fewshot.config import SearchConfig
from pipeline_lib.fewshot.logits import BlendEvaluator, kl_bits, similarity_maps
from pipeline_lib.fewshot.search import search_blend


class Clock:
    """Accumulated CPU and wall seconds of the calls it wraps."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - c0
                self.wall += time.perf_counter() - w0
        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--val", type=int, default=50000, help="val queries the search scores every trial")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--views", type=int, default=2, help="views per shot (E + 1)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--sampler", default=None, help="fewshot.search.sampler (default: the SearchConfig default)")
    ap.add_argument("--subset", default="all", help="logit subset searched")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for maps and evaluator build")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s_cfg = SearchConfig(n_trials=args.trials, **({"sampler": args.sampler} if args.sampler else {}))
    feats = make_features(args.classes, args.shots, args.views, args.dim, args.val)
    fit = fit_bridge(feats["w_txt"], feats["eos_raw"], 0.3)
    proto = image_prototypes(feats["support"])
    kl = kl_bits(proto, feats["text_proj"])
    p_hat = bridged_prototypes(feats["support"], fit.pinv, feats["w_txt"], fit.scale)[0]

    prep = Clock()
    maps = prep.wrap(similarity_maps)(feats["val"], feats["text_proj"], proto, p_hat, fit.pinv, feats["w_txt"])
    ev = prep.wrap(BlendEvaluator)(maps.s1, maps.s2, maps.s3, kl, feats["val_labels"], args.subset,
                                   tuple(s_cfg.prune_topk), s_cfg.prune_kl_topk, s_cfg.chunk_queries)
    objective = Clock()
    ev.accuracy = objective.wrap(ev.accuracy)  # search_blend calls evaluator.accuracy once per trial
    search = Clock()
    r = search.wrap(search_blend)(ev, s_cfg, seed=args.seed)
    out = {
        "shape": {"classes": args.classes, "val_queries": args.val, "dim": args.dim, "subset": args.subset},
        "sampler": s_cfg.sampler, "trials": args.trials, "threads": torch.get_num_threads(),
        "cpu_s": {"maps_and_evaluator_build": round(prep.cpu, 2), "objective": round(objective.cpu, 2),
                  "sampler_and_optuna": round(search.cpu - objective.cpu, 2), "total": round(prep.cpu + search.cpu, 2)},
        "wall_s": {"maps_and_evaluator_build": round(prep.wall, 2), "objective": round(objective.wall, 2),
                   "sampler_and_optuna": round(search.wall - objective.wall, 2),
                   "total": round(prep.wall + search.wall, 2)},
        "ms_per_trial_cpu": {"objective": round(1000 * objective.cpu / args.trials, 2),
                             "sampler_and_optuna": round(1000 * (search.cpu - objective.cpu) / args.trials, 2)},
        "best_val_acc": r.val_acc, "best_trial": r.best_trial,
        "levels": [lev.width for lev in ev.levels],
        "level_rows_per_trial": [round(x / args.trials, 1) for x in ev.level_rows],
        "full_rescore_fraction": round(r.full_rescore_fraction, 5),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "load_average_1m_end": os.getloadavg()[0],  # other processes sharing the cores inflate wall times
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
