"""Few-shot extraction at ImageNet shape: what `bridgeflow plan` counts with support-only extraction, against
encoding every view of every train image (what the feature stage did before support extraction existed). JSON.

    python benchmarks/plan_imagenet.py [--views 4] [--shots 1 2 4 8 16] [--seeds 1 2 3] [--probe] [--out F]

A CoOp split file with ImageNet's shape (1000 classes, 1,281,167 train images, 50,000 val images as test, spec 1.2)
is written to a temporary folder; no image exists or is opened: the plan reads split files only. The dataset entry
sets `train_features: false`, as the SeMoBridge suite does for ImageNet. `--probe` also times the ViT-B/16
architecture (random weights) on this machine's device, for the hours column.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import emit, plan_parser, plan_summary  # noqa: E402  (benchmarks/, the script's folder)

TRAIN, TEST, CLASSES = 1_281_167, 50_000, 1000


def write_split(folder: Path) -> None:
    train, test = [], []
    for c in range(CLASSES):
        n = TRAIN // CLASSES + (1 if c < TRAIN % CLASSES else 0)
        train += [[f"train/n{c:08d}/{i}.JPEG", c, f"class{c}"] for i in range(n)]
        test += [[f"val/n{c:08d}/{i}.JPEG", c, f"class{c}"] for i in range(TEST // CLASSES)]
    (folder / "images").mkdir(parents=True)
    (folder / "split_imagenet_shape.json").write_text(json.dumps({"train": train, "test": test}))


def main() -> None:
    parser = plan_parser(__doc__)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()

    from pipeline_lib.datasets.config import ClassificationDataset, DatasetsConfig
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.plan.build import build_plan
    from pipeline_lib.plan.probe import IMAGE_FORWARD

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imagenet"
        write_split(folder)
        entry = ClassificationDataset(root=str(folder), split_file="split_imagenet_shape.json", prompts="ImageNet",
                                      train_features=False)
        cfg = load_config(REPO, overrides=(
            "backbone.model=ViT-B-16", f"features.views={args.views}", f"fewshot.shots={args.shots}",
            f"fewshot.seeds={args.seeds}"))
        only = DatasetsConfig(classification={"imagenet": entry}, image_retrieval={}, text_retrieval={}, czsl={})
        cfg = cfg.model_copy(update={"datasets": only})
        start = time.perf_counter()
        plan = build_plan(Path(tmp), cfg, ["features_fewshot", "support"], with_probe=args.probe)
        seconds = time.perf_counter() - start
    rows = {r["instance"]: r for r in plan.rows if "imagenet" in r["instance"]}
    support = {k: r["work"][IMAGE_FORWARD] for k, r in rows.items() if k.startswith("support@")}
    after = sum(support.values()) + rows["features_fewshot@imagenet"]["work"][IMAGE_FORWARD]
    before = TRAIN * args.views + TEST  # every train image's views, and the test images
    timed = [r["seconds"] for r in rows.values() if r["seconds"] is not None]
    result = {
        "shape": {"classes": CLASSES, "train": TRAIN, "test": TEST, "views": args.views, "shots": args.shots,
                  "seeds": args.seeds},
        "forwards_before": before,
        "forwards_after": after,
        "support_forwards": support,
        "features_fewshot_forwards": rows["features_fewshot@imagenet"]["work"][IMAGE_FORWARD],
        "ratio": round(before / after, 1),
        "disk_bytes_after": sum(r["disk_bytes"] for r in rows.values()),
        "estimated_seconds_after": sum(timed) if timed else None,
        **plan_summary(plan, seconds),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
