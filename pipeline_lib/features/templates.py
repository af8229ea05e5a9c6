"""Prompt templates as data: the CoOp per-dataset template and the 7 "select" ImageNet templates (spec 2.1)."""

from __future__ import annotations

import json
from pathlib import Path

# CoOp's hand-written template per dataset ("{}" = class name).
COOP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a photo of {}, a type of food.",
    "UCF101": "a photo of a person doing {}.",
    "StanfordCars": "a photo of a {}.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "ImageNet": "a photo of a {}.",
    "Shapes": "a photo of a {}.",
}

# The 7 ImageNet templates CLIP's notebook selected; part of the "clip_ensemble" set.
SELECT_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# Datasets whose clip_ensemble is the custom template only / the 7 templates only (spec 2.1).
_CUSTOM_ONLY = {"DescribableTextures", "EuroSAT", "OxfordFlowers", "Shapes"}
_SELECT_ONLY = {"ImageNet"}


def default_templates(dataset_name: str) -> list[str]:
    """The clip_ensemble template list for a dataset.

    The shapes world is custom-only: its pictures are flat drawings, and "origami"/"video game" prompts describe
    styles its captions never used.
    """
    if dataset_name not in COOP_TEMPLATES:
        raise ValueError(
            f"features.fewshot.dataset_name={dataset_name!r} has no default template; known: "
            f"{sorted(COOP_TEMPLATES)}; or set features.templates explicitly"
        )
    if dataset_name in _SELECT_ONLY:
        return list(SELECT_IMAGENET_TEMPLATES)
    if dataset_name in _CUSTOM_ONLY:
        return [COOP_TEMPLATES[dataset_name]]
    return [COOP_TEMPLATES[dataset_name], *SELECT_IMAGENET_TEMPLATES]


def load_cupl(path: Path) -> dict[str, list[str]]:
    """Read a CuPL sentence file {classname: [sentence, ...]}, keys lower-cased for lookup."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"features.cupl_file={str(path)!r}: cannot read a JSON object of sentences ({e})") from e
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"features.cupl_file={str(path)!r}: expected {{classname: [sentence, ...]}}")
    return {str(k).lower(): [str(s) for s in v] for k, v in raw.items()}


def class_prompts(
    classnames: list[str], templates: list[str], cupl: dict[str, list[str]] | None = None
) -> list[list[str]]:
    """Prompts per class: every template filled, then the class's CuPL sentences (spec 2.1 concatenation order).

    CuPL keys are looked up lower-cased with "_" replaced by " "; a class missing from the file is an error, since
    silently giving it fewer prompts would change its text feature.
    """
    out: list[list[str]] = []
    for name in classnames:
        readable = name.replace("_", " ")
        prompts = [t.format(readable) for t in templates]
        if cupl is not None:
            key = readable.lower()
            if key not in cupl:
                raise ValueError(f"class {name!r} (key {key!r}) is missing from the CuPL file")
            prompts.extend(cupl[key])
        out.append(prompts)
    return out
