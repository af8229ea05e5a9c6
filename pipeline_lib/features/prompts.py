"""Prompt sets of SeMoBridge (spec 2.1): CoOp per-dataset templates, the 7 "select" ImageNet templates, CuPL JSON.

The features stage encodes these prompts into the text features every few-shot method reads, so this is the one place
they are defined. Keyed by the dataset directory names of spec 1.2 (and the CoOp class names as aliases), so a
real-data config can name either. The headline text set is `clip_ensemble,cupl_full`: every prompt of both,
concatenated per class.
"""

from __future__ import annotations

import json
from pathlib import Path

SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# dataset directory name -> (CoOp template, which clip_ensemble recipe: "both" | "custom" | "select")
DATASET_PROMPTS: dict[str, tuple[str, str]] = {
    "imagenet": ("a photo of a {}.", "select"),
    "imagenetv2": ("a photo of a {}.", "select"),
    "imagenet-sketch": ("a photo of a {}.", "select"),
    "imagenet-adversarial": ("a photo of a {}.", "select"),
    "imagenet-rendition": ("a photo of a {}.", "select"),
    "caltech-101": ("a photo of a {}.", "both"),
    "oxford_pets": ("a photo of a {}, a type of pet.", "both"),
    "stanford_cars": ("a photo of a {}.", "both"),
    "oxford_flowers": ("a photo of a {}, a type of flower.", "custom"),
    "food-101": ("a photo of {}, a type of food.", "both"),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", "both"),
    "sun397": ("a photo of a {}.", "both"),
    "dtd": ("{} texture.", "custom"),
    "eurosat": ("a centered satellite photo of {}.", "custom"),
    "ucf101": ("a photo of a person doing {}.", "both"),
    # The shapes world is custom-only: its pictures are flat drawings, and "origami"/"video game" prompts describe
    # styles its captions never used.
    "shapes": ("a photo of a {}.", "custom"),
}

ALIASES: dict[str, str] = {
    "ImageNet": "imagenet", "ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet-sketch",
    "ImageNetA": "imagenet-adversarial", "ImageNetR": "imagenet-rendition", "Caltech101": "caltech-101",
    "OxfordPets": "oxford_pets", "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers",
    "Food101": "food-101", "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd",
    "EuroSAT": "eurosat", "UCF101": "ucf101", "Shapes": "shapes",
}


def list_datasets() -> list[str]:
    """Dataset names with a known prompt recipe."""
    return list(DATASET_PROMPTS)


def _key(dataset: str) -> str:
    key = ALIASES.get(dataset, dataset)
    if key not in DATASET_PROMPTS:
        raise ValueError(f"dataset {dataset!r} has no prompt recipe; known: {list_datasets()} or {list(ALIASES)}")
    return key


def coop_template(dataset: str) -> str:
    """The CoOp hand-written template ("clip" prompt set)."""
    return DATASET_PROMPTS[_key(dataset)][0]


def clip_ensemble_templates(dataset: str) -> list[str]:
    """clip_ensemble: CoOp template + the 7 select ones; ImageNets only the 7; DTD/EuroSAT/Flowers only the custom."""
    template, recipe = DATASET_PROMPTS[_key(dataset)]
    if recipe == "select":
        return list(SELECT_TEMPLATES)
    if recipe == "custom":
        return [template]
    return [template, *SELECT_TEMPLATES]


def fill_templates(classnames: list[str], templates: list[str]) -> list[list[str]]:
    """Every template filled with every class name, per class; '_' -> ' ' as CoOp's readers do."""
    return [[t.format(c.replace("_", " ")) for t in templates] for c in classnames]


def cupl_key(classname: str) -> str:
    """The lookup key of a dataset class name in a CuPL file: lower-cased, '_' -> ' '."""
    return classname.replace("_", " ").lower()


def load_cupl(path: Path | str) -> dict[str, list[str]]:
    """Read a whole CuPL file {classname: [sentence, ...]}, keys lower-cased for lookup."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a JSON object of CuPL sentences ({e})") from e
    if not isinstance(raw, dict):
        raise TypeError(f"{path}: expected a JSON object {{classname: [sentence, ...]}}, got {type(raw).__name__}")
    for key, sentences in raw.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise TypeError(f"{path}: entry {key!r} must be a list of strings")
    return {str(k).lower(): list(v) for k, v in raw.items()}


def load_cupl_sentences(path: Path | str, classnames: list[str]) -> list[list[str]]:
    """CuPL sentences per class, in `classnames` order; a class missing from the file is an error naming it, since
    silently giving it fewer prompts would change its text feature."""
    table = load_cupl(path)
    out = []
    for name in classnames:
        key = cupl_key(name)
        if key not in table:
            raise KeyError(f"{path}: class {name!r} (looked up as {key!r}) is missing from the CuPL file")
        out.append(table[key])
    return out


def class_prompts(dataset: str, classnames: list[str], text_sets: str = "clip_ensemble",
                  cupl_path: Path | str | None = None) -> list[list[str]]:
    """All prompts per class for a comma-separated TEXTS spec (classname, aphotoofa, clip, clip_ensemble, cupl_full),
    concatenated in the order given. Template class names use '_' -> ' ' as CoOp's readers do."""
    names = [c.replace("_", " ") for c in classnames]
    per_class: list[list[str]] = [[] for _ in classnames]
    for part in [p.strip() for p in text_sets.split(",") if p.strip()]:
        if part == "classname":
            add = [[n] for n in names]
        elif part == "aphotoofa":
            add = [[f"a photo of a {n}"] for n in names]
        elif part == "clip":
            add = fill_templates(classnames, [coop_template(dataset)])
        elif part == "clip_ensemble":
            add = fill_templates(classnames, clip_ensemble_templates(dataset))
        elif part in ("cupl", "cupl_full"):
            if cupl_path is None:
                raise ValueError(f"text set {part!r} needs a CuPL JSON path")
            add = load_cupl_sentences(cupl_path, classnames)
        else:
            raise ValueError(f"text set {part!r}: expected classname, aphotoofa, clip, clip_ensemble or cupl_full")
        for c, prompts in enumerate(add):
            per_class[c].extend(prompts)
    return per_class
