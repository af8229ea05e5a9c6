"""Check params before anything runs, so a typo never costs an output.

Every entry point calls `preflight` first: `bridgeflow run` / `sweep` / the deployment flows before Prefect starts,
and `dvc repro` / `dvc exp run` through the `check_params` stage that every other stage sits below (DVC removes a
stage's outputs before running it, so a stage that validates its own params would be too late). It adds to the
params model's validation what only a whole-file view can tell: "did you mean" for unknown keys, keys `dvc.yaml`
declares but params.yaml lacks (DVC would remove outputs, then stop on "Parameters ... are missing"), dataset
folders and files that do not exist, and backbone names open_clip does not know. It imports no torch, so a
failure is reported in well under 2 seconds.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline_lib.engine.config import Config, load_config
from pipeline_lib.engine.params import ParamsError, get_dotted, load_params

#: params whose value names a file or folder that must exist when set (relative paths are from the project root)
PATH_KEYS = ("czsl.ow_word_vectors",)
#: path fields of each `datasets.classification` entry
DATASET_PATH_FIELDS = ("root", "cupl_file")
#: per dataset list, the params naming the entry a stage reads (its pin in the registry)
DATASET_PINS = {
    "classification": ("backbone.diagnose.dataset",),
    "czsl": ("czsl.dataset",),
    "image_retrieval": ("inversion.dataset",),
    "text_retrieval": ("inversion.text_dataset",),
}


def unknown_keys(raw: dict[str, Any], model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    """'key: unknown key (did you mean ...?)' for every key of `raw` the params model does not define."""
    fields = model.model_fields
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(fields)})"
            yield f"{dotted}: unknown key{hint}"
            continue
        annotation = fields[key].annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from unknown_keys(value, annotation, dotted + ".")


def missing_dvc_params(root: Path, raw: dict[str, Any]) -> list[str]:
    """Params keys that dvc.yaml stages declare but params.yaml lacks."""
    dvc_file = root / "dvc.yaml"
    if not dvc_file.is_file():
        return []
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    declared = dict.fromkeys(
        k.split(".${")[0] for entry in stages.values() for k in entry.get("params", []) if isinstance(k, str)
    )  # a per-item key (`datasets.classification.${item.dataset}`) needs its parent
    missing = []
    for key in declared:
        try:
            get_dotted(raw, key)
        except KeyError:
            missing.append(f"{key}: missing from params.yaml (dvc.yaml's stages read it; `bridgeflow params` "
                           "prints every key with its default)")
    return missing


def path_keys(cfg: Config) -> list[str]:
    """Every params key naming a file or folder: the fixed ones and each listed dataset's."""
    entries = [f"datasets.classification.{name}.{field}" for name in cfg.datasets.classification
               for field in DATASET_PATH_FIELDS]
    entries += [f"datasets.czsl.{name}.root" for name in cfg.datasets.czsl]
    return [*PATH_KEYS, *entries, *(f"datasets.text_retrieval.{name}.path" for name in cfg.datasets.text_retrieval)]


def dataset_problems(cfg: Config) -> list[str]:
    """A pin that names no listed dataset, and a reader of the shapes world when it is not made."""
    params, problems = cfg.model_dump(mode="json"), []
    # an empty list runs none of its task's stages (a CZSL suite lists no classification dataset), so its pins are
    # checked only when the list has entries
    for section, pins in DATASET_PINS.items():
        names = list(getattr(cfg.datasets, section))
        problems += [f"{key} = {get_dotted(params, key)!r}: not a key of datasets.{section} (listed: "
                     f"{', '.join(names)})" for key in pins if names and get_dotted(params, key) not in names]
    if not cfg.data.generate:
        problems += [f"{key} reads the shapes world, which data.generate = false does not make"
                     for key in world_readers(cfg)]
    return problems


def world_readers(cfg: Config) -> list[str]:
    """The params whose value makes a stage read the data stage's shapes world."""
    readers = [f"datasets.classification.{name}.root" for name, entry in cfg.datasets.classification.items()
               if entry.root is None]
    readers += [f"datasets.czsl.{name}.root" for name, entry in cfg.datasets.czsl.items() if entry.root is None]
    readers += [f"datasets.text_retrieval.{name}.path" for name, entry in cfg.datasets.text_retrieval.items()
                if entry.path is None]
    if cfg.backbone.trains_here:
        readers.append("backbone.model")  # the tiny CLIP pretrains on the world's corpus
    return readers


def missing_paths(root: Path, cfg: Config) -> list[str]:
    params = cfg.model_dump(mode="json")
    problems = []
    for key in path_keys(cfg):
        value = get_dotted(params, key)
        if value is not None and not (root / str(value)).exists():
            problems.append(f"{key} = {value!r}: no such file or folder (relative paths start at {root.resolve()})")
    pretrained = cfg.backbone.pretrained
    if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        if not (root / pretrained).exists():
            problems.append(f"backbone.pretrained = {pretrained!r}: no such weights file")
    return problems


def known_backbones() -> list[str]:
    """open_clip's model names, read from its bundled configs without importing it (which would import torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))


def backbone_problems(cfg: Config) -> list[str]:
    """An open_clip name that is not one (tiny models are checked by the backbone stage; hub names cannot be here)."""
    name = cfg.backbone.model
    if cfg.backbone.is_tiny or name.startswith("hf-hub:"):
        return []
    known = known_backbones()
    if not known or name in known:
        return []
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "open_clip.list_models() lists them"
    return [f"backbone.model = {name!r}: not an open_clip model name ({hint})"]


def ovi_problems(cfg: Config) -> list[str]:
    """OVI's reference P asked for a backbone that has none (only when text-retrieval datasets are listed)."""
    if not cfg.datasets.text_retrieval:
        return []
    try:
        cfg.inversion.ovi.patches(cfg.backbone.model, cfg.backbone.pretrained)
    except ValueError as err:
        return [str(err)]
    return []


def preflight(root: Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = (),
              require_dvc_keys: bool = False) -> Config:
    """The validated config, or ParamsError listing every problem (key, value, what is allowed)."""
    raw = load_params(root, profile, overrides)
    problems = list(unknown_keys(raw))
    if require_dvc_keys:
        problems += missing_dvc_params(root, load_params(root))
    if problems:
        raise ParamsError("invalid params:\n  " + "\n  ".join(problems))
    cfg = load_config(root, profile, overrides)
    problems = dataset_problems(cfg) + missing_paths(root, cfg) + backbone_problems(cfg) + ovi_problems(cfg)
    if problems:
        raise ParamsError("invalid params:\n  " + "\n  ".join(problems))
    return cfg
