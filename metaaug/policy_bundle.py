"""What the registered policy model carries, so that it loads and predicts where metaaug is not installed.

MLflow rebuilds a model's environment from what the model records (`mlflow.models.predict`, `mlflow models
serve`, `env_manager="virtualenv"` or `"uv"`): its pip requirements and its code. metaaug is on no package
index, so the model records metaaug's code itself:

* **code**: the metaaug modules that loading metaaug/policy_model.py runs (found statically: every import
  its file makes outside functions, and every import those modules make at import time) go into the model
  as `code_paths`, as a package `metaaug/` holding just those files; MLflow puts the model's `code/` first
  on `sys.path` when it loads the model. Functions' lazy imports (a `models:/` URI, `learn_policy`) are
  left out: applying a policy never runs them.
* **an input example** (MLflow checks the model on it when logging, and stores it beside the model).
* **pip requirements**: the third-party distributions those modules import, each pinned to the version
  installed here (its public version: torch `2.13.0+cpu` is pinned `2.13.0`, which a CPU machine's pip
  resolves to the CPU wheel and a CUDA build of the same version satisfies). MLflow adds its own pin.
"""

from __future__ import annotations

import ast
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from packaging.version import Version

PACKAGE = Path(__file__).resolve().parent  # metaaug/
ENTRY = PACKAGE / "policy_model.py"  # the models-from-code file that tracking.register_policy logs
ADDED_BY_MLFLOW = {"mlflow"}  # log_model pins MLflow itself (mlflow==<the version logging the model>)


def _import_time_names(path: Path) -> set[str]:
    """Every module name `path` imports when it is imported: its statements outside function bodies."""
    names: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue  # runs only when called
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # a submodule, if one
        todo.extend(ast.iter_child_nodes(node))
    return names


def _source(module: str) -> Path | None:
    """The file of metaaug module `module` (a package's __init__.py), None when it is no metaaug module."""
    parts = module.split(".")
    if parts[0] != "metaaug":
        return None
    path = PACKAGE.joinpath(*parts[1:])
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def closure() -> tuple[list[Path], set[str]]:
    """(the metaaug files that importing the model file runs, the top-level third-party modules they import)."""
    files, third_party, todo = set(), set(), [ENTRY]
    while todo:
        for name in _import_time_names(todo.pop()):
            top = name.split(".")[0]
            if top != "metaaug":
                if top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
                continue
            parts = name.split(".")  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            for path in filter(None, (_source(".".join(parts[:i])) for i in range(1, len(parts) + 1))):
                if path not in files:
                    files.add(path)
                    todo.append(path)
    return sorted(files), third_party


def bundle(dest: Path) -> Path:
    """Copy the metaaug modules the model runs into `dest`/metaaug (layout kept); returns that folder,
    the model's `code_paths` entry."""
    root = Path(dest) / "metaaug"
    for path in closure()[0]:
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def pip_requirements() -> list[str]:
    """`name==version` of every installed distribution that provides a third-party module the model imports."""
    providers = metadata.packages_distributions()
    pins = set()
    for module in closure()[1] - ADDED_BY_MLFLOW:
        for dist in providers.get(module, []):
            pins.add(f"{dist}=={Version(metadata.version(dist)).public}")
    return sorted(pins, key=str.lower)


def input_example() -> tuple[np.ndarray, dict]:
    """Two 8x8 grey uint8 images (a diagonal ramp and its mirror) and param `seed`: the smallest batch of the
    signature's (N, H, W, C) layout. Grey suits any policy: Color, the only op that needs colour, is a no-op."""
    ramp = (np.add.outer(np.arange(8), np.arange(8)) * (255 / 14)).round().astype(np.uint8)
    return np.stack([ramp, ramp[::-1]])[..., None], {"seed": 0}
