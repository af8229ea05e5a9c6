"""Class-token vs patch-mean pooling in the tiny CLIP: held-out zero-shot per attribute over pretraining seeds (JSON).

Real open_clip ViTs pool a class token; the tiny default averages its patch tokens, which makes token 0 the patch
mean and changes what sparse alignment's max over tokens can do. This trains the tiny CLIP with the published
pretraining corpus and `backbone.train` exactly as the backbone stage does, changing only `pool_type` (and the seed),
so the foundation targets (held-out shape >= 0.6, the other attributes well above chance) can be checked per seed:

    python benchmarks/pooling.py [--pools tok avg] [--seeds 0 1] [--root .]

Each run takes as long as the backbone stage (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline_lib.backbone import tiny  # noqa: E402
from pipeline_lib.backbone.pretrain import init_tiny_backbone, load_corpus, pretrain  # noqa: E402
from pipeline_lib.engine.config import load_config  # noqa: E402
from pipeline_lib.engine.stages import get_stage  # noqa: E402


def variant(base: str, pool: str) -> str:
    """The base tiny architecture with `pool_type` = pool, registered with open_clip under its own name."""
    name = f"{base}-pool-{pool}"
    if name not in tiny.TINY_MODEL_CONFIGS:
        config = tiny.tiny_model_config(base)
        config["vision_cfg"]["pool_type"] = pool
        tiny.TINY_MODEL_CONFIGS[name] = config
    tiny.register_tiny_models()
    return name


def run(root: Path, pool: str, seed: int) -> dict:
    cfg = load_config(root).backbone
    train = cfg.train.model_copy(update={"seed": seed})
    corpus = load_corpus(root / get_stage("data").manifest_dir / "pretrain")
    name = variant(cfg.model, pool)
    backbone = init_tiny_backbone(name, seed, "cpu")
    with tempfile.TemporaryDirectory() as work:
        result = pretrain(backbone.model, backbone.tokenizer, corpus, train, Path(work), model_name=name,
                          device=torch.device("cpu"))
    return {"pool": pool, "seed": seed, "zero_shot": {k: round(v, 4) for k, v in result.zero_shot.items()},
            "chance": {k: round(v, 4) for k, v in result.chance.items()}, "seconds": round(result.seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--pools", nargs="+", default=["tok", "avg"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    t0 = time.perf_counter()
    runs = [run(args.root, pool, seed) for pool in args.pools for seed in args.seeds]
    meets = {pool: all(r["zero_shot"]["shape"] >= 0.6 for r in runs if r["pool"] == pool) for pool in args.pools}
    print(json.dumps({"runs": runs, "shape_at_least_0.6_every_seed": meets,
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
