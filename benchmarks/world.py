"""Does the embedded world measure what the methods claim to improve? Baseline-only numbers, printed as JSON.

Run after `dvc repro features features_fewshot` (data, backbone and features published), before any method row:

    python benchmarks/world.py [--root .] [--seeds 0 1 2 3 4]

It trains only the CZSL baseline row (CLS, frozen backbone) once per seed and reports, for the closed world, test
S / U / attribute / object accuracy, test and val AUC, and the composition checks of the split (pair counts, no
unseen pair singled out by one primitive). It also measures the intra-modal retrieval baselines that OTI and OVI
must beat (image->image on the few-shot test images, text->text on the paraphrase queries), so a benchmark at its
ceiling is caught before the methods run. `targets` says whether each world target holds:
no baseline accuracy above 0.9, AUC clear of 0 and 1, val AUC within 0.1 of test AUC (means over seeds; the
largest one-seed gap is reported beside), retrieval mAP in 0.3-0.85.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline_lib.backbone.load import load_published_backbone  # noqa: E402
from pipeline_lib.czsl.experiment import Backend, run_experiment  # noqa: E402
from pipeline_lib.czsl.inputs import load_splits, load_worlds  # noqa: E402
from pipeline_lib.czsl.stage import STORE as CZSL_STORE  # noqa: E402
from pipeline_lib.czsl.train import seed_everything  # noqa: E402
from pipeline_lib.data import vocab  # noqa: E402
from pipeline_lib.data.world import identifying_primitives  # noqa: E402
from pipeline_lib.diagnose.retrieval import retrieval_metrics  # noqa: E402
from pipeline_lib.engine.config import load_config  # noqa: E402
from pipeline_lib.engine.stages import StageInstance, get_stage  # noqa: E402


def instance_dir(root: Path, stage: str, **item: str) -> Path:
    """The published output folder of one stage instance (the shapes world's)."""
    return root / StageInstance(get_stage(stage), item).manifest_dir


def czsl_baseline(root: Path, cfg, seeds: list[int]) -> dict:
    """Baseline-row metrics per seed (closed world) and the split's composition checks."""
    czsl = cfg.czsl.model_copy(update={"rows": ("baseline",), "worlds": ("closed",)})
    bb = load_published_backbone(root / get_stage("backbone").manifest_dir, "cpu")
    bb.model.requires_grad_(False)
    data_root = root / get_stage("data").manifest_dir / vocab.CZSL_ROOT
    worlds = load_worlds(data_root, czsl, bb.model, bb.tokenizer)
    ds = worlds["closed"].ds
    splits = load_splits(instance_dir(root, "features_czsl", czsl_dataset="shapes") / CZSL_STORE, ds, czsl.mode)
    per_seed = {}
    for seed in seeds:
        seed_everything(seed)
        res = run_experiment(czsl, Backend(bb.model, bb.tokenizer, bb.preprocess), worlds, splits,
                             torch.device("cpu"), seed=seed).results["rows"]["baseline"]["closed"]
        per_seed[seed] = {k: round(float(res[k]), 4) for k in ("seen", "unseen", "attr_acc", "obj_acc", "auc", "hm")}
        per_seed[seed]["val_auc"] = round(float(res["val"]["auc"]), 4)
    unseen = {split: [p for p in ds.phase_pairs(split) if p not in set(ds.train_pairs)] for split in ("val", "test")}
    checks = {
        "compositions": len(ds.attrs) * len(ds.objs),
        "unseen_pairs": {s: len(u) for s, u in unseen.items()},
        "identifiable_unseen": {s: len(identifying_primitives(unseen[s], ds.phase_pairs(s))) for s in unseen},
    }
    return {"per_seed": per_seed, "split": checks}


def retrieval_baselines(root: Path) -> dict:
    """Intra-modal mAP that OTI (image->image) and OVI (text->text) must improve on, from the cached features."""
    from pipeline_lib.datasets.config import ImageRetrievalDataset
    from pipeline_lib.inversion.jobs import load_image_retrieval, load_text_retrieval

    image = load_image_retrieval(instance_dir(root, "features_fewshot", dataset="shapes"), ImageRetrievalDataset())
    text = load_text_retrieval(instance_dir(root, "features_text", text_dataset="shapes"))
    return {
        "image_to_image_map": round(float(retrieval_metrics(image.query, image.query_labels, image.gallery,
                                                            image.gallery_labels).map), 4),
        "text_to_text_map": round(float(retrieval_metrics(text.query, text.query_groups, text.gallery,
                                                          text.gallery_groups).map), 4),
    }


def summarise(czsl: dict, retrieval: dict) -> dict:
    runs = list(czsl["per_seed"].values())
    mean = {k: round(float(np.mean([r[k] for r in runs])), 4) for k in runs[0]}
    std = {k: round(float(np.std([r[k] for r in runs])), 4) for k in runs[0]}
    top = max(max(r[k] for k in ("seen", "unseen", "attr_acc", "obj_acc")) for r in runs)
    gap = abs(mean["val_auc"] - mean["auc"])  # the baseline's AUC is its mean over seeds
    worst = max(abs(r["val_auc"] - r["auc"]) for r in runs)
    split = czsl["split"]
    targets = {
        "compositions_at_least_60": split["compositions"] >= 60,
        "unseen_at_least_15_each": min(split["unseen_pairs"].values()) >= 15,
        "no_unseen_pair_identified_by_one_primitive": not any(split["identifiable_unseen"].values()),
        "no_baseline_accuracy_above_0.9": top <= 0.9,
        "auc_clear_of_0_and_1": 0.05 <= min(r["auc"] for r in runs) and max(r["auc"] for r in runs) <= 0.95,
        "val_auc_within_0.1_of_test": gap <= 0.1,
        "text_to_text_map_in_0.3_0.85": 0.3 <= retrieval.get("text_to_text_map", -1) <= 0.85,
        "image_to_image_map_below_0.99": retrieval["image_to_image_map"] < 0.99,
    }
    return {"czsl_baseline_mean": mean, "czsl_baseline_std": std, "max_baseline_accuracy": top,
            "val_test_auc_gap": round(gap, 4), "largest_val_test_auc_gap_of_one_seed": round(worst, 4),
            "targets": targets, "meets_targets": all(targets.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: czsl.seeds from params")
    args = parser.parse_args()
    t0 = time.perf_counter()
    cfg = load_config(args.root)
    czsl = czsl_baseline(args.root, cfg, args.seeds or list(cfg.czsl.seeds))
    retrieval = retrieval_baselines(args.root)
    data = cfg.data
    out = {"world": {"czsl_attributes": len(data.colours) * len(data.czsl_patterns), "shapes": len(data.shapes),
                     "czsl_hue_jitter_deg": data.czsl_hue_jitter_deg, "czsl_shade_jitter": data.czsl_shade_jitter},
           **czsl, "retrieval": retrieval, **summarise(czsl, retrieval),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
