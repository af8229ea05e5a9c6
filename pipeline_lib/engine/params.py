"""Reading params.yaml: profiles, `-S key=value` overrides and dotted-key access, before any validation.

Kept separate from `config.py` so the stage registry and the CLI can work with raw parameter dicts without importing
every section model (and with them torch).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"


class ParamsError(ValueError):
    """A params file, profile or override that cannot be used; the message names the key and the problem."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a YAML mapping, with an error naming the file when it is missing or not a mapping."""
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of param groups, found {type(data).__name__}")
    return data


#: Mappings a profile replaces instead of merging into: a profile's datasets are the run's datasets (the shapes entry
#: of params.yaml must not linger in a suite of real datasets).
REPLACED = frozenset({("datasets", name) for name in ("classification", "czsl", "image_retrieval", "text_retrieval")})


def deep_merge(base: dict[str, Any], update: dict[str, Any], at: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return `base` with `update` merged in recursively (mappings merge, except those in REPLACED; everything else
    replaces)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        where = (*at, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and where not in REPLACED:
            merged[key] = deep_merge(merged[key], value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def get_dotted(params: dict[str, Any], key: str) -> Any:
    """Value at a dotted key such as `backbone.train.steps`; KeyError naming the missing part."""
    node: Any = params
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:i]) or "<top level>"
            raise KeyError(f"params key {key!r} not found: {where} has no {part!r}")
        node = node[part]
    return node


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """Set an existing dotted key. Like `dvc exp run -S`, only keys that already exist may be overridden."""
    parts = key.split(".")
    node = params
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"cannot override {key!r}: {'.'.join(parts[: i + 1])!r} is not a param group")
        node = node[part]
    if parts[-1] not in node:
        raise ParamsError(f"cannot override {key!r}: no such key (known here: {', '.join(sorted(node))})")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key=value` with the value read as YAML (so `[1,4]`, `0.5`, `true`, `null` work as in DVC's -S)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip(), value


def list_profiles(root: Path) -> list[str]:
    """Names of the profiles shipped in `profiles/*.yaml`."""
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def load_params(root: Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """params.yaml, then the profile merged over it, then the overrides, as one raw dict."""
    params = read_yaml(root / PARAMS_FILE)
    if profile:
        path = root / PROFILES_DIR / f"{profile}.yaml"
        if not path.is_file():
            known = ", ".join(list_profiles(root)) or "none"
            raise ParamsError(f"unknown profile {profile!r} (known: {known})")
        params = deep_merge(params, read_yaml(path))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(params, key, value)
    return params
