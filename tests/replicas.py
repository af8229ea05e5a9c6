"""Tiny replicas of the real datasets' on-disk layouts, with their real folder, file and class names.

Each writer makes a few small images per class in exactly the layout the real dataset ships in (CoOp split files
with their real names and structure, ImageNet's wnid folders and `classnames.txt`, FGVC-Aircraft's variant lists),
so a suite profile runs end to end on them: the tests check wiring and caching, never accuracy.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

#: CoOp datasets with a split file: folder -> (split file, image dir, two real class names, relpath of image i).
COOP: dict[str, tuple[str, str, tuple[str, str], str]] = {
    "caltech-101": ("split_zhou_Caltech101.json", "101_ObjectCategories", ("accordion", "yin_yang"),
                    "{cls}/image_{i:04d}.jpg"),
    "oxford_pets": ("split_zhou_OxfordPets.json", "images", ("abyssinian", "american_bulldog"), "{cls}_{i}.jpg"),
    "stanford_cars": ("split_zhou_StanfordCars.json", "", ("2000 AM General Hummer SUV", "2012 Acura RL Sedan"),
                      "cars_{split}/{n:05d}.jpg"),
    "oxford_flowers": ("split_zhou_OxfordFlowers.json", "jpg", ("pink primrose", "hard-leaved pocket orchid"),
                       "image_{n:05d}.jpg"),
    "food-101": ("split_zhou_Food101.json", "images", ("apple_pie", "baby_back_ribs"), "{cls}/{n}.jpg"),
    "sun397": ("split_zhou_SUN397.json", "SUN397", ("abbey", "airplane cabin"), "a/{slug}/sun_{n:06d}.jpg"),
    "dtd": ("split_zhou_DescribableTextures.json", "images", ("banded", "blotchy"), "{cls}/{cls}_{i:04d}.jpg"),
    "eurosat": ("split_zhou_EuroSAT.json", "2750", ("Annual Crop Land", "Herbaceous Vegetation Land"),
                "{slug}/{slug}_{i}.jpg"),
    "ucf101": ("split_zhou_UCF101.json", "UCF-101-midframes", ("Apply_Eye_Makeup", "Apply_Lipstick"),
               "{cls}/v_{slug}_g01_c{i:02d}.jpg"),
}
IMAGENET_CLASSES = (("n01440764", "tench"), ("n01530575", "brambling"), ("n01608432", "kite (bird of prey)"))
FGVC_VARIANTS = ("707-320", "A300B4", "DHC-8-100")
#: images per class in each split (train covers the largest shot count the tests use)
SIZES = {"train": 4, "val": 1, "test": 2}


def _image(path: Path, label: int, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), ((70 * label + 40) % 256, (25 * i) % 256, 128)).save(path, "JPEG")


def write_coop(root: Path, folder: str) -> Path:
    """One CoOp dataset at root/folder: images and its split_zhou_<Name>.json, {split: [[relpath, label, name]]}."""
    split_file, image_dir, classes, pattern = COOP[folder]
    base = root / folder
    split, n = {}, 0
    for name, per_class in SIZES.items():
        entries = []
        for label, cls in enumerate(classes):
            for i in range(per_class):
                n += 1
                slug = cls.replace(" ", "")
                rel = pattern.format(cls=cls, i=i + 10 * (name != "train"), n=n, split=name, slug=slug)
                _image(base / image_dir / rel, label, i)
                entries.append([rel, label, cls])
        split[name] = entries
    (base / split_file).write_text(json.dumps(split))
    return base


def write_imagenet(root: Path) -> Path:
    """imagenet/images/{train,val}/<wnid>/*.JPEG and classnames.txt ("<wnid> <name>")."""
    base = root / "imagenet"
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for i in range(SIZES["train"]):
            _image(base / "images/train" / wnid / f"{wnid}_{i}.JPEG", label, i)
        for i in range(SIZES["test"]):
            _image(base / "images/val" / wnid / f"ILSVRC2012_val_{label:04d}{i:04d}.JPEG", label, i)
    (base / "classnames.txt").write_text("".join(f"{wnid} {name}\n" for wnid, name in IMAGENET_CLASSES))
    return base


def write_fgvc(root: Path) -> Path:
    """fgvc_aircraft/images/<id>.jpg, variants.txt and images_variant_<split>.txt ("<id> <variant>")."""
    base = root / "fgvc_aircraft"
    (base / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("".join(f"{v}\n" for v in FGVC_VARIANTS))
    n = 1000000
    for split, per_class in SIZES.items():
        lines = []
        for label, variant in enumerate(FGVC_VARIANTS):
            for i in range(per_class):
                n += 1
                _image(base / "images" / f"{n}.jpg", label, i)
                lines.append(f"{n} {variant}\n")
        (base / f"images_variant_{split}.txt").write_text("".join(lines))
    return base


#: CUB-200-2011: (class folder, image-name stem) of two real classes; 3 images each, the first two train
CUB_CLASSES = (("001.Black_footed_Albatross", "Black_Footed_Albatross"), ("002.Laysan_Albatross", "Laysan_Albatross"))
CUB_IMAGES = 3


def write_cub(root: Path) -> Path:
    """CUB_200_2011/ as released: images/<nnn.Class>/<Name>_<n>_<id>.jpg and its four id listings."""
    base = root / "CUB_200_2011"
    lists: dict[str, list[str]] = {"images": [], "image_class_labels": [], "train_test_split": []}
    n = 0
    for label, (folder, stem) in enumerate(CUB_CLASSES):
        for i in range(CUB_IMAGES):
            n += 1
            rel = f"{folder}/{stem}_{i + 1:04d}_{796000 + n}.jpg"
            _image(base / "images" / rel, label, i)
            lists["images"].append(f"{n} {rel}")
            lists["image_class_labels"].append(f"{n} {label + 1}")
            lists["train_test_split"].append(f"{n} {int(i < 2)}")
    for name, lines in lists.items():
        (base / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (base / "classes.txt").write_text("".join(f"{c + 1} {folder}\n" for c, (folder, _) in enumerate(CUB_CLASSES)))
    return base


#: Stanford Online Products: super-category folders and products (class ids from 1 over train, then test)
SOP_PRODUCTS = {"train": (("bicycle_final", 1), ("cabinet_final", 2)), "test": (("chair_final", 3), ("sofa_final", 4))}
SOP_IMAGES = 2  # per product


def write_sop(root: Path) -> Path:
    """Stanford_Online_Products/ as released: <super>_final/<product>_<n>.JPG and Ebay_{train,test}.txt listings."""
    base = root / "Stanford_Online_Products"
    n = 0
    for split, products in SOP_PRODUCTS.items():
        lines = ["image_id class_id super_class_id path"]
        for s, (folder, class_id) in enumerate(products):
            for i in range(SOP_IMAGES):
                n += 1
                rel = f"{folder}/{111085122870 + class_id}_{i}.JPG"
                _image(base / rel, class_id, i)
                lines.append(f"{n} {class_id} {s + 1} {rel}")
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_semobridge_datasets(data: Path) -> list[Path]:
    """Every dataset of the SeMoBridge suite under `data/` (the profile's roots are data/<folder>)."""
    return [write_imagenet(data), write_fgvc(data), *(write_coop(data, folder) for folder in COOP)]


#: CZSL benchmarks: root folder -> (attrs, objs, image path of (attr, obj, i)), with their real name styles: MIT-States
#: pair folders as released ("adj noun", with a space), UT-Zappos labels with dots, C-GQA names with underscores and
#: flat numbered images.
CZSL: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "mit-states": (("ancient", "broken", "dented"), ("building", "bottle", "car"), "{attr} {obj}/image_{n}.jpg"),
    "ut-zappos": (("Faux.Fur", "Leather", "Suede"), ("Boots.Ankle", "Shoes.Flats", "Sandals"),
                  "{attr}_{obj}/{n}.3.jpg"),
    "cgqa": (("dark_brown", "wooden", "parked"), ("traffic_light", "fire_hydrant", "table"), "{n}.jpg"),
}
#: pair indices (attr, obj) per split file, in file order: val and test list one seen pair and two unseen ones, and
#: every unseen pair's attribute and object occur in the seen pairs
CZSL_PAIRS = {"train": ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2)), "val": ((0, 0), (2, 0), (1, 0)),
              "test": ((1, 1), (0, 2), (2, 1))}
CZSL_IMAGES_PER_PAIR = 2


def write_czsl(root: Path, folder: str) -> Path:
    """One CZSL benchmark at root/folder in the standard layout: compositional-split-natural/<split>_pairs.txt,
    metadata_compositional-split-natural.t7 (a torch-saved list of {image, attr, obj, set}) and images/."""
    import torch

    attrs, objs, pattern = CZSL[folder]
    base = root / folder
    (base / "compositional-split-natural").mkdir(parents=True, exist_ok=True)
    metadata, n = [], 0
    for split, pairs in CZSL_PAIRS.items():
        lines = "".join(f"{attrs[a]} {objs[o]}\n" for a, o in pairs)
        (base / "compositional-split-natural" / f"{split}_pairs.txt").write_text(lines)
        for a, o in pairs:
            for i in range(CZSL_IMAGES_PER_PAIR):
                n += 1
                rel = pattern.format(attr=attrs[a], obj=objs[o], n=1000 + n)
                _image(base / "images" / rel, 3 * a + o, i)
                metadata.append({"image": rel, "attr": attrs[a], "obj": objs[o], "set": split})
    torch.save(metadata, base / "metadata_compositional-split-natural.t7")
    return base


def write_sam_czsl_datasets(data: Path) -> list[Path]:
    """Every dataset of the SAM-CZSL suite under `data/` (the profile's roots are data/<folder>)."""
    return [write_czsl(data, folder) for folder in CZSL]


#: Caption files in Karpathy's layout: folder -> (file, image file-name pattern, the split the profile reads).
KARPATHY = {"coco": ("dataset_coco.json", "COCO_val2014_{n:012d}.jpg", "test"),
            "flickr30k": ("dataset_flickr30k.json", "{n}.jpg", "val")}
KARPATHY_IMAGES = 3  # per split; 5 captions each, as released


def write_karpathy(root: Path, folder: str) -> Path:
    """Karpathy's caption file (`images`: filename, split, sentences with `raw` and `tokens`); images are not needed,
    text retrieval reads captions only."""
    name, pattern, _ = KARPATHY[folder]
    images = []
    for s, split in enumerate(("train", "val", "test")):
        for i in range(KARPATHY_IMAGES):
            n = 100 * s + i
            raws = [f"A {('red', 'blue', 'green')[i]} thing number {j} seen in the {split} set." for j in range(5)]
            images.append({"filepath": "val2014" if folder == "coco" else "", "filename": pattern.format(n=n),
                           "imgid": n, "split": split,
                           "sentences": [{"raw": r, "tokens": r.lower().rstrip(".").split(), "imgid": n}
                                         for r in raws]})
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    (base / name).write_text(json.dumps({"images": images, "dataset": folder}))
    return base


#: Revisited Oxford / Paris: database and query image names as released (`<search term>_<number>`), and the
#: ground truth of each query (`gnd` entries; some lists numpy arrays, as older pickles hold them)
REVISITED_DATABASE = [
    "all_souls_000013", "all_souls_000026", "radcliffe_camera_000519", "radcliffe_camera_000523", "ashmolean_000007",
    "ashmolean_000058", "oxford_000317", "bodleian_000108", "christ_church_000179", "magdalen_000078",
    "hertford_000015", "cornmarket_000047",
]
REVISITED_QUERIES = ["all_souls_000091", "radcliffe_camera_000095", "ashmolean_000269"]
REVISITED_GND = [
    {"bbx": [136.5, 34.1, 648.5, 955.2], "easy": [0, 1], "hard": [11], "junk": [6]},
    {"bbx": np.array([20.0, 30.0, 400.0, 500.0]), "easy": [2], "hard": np.array([3]), "junk": []},
    {"bbx": [1.0, 2.0, 3.0, 4.0], "easy": np.array([4, 5], dtype=np.int64), "hard": [], "junk": [np.int64(7)]},
]


def write_revisited(root: Path, name: str, gnd: list[dict] | None = None) -> Path:
    """A tiny `<root>/<name>` folder in the published layout: gnd_<name>.pkl and 8x8 JPEGs under jpg/."""
    folder = root / name
    (folder / "jpg").mkdir(parents=True)
    for i, image in enumerate(REVISITED_DATABASE + REVISITED_QUERIES):
        _image(folder / "jpg" / f"{image}.jpg", i % 3, i)
    with (folder / f"gnd_{name}.pkl").open("wb") as f:
        names = {"imlist": REVISITED_DATABASE, "qimlist": REVISITED_QUERIES}
        pickle.dump({**names, "gnd": REVISITED_GND if gnd is None else gnd}, f)
    return folder


#: The seven NanoBEIR sets of the Cross-the-Gap suite, by their hub folder names.
NANOBEIR = ("NanoClimateFEVER", "NanoDBPedia", "NanoFEVER", "NanoNFCorpus", "NanoNQ", "NanoSCIDOCS", "NanoSciFact")


def write_cross_the_gap_datasets(data: Path) -> list[Path]:
    """Every dataset of the Cross-the-Gap suite under `data/` (the profile's paths are data/<folder>[/<file>]): the
    SeMoBridge suite's 11 image datasets (their test images query their train images), CUB, SOP, ROxford5k,
    RParis6k, the caption files, IMDB, 20 Newsgroups and the NanoBEIR sets."""
    from replica_texts import write_imdb, write_nanobeir, write_newsgroups, write_nocaps

    images = [*write_semobridge_datasets(data), write_cub(data), write_sop(data),
              *(write_revisited(data, name) for name in ("roxford5k", "rparis6k"))]
    texts = [*(write_karpathy(data, folder) for folder in KARPATHY), write_nocaps(data), write_imdb(data),
             write_newsgroups(data), *(write_nanobeir(data, name) for name in NANOBEIR)]
    return [*images, *texts]
