"""All few-shot methods side by side on the same cached features, and their aggregation over seeds.

Methods (each a registry entry, spec 4-6 plus controls):
- zero_shot: CLIP, argmax q.T_proj.
- prototype: intra-modal, argmax q.P.
- control: zero-shot + prototype blend (z1 with s2 := q.P, KL-weighted), searched with the same budget and ranges:
  what SeMoBridge must beat for the bridge itself to matter.
- semobridge_<subset>: training-free SeMoBridge with the z1/z2/z3/all subsets, searched on val.
- semobridge_t: SeMoBridge-T with the searched blend of fewshot.logits.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pipeline_lib.engine.parallel import torch_threads
from pipeline_lib.fewshot.bridge import BridgeFit, bridged_prototypes, image_prototypes
from pipeline_lib.fewshot.config import FewshotConfig
from pipeline_lib.fewshot.logits import (
    BlendEvaluator,
    SimilarityMaps,
    accuracy,
    batched_accuracy,
    kl_bits,
    similarity_maps,
)
from pipeline_lib.fewshot.search import SearchResult, search_blend
from pipeline_lib.fewshot.train import InitValidator, TrainResult, train_semobridge_t

log = logging.getLogger(__name__)

# Paired differences reported over seeds: (method, baseline).
PAIRS: tuple[tuple[str, str], ...] = (
    ("semobridge_all", "control"),
    ("semobridge_all", "zero_shot"),
    ("semobridge_t", "semobridge_all"),
    ("semobridge_t", "control"),
)


@dataclass
class FewshotInputs:
    """Cached features for one (shots, seed): support (C, K', D_p) raw; val/test raw features and labels."""

    support: torch.Tensor
    text_proj: torch.Tensor  # (C, D_p) T_proj
    text_eos: torch.Tensor  # (C, D_t) T_eos
    w_txt: torch.Tensor  # (D_t, D_p)
    val_raw: torch.Tensor
    val_labels: torch.Tensor
    test_raw: torch.Tensor
    test_labels: torch.Tensor


@dataclass
class SeedResult:
    """Per-method val/test accuracy (%) plus what the curves and bias plots need."""

    methods: dict[str, dict] = field(default_factory=dict)
    train: TrainResult | None = None
    searches: dict[str, SearchResult] = field(default_factory=dict)


def _searched(name: str, val: SimilarityMaps, test: SimilarityMaps, kl: torch.Tensor, inp: FewshotInputs,
              subset: str, cfg: FewshotConfig, seed: int, out: SeedResult) -> None:
    """Search on val, apply once to test, record under `name`."""
    s = cfg.search
    ev = BlendEvaluator(val.s1, val.s2, val.s3, kl, inp.val_labels, subset, tuple(s.prune_topk), s.prune_kl_topk,
                        s.chunk_queries)
    res = search_blend(ev, s, seed)
    row = torch.tensor([res.params.as_tuple()])
    test_acc = float(batched_accuracy(test, kl, inp.test_labels, row, subset)[0])
    out.searches[name] = res
    out.methods[name] = {"val_acc": res.val_acc, "test_acc": test_acc, "subset": subset, **res.summary()}


def training_free(inp: FewshotInputs, fit: BridgeFit, cfg: FewshotConfig, seed: int) -> SeedResult:
    """Zero-shot, prototype, the control blend and the training-free SeMoBridge subsets, searched on val."""
    out = SeedResult()
    img_proto = image_prototypes(inp.support)  # (C, D_p)
    kl = kl_bits(img_proto, inp.text_proj)  # (C,)
    p_hat = bridged_prototypes(inp.support, fit.pinv, inp.w_txt, fit.scale)[0]  # (C, D_p)
    val = similarity_maps(inp.val_raw, inp.text_proj, img_proto, p_hat, fit.pinv, inp.w_txt)
    test = similarity_maps(inp.test_raw, inp.text_proj, img_proto, p_hat, fit.pinv, inp.w_txt)

    def plain(attr: str) -> dict[str, float]:
        return {"val_acc": accuracy(getattr(val, attr), inp.val_labels),
                "test_acc": accuracy(getattr(test, attr), inp.test_labels)}

    out.methods["zero_shot"] = plain("s1")
    out.methods["prototype"] = plain("s4")
    _searched("control", replace(val, s2=val.s4), replace(test, s2=test.s4), kl, inp, "z1+z2", cfg, seed, out)
    for subset in cfg.subsets:
        _searched(f"semobridge_{subset}", val, test, kl, inp, subset, cfg, seed, out)
    return out


def trained(inp: FewshotInputs, fit: BridgeFit, cfg: FewshotConfig, seed: int,
            device: torch.device | str = "cpu") -> SeedResult:
    """SeMoBridge-T: train on the support views (on `device`), then search its blend on val and test once."""
    out = SeedResult()
    torch.manual_seed(seed)
    img_proto = image_prototypes(inp.support)  # (C, D_p)
    kl = kl_bits(img_proto, inp.text_proj)  # (C,)
    t = cfg.training
    dev = torch.device(device)

    def mv(x: torch.Tensor) -> torch.Tensor:
        return x.to(dev)

    validator = (InitValidator(mv(inp.val_raw), mv(inp.val_labels), mv(inp.text_proj), mv(img_proto), mv(kl), t.init,
                               cfg.logits, cfg.search.chunk_queries) if t.validate_every else None)
    tr = train_semobridge_t(mv(inp.support), mv(inp.w_txt), mv(fit.pinv), fit.scale, mv(inp.text_proj),
                            mv(inp.text_eos), t, validator)
    out.train = tr
    proto_pinv, proto_bias, query_pinv = tr.inference_weights(t.final_model, t.checkpoint_mixing)
    with torch.no_grad():
        p_hat_t = bridged_prototypes(inp.support, proto_pinv, inp.w_txt, fit.scale, proto_bias)[0]  # (C, D_p)
        val_t = similarity_maps(inp.val_raw, inp.text_proj, img_proto, p_hat_t, query_pinv, inp.w_txt)
        test_t = similarity_maps(inp.test_raw, inp.text_proj, img_proto, p_hat_t, query_pinv, inp.w_txt)
    _searched("semobridge_t", val_t, test_t, kl, inp, cfg.logits, cfg, seed, out)
    out.methods["semobridge_t"].update(best_step=tr.best_step, best_val_init_acc=tr.best_val_acc,
                                       train_seconds=round(tr.seconds, 3))
    return out


def evaluate_seed(inp: FewshotInputs, fit: BridgeFit, cfg: FewshotConfig, seed: int,
                  device: torch.device | str = "cpu", pool: Executor | None = None) -> SeedResult:
    """Every method for one (shots, seed): training-free, then SeMoBridge-T if cfg.run_training.

    With a `pool` (a worker process) the training-free searches run there while SeMoBridge-T trains here (the two
    share nothing; the searches give the same results either way). `device` runs the training (matmul-bound) there;
    the searches and evaluation stay on CPU.
    """
    if not cfg.run_training:
        return training_free(inp, fit, cfg, seed)
    if pool is None:
        free = training_free(inp, fit, cfg, seed)
        t_part = trained(inp, fit, cfg, seed, device)
    else:
        # The worker gets copies: pickling a tensor for a process pool moves its storage into shared memory (torch's
        # reducers), in the pool's feeder thread, while the training below reads the same tensors: a race that
        # changed SeMoBridge-T's results now and then.
        future = pool.submit(training_free, copy.deepcopy(inp), copy.deepcopy(fit), cfg, seed)
        with torch_threads(torch.get_num_threads() - 1):
            t_part = trained(inp, fit, cfg, seed, device)
        free = future.result()
    free.methods.update(t_part.methods)
    free.searches.update(t_part.searches)
    free.train = t_part.train
    return free


def mean_std(values: list[float]) -> dict:
    """Mean and population std (np.std, ddof=0) as the paper reports them."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=0)), "n": int(a.size)}


def aggregate(runs: list[dict], key: str = "test_acc") -> dict[str, dict[str, dict]]:
    """{method: {shots: mean/std/n}} from run records {"shots", "seed", "methods": {name: {key: ...}}}."""
    table: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        for name, m in r["methods"].items():
            table.setdefault(name, {}).setdefault(int(r["shots"]), []).append(float(m[key]))
    return {name: {str(k): mean_std(v) for k, v in sorted(by.items())} for name, by in table.items()}


def paired_differences(runs: list[dict], pairs: tuple[tuple[str, str], ...] = PAIRS,
                       key: str = "test_acc") -> dict[str, dict[str, dict]]:
    """Per-seed differences method - baseline (same shots, same seed), as mean/std over seeds per shot."""
    out: dict[str, dict[str, dict]] = {}
    for a, b in pairs:
        by_shot: dict[int, list[float]] = {}
        for r in runs:
            m = r["methods"]
            if a in m and b in m:
                by_shot.setdefault(int(r["shots"]), []).append(float(m[a][key]) - float(m[b][key]))
        if by_shot:
            out[f"{a}-minus-{b}"] = {str(k): mean_std(v) for k, v in sorted(by_shot.items())}
    return out
