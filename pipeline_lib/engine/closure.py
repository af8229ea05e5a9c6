"""A stage's code, derived from the source: the import closure of its function's module inside `pipeline_lib`.

The closure versions the stage (fingerprint) and lists its DVC code deps. It is read statically from the import
statements of each module, lazy imports inside functions included, so a hand-kept list can never drift from what the
stage runs. A module counts with every parent package (their `__init__` runs on import). Code the registry names for
a stage besides its function (the shard planner and worker of a sharded stage) counts with its own closure.

Two kinds of wiring are left out, because they say where things are, not what a stage computes: the registry
(`engine/stages.py`: names, paths and params keys; a stage's params values are versioned on their own), and the
params model's (`engine/config.py`) imports of the config modules of sections the stage does not declare. So adding a
stage or editing the CZSL params model does not make the backbone stale; a stage's own code still counts wherever it
imports a module from.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from pipeline_lib.engine.stages import Stage

PACKAGE = "pipeline_lib"


@cache
def package_dir() -> Path:
    """The folder of the `pipeline_lib` package that this process imports (a checkout or an installed copy)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{PACKAGE} cannot be imported")
    return Path(spec.origin).parent


def module_file(module: str) -> Path | None:
    """The source file of a dotted module (a package's `__init__.py`), or None when there is none.

    `pipeline_lib` modules are found without importing anything; a stage function outside the package (a test's
    stage) is found through the import system and versions the stage by its own file only.
    """
    if module.split(".")[0] != PACKAGE:
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        return origin if origin is not None and origin.suffix == ".py" else None
    base = package_dir().parent.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _with_parents(names: set[str]) -> set[str]:
    parts = (name.split(".") for name in names)
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


@cache
def direct_imports(module: str) -> frozenset[str]:
    """The `pipeline_lib` modules one module imports anywhere in its source (with their parent packages)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    inside = {m for m in _with_parents(found) if m.split(".")[0] == PACKAGE}
    return frozenset(m for m in inside if module_file(m) is not None)


PARAMS_MODEL = f"{PACKAGE}.engine.config"
REGISTRY = f"{PACKAGE}.engine.stages"


@cache
def import_closure(module: str, sections: frozenset[str] | None = None) -> tuple[str, ...]:
    """`module` and every `pipeline_lib` module it imports, directly or not, sorted.

    With `sections` (the params sections a stage declares), the params model's imports of other sections' config
    modules are not followed.
    """
    seen: set[str] = set()
    todo = [module, *_with_parents({module})]
    while todo:
        name = todo.pop()
        if name not in seen and name != REGISTRY and module_file(name) is not None:
            seen.add(name)
            found = direct_imports(name)
            if name == PARAMS_MODEL and sections is not None:
                found = frozenset(m for m in found if not _other_section_config(m, sections))
            todo.extend(found - seen)
    return tuple(sorted(seen))


def _other_section_config(module: str, sections: frozenset[str]) -> bool:
    parts = module.split(".")
    return len(parts) == 3 and parts[2] == "config" and parts[1] != "engine" and parts[1] not in sections


def declared_sections(stage: Stage) -> frozenset[str]:
    """Top-level params sections a stage reads ("fewshot.atol" -> "fewshot")."""
    return frozenset(key.split(".")[0] for key in stage.params)


def stage_modules(stage: Stage) -> tuple[str, ...]:
    """The modules the registry names for a stage: its function's, and its shard planner's and worker's."""
    funcs = (stage.func, *((stage.shards.planner, stage.shards.worker) if stage.shards else ()))
    return tuple(dict.fromkeys(func.partition(":")[0] for func in funcs))


def code_files(stage: Stage) -> list[Path]:
    """Source files of the stage's import closure, sorted (the root package's `__init__` excluded)."""
    sections = declared_sections(stage)
    names = {m for module in stage_modules(stage) for m in import_closure(module, sections) if m != PACKAGE}
    files = {module_file(m) for m in names}
    return sorted(f for f in files if f is not None)


def code_paths(stage: Stage) -> list[str]:
    """The closure as `pipeline_lib/...` paths, as DVC lists them."""
    root = package_dir().parent
    return [f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f) for f in code_files(stage)]


@cache
def code_digest(stage: Stage) -> str:
    """sha256 over the closure's paths and source bytes: the code version in a stage's fingerprint."""
    root = package_dir().parent
    h = hashlib.sha256()
    for path in code_files(stage):
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
