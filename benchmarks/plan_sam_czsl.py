"""The SAM-CZSL suite at the published sizes: what `bridgeflow plan --profile sam_czsl` counts for UT-Zappos,
MIT-States and C-GQA (images encoded, LoRA image-steps, feature disk, and with `--probe` the time). JSON.

    python benchmarks/plan_sam_czsl.py [--probe] [--out F]

Each benchmark is written to a temporary folder in the standard CZSL layout with its published counts (specs/czsl.md
1.3: attributes, objects, seen/unseen pairs per split, images per split) and generated names; no image exists or is
opened, the plan reads the pair files and the metadata only. `--probe` times ViT-L/14 (random weights) on this
machine's device.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import emit, plan_parser, plan_summary  # noqa: E402  (benchmarks/, the script's folder)

#: the profile's entry names and the release folder whose published sizes (`czsl.sizes.EXPECTED_SIZES`) they take
BENCHMARKS = {"ut_zappos": "ut-zappos", "mit_states": "mit-states", "cgqa": "cgqa"}


def write_benchmark(folder: Path, sizes) -> None:  # sizes: czsl.sizes.ExpectedSizes
    """Pair files and metadata with the published counts: train pairs first, then each split's unseen pairs; its
    seen pairs are the first train pairs; images spread over each split's pairs in turn."""
    import torch

    grid = itertools.product(range(sizes.n_attrs), range(sizes.n_objs))
    pairs = [f"a{a} o{o}" for a, o in itertools.islice(grid, sizes.train_pairs + sizes.val_pairs[1]
                                                        + sizes.test_pairs[1])]
    train = pairs[:sizes.train_pairs]
    val = train[:sizes.val_pairs[0]] + pairs[sizes.train_pairs:sizes.train_pairs + sizes.val_pairs[1]]
    test = train[:sizes.test_pairs[0]] + pairs[sizes.train_pairs + sizes.val_pairs[1]:]
    split_dir = folder / "compositional-split-natural"
    split_dir.mkdir(parents=True)
    (folder / "images").mkdir()
    metadata = []
    for split, listed, images in (("train", train, sizes.train_images), ("val", val, sizes.val_images),
                                  ("test", test, sizes.test_images)):
        (split_dir / f"{split}_pairs.txt").write_text("".join(f"{p}\n" for p in listed))
        for i in range(images):
            attr, obj = listed[i % len(listed)].split()
            metadata.append({"image": f"{split}/{i}.jpg", "attr": attr, "obj": obj, "set": split})
    torch.save(metadata, folder / "metadata_compositional-split-natural.t7")


def main() -> None:
    parser = plan_parser(__doc__)
    args = parser.parse_args()

    from pipeline_lib.czsl.sizes import EXPECTED_SIZES
    from pipeline_lib.datasets.config import CzslDataset
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.plan.build import build_plan

    cfg = load_config(REPO, "sam_czsl")
    with tempfile.TemporaryDirectory() as tmp:
        entries = {}
        for name, release in BENCHMARKS.items():
            write_benchmark(Path(tmp) / release, EXPECTED_SIZES[release])
            entries[name] = CzslDataset(**{**cfg.datasets.czsl[name].model_dump(), "root": str(Path(tmp) / release)})
        cfg = cfg.model_copy(update={"datasets": cfg.datasets.model_copy(update={"czsl": entries})})
        start = time.perf_counter()
        plan = build_plan(Path(tmp), cfg, ["czsl"], with_probe=args.probe)
        seconds = time.perf_counter() - start
    rows = {r["instance"]: r for r in plan.rows if "@" in r["instance"]}
    result = {
        "backbone": cfg.backbone.model, "mode": cfg.czsl.mode, "seeds": list(cfg.czsl.seeds),
        "patch_tokens": cfg.features.patch_tokens,
        "instances": {k: {"work": r["work"], "disk_bytes": r["disk_bytes"], "seconds": r["seconds"], "note": r["note"]}
                      for k, r in rows.items()},
        "totals": plan.totals(),
        **plan_summary(plan, seconds),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
