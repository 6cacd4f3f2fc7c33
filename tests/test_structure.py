"""The code's boundaries, checked statically: what DVC must see, and who may import what.

* For each dvc.yaml stage, every metaaug module its command imports (transitively, lazy
  imports included) is covered by the stage's deps, so editing any code a stage runs
  makes `dvc repro` rerun it (and the lock records the code that produced an output).
* Only the MLflow modules (store.py, tracking.py, datasets.py, registry.py) import mlflow (with the pyfunc
  model file the registry logs, policy_model.py, which no module imports); metaaug's modules import no cycle.
"""

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = REPO / "metaaug"


def module_file(name: str) -> Path | None:
    """The source file of a metaaug module name (package or module), None outside metaaug."""
    if name != "metaaug" and not name.startswith("metaaug."):
        return None
    path = REPO / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def direct_imports(path: Path) -> set[str]:
    """The metaaug modules a file imports anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from metaaug.stages import train` imports the module metaaug.stages.train
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (module_file(f"{node.module}.{alias.name}") or Path("/nonexistent")).exists())
    modules = set()
    for name in found:
        if module_file(name) is None:
            continue
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in modules if module_file(m).exists()}


def imported_files(entry: Path) -> set[Path]:
    """The entry file and every metaaug source file it reaches through imports."""
    seen, todo = {entry}, [entry]
    while todo:
        for name in direct_imports(todo.pop()):
            path = module_file(name)
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_cover_every_module_its_command_imports(name):
    stage = stages()[name]
    entry = REPO / next(word for word in stage["cmd"].split() if word.endswith(".py"))
    deps = [REPO / dep for dep in stage["deps"]]
    missing = sorted(str(f.relative_to(REPO)) for f in imported_files(entry)
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml stage {name} runs code it does not list as deps: {missing}"


def test_only_the_mlflow_modules_import_mlflow():
    """store, tracking, datasets and registry, and the pyfunc model the registry logs by path (policy_model.py,
    which no module imports)."""
    importers = sorted(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                       if any(m == "mlflow" or m.startswith("mlflow.") for m in all_imports(p)))
    assert importers == ["metaaug/datasets.py", "metaaug/policy_model.py", "metaaug/registry.py", "metaaug/store.py",
                         "metaaug/tracking.py"]
    assert not [p for p in PACKAGE.rglob("*.py") if "metaaug.policy_model" in direct_imports(p)]
    assert "policy_model.py" in (PACKAGE / "registry.py").read_text()
    assert "metaaug/policy_model.py" in stages()["metatrain"]["deps"]  # the stage logs that file


def all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_import_cycles_between_metaaug_modules():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        # a package's __init__ is imported before its modules: that edge is no cycle
        graph[name] = {m for m in direct_imports(path) if m != name and not name.startswith(m + ".")}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "active", f"import cycle: {' -> '.join(path + [node])}"
        state[node] = "active"
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def recorded_reads(monkeypatch) -> set[str]:
    """Record every parameter the code reads from now on: attribute access of a leaf, or a section dumped whole."""
    from metaaug import config

    path_of = {config.Params: ""}
    for name, field in config.Params.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, config.Section):
            path_of[field.annotation] = name + "."
    reads, get, dump = set(), config.Section.__getattribute__, config.Section.model_dump

    def getattribute(self, name):
        value = get(self, name)
        if name in type(self).model_fields and not isinstance(value, config.Section):
            reads.add(path_of[type(self)] + name)
        return value

    def model_dump(self, *args, **kwargs):
        fields = kwargs.get("include") or type(self).model_fields
        reads.update(path_of[type(self)] + name for name in fields)
        return dump(self, *args, **kwargs)

    monkeypatch.setattr(config.Section, "__getattribute__", getattribute)
    monkeypatch.setattr(config.Section, "model_dump", model_dump)
    return reads


def test_stage_params_declare_every_key_the_stage_reads(tmp_path, monkeypatch):
    """Each stage run on tiny data with reads recorded: every key it read is in its dvc.yaml params."""
    from conftest import tiny_config
    from metaaug.stages import augment, evaluate, metatrain, prepare, train

    params = tiny_config(**{"metatrain.workers": 1})
    monkeypatch.chdir(tmp_path)
    d = {name: tmp_path / name for name in ("prepared", "policy", "augmented", "downstream")}
    runs = {"prepare": lambda: prepare.run(params, d["prepared"]),
            "metatrain": lambda: metatrain.run(params, d["prepared"], d["policy"], tmp_path / "t1.json"),
            "augment": lambda: augment.run(params, d["prepared"], d["policy"], d["augmented"]),
            "train": lambda: train.run(params, d["prepared"], d["downstream"], d["policy"], d["augmented"],
                                       tmp_path / "t2.json"),
            "evaluate": lambda: evaluate.run(params, d["prepared"], d["downstream"], tmp_path / "metrics.json",
                                             tmp_path / "plots", d["policy"], tmp_path / "reports")}
    assert list(runs) == list(stages())
    for name, run in runs.items():
        with monkeypatch.context() as mp:
            reads = recorded_reads(mp)
            run()
        declared = stages()[name]["params"]
        undeclared = sorted(key for key in reads if not any(key == p or key.startswith(p + ".") for p in declared))
        assert not undeclared, f"dvc.yaml stage {name} reads params it does not declare: {undeclared}"
        assert reads, name
