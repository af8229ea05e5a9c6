"""The Cross-the-Gap suite at the published sizes: what `bridgeflow plan --profile cross_the_gap` counts for its 15
image-retrieval and 12 text-retrieval datasets (images and texts encoded, OTI / OVI query-steps, feature disk, and
with `--probe` the time). JSON.

    python benchmarks/plan_cross_the_gap.py [--probe] [--out F]

Each image dataset is written to a temporary folder as a CoOp split file with its published class, train, val and
test counts (CoOp's splits, the test counts of specs/semobridge.md 6, ImageNet's val as its test split; CUB's and
SOP's release splits; a revisited set's database as train and its 70 queries as test), each caption set as
Karpathy's json with its split's image count and 5 captions per image, and every other text set as a table with its
query and gallery counts (NanoBEIR: the corpus sizes of the hub's dataset cards). No image exists or is opened: the
plan reads split and text files only. `--probe` times ViT-B/32 (random weights) on this machine's device.
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

#: profile entry -> (classes, train, val, test images) of CoOp's split files (ImageNet: val 0, its val is the test)
IMAGE_SETS = {
    "imagenet": (1000, 1_281_167, 0, 50_000),
    "caltech101": (100, 4128, 1649, 2465),
    "oxford_pets": (37, 2944, 736, 3669),
    "stanford_cars": (196, 6509, 1635, 8041),
    "oxford_flowers": (102, 4093, 1633, 2463),
    "food101": (101, 50_500, 20_200, 30_300),
    "fgvc_aircraft": (100, 3334, 3333, 3333),
    "sun397": (397, 15_880, 3970, 19_850),
    "dtd": (47, 2820, 1128, 1692),
    "eurosat": (10, 13_500, 5400, 8100),
    "ucf101": (101, 7639, 1898, 3783),
    "cub": (200, 5994, 0, 5794),  # all / all: 11,788 queries
    "sop": (22_634, 59_551, 0, 60_502),  # test / test (its train images are not encoded)
    "roxford5k": (17, 4993, 0, 70),  # database / queries
    "rparis6k": (12, 6322, 0, 70),
}
#: profile entry -> (Karpathy file, split, images in it); 5 captions each: 1 query and 4 gallery texts per image
CAPTION_SETS = {"coco": ("dataset_coco.json", "test", 5000), "flickr30k": ("dataset_flickr30k.json", "val", 1014)}
#: profile entry -> (queries, gallery texts) of the other text sets
TEXT_SETS = {
    "nocaps": (4500, 40_500),  # val: 10 captions per image
    "imdb": (2, 50_000),
    "newsgroups": (20, 7532),  # the bydate test split
    "nano_climate_fever": (50, 3408), "nano_dbpedia": (50, 6045), "nano_fever": (50, 4996),
    "nano_nfcorpus": (50, 2953), "nano_nq": (50, 5035), "nano_scidocs": (50, 2210), "nano_scifact": (50, 2919),
}


def write_split(folder: Path, classes: int, sizes: tuple[int, int, int]) -> None:
    """A CoOp split file whose images spread over the classes in turn."""
    split = {name: [[f"{name}/{i}.jpg", i % classes, f"class{i % classes}"] for i in range(n)]
             for name, n in zip(("train", "val", "test"), sizes, strict=True) if n}
    (folder / "images").mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps(split))


def write_captions(path: Path, split: str, images: int) -> None:
    items = [{"filename": f"{i}.jpg", "imgid": i, "split": split,
              "sentences": [{"raw": f"caption {j} of image {i}"} for j in range(5)]} for i in range(images)]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": items}))


def write_table(path: Path, queries: int, gallery: int) -> None:
    """A text table (text, group, split) with `queries` query texts and `gallery` gallery texts over the queries."""
    import polars as pl

    rows = [(f"query {i}", i, "query") for i in range(queries)]
    rows += [(f"text {i}", i % queries, "gallery") for i in range(gallery)]
    path.parent.mkdir(parents=True)
    pl.DataFrame(rows, schema=["text", "group", "split"], orient="row").write_parquet(path)


def main() -> None:
    parser = plan_parser(__doc__)
    args = parser.parse_args()

    from pipeline_lib.datasets.config import ClassificationDataset, DatasetsConfig, TextRetrievalDataset
    from pipeline_lib.engine.config import load_config
    from pipeline_lib.plan.build import build_plan

    cfg = load_config(REPO, "cross_the_gap")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        classification = {}
        for name, (classes, *sizes) in IMAGE_SETS.items():
            write_split(root / name, classes, (sizes[0], sizes[1], sizes[2]))
            entry = cfg.datasets.classification[name]
            classification[name] = ClassificationDataset(root=str(root / name), split_file="split.json",
                                                         prompts=entry.prompts, templates=entry.templates,
                                                         train_features=entry.train_features)
        texts = {}
        for name, (file, split, images) in CAPTION_SETS.items():
            write_captions(root / name / file, split, images)
            texts[name] = TextRetrievalDataset(path=str(root / name / file), format="karpathy", split=split)
        for name, (queries, gallery) in TEXT_SETS.items():
            write_table(root / name / "texts.parquet", queries, gallery)
            texts[name] = TextRetrievalDataset(path=str(root / name / "texts.parquet"))
        datasets = DatasetsConfig(classification=classification, czsl={}, text_retrieval=texts,
                                  image_retrieval=dict(cfg.datasets.image_retrieval))
        cfg = cfg.model_copy(update={"datasets": datasets})
        start = time.perf_counter()
        plan = build_plan(root, cfg, ["oti", "ovi"], with_probe=args.probe)
        seconds = time.perf_counter() - start
    rows = {r["instance"]: r for r in plan.rows if r["instance"] not in ("data", "backbone")}
    totals: dict[str, int] = {}
    for row in rows.values():
        for kind, amount in row["work"].items():
            totals[kind] = totals.get(kind, 0) + amount
    emit({
        "instances": {name: {"work": r["work"], "disk_bytes": r["disk_bytes"], "seconds": r["seconds"]}
                      for name, r in rows.items()},
        "totals": {**totals, "disk_bytes": sum(r["disk_bytes"] for r in rows.values())},
        **plan_summary(plan, seconds),
    }, args.out)


if __name__ == "__main__":
    main()
