"""The code's boundaries, checked statically: what DVC must see, and who may import what.

* dvc.yaml says what each stage's declaration says (metaaug.declaration): the same stages in pipeline order,
  and per stage its cmd, data deps, params and outs; a stage reads no key but its params and the keys it
  declares "read, not a dependency", which only execution knobs and tracking names may be.
* For each dvc.yaml stage, every metaaug module its command imports (transitively, lazy
  imports included) is covered by the stage's deps, so editing any code a stage runs
  makes `dvc repro` rerun it (and the lock records the code that produced an output).
* Only the MLflow modules (store.py, tracking.py, datasets.py, registry.py) import mlflow (with the pyfunc
  model file the registry logs, policy_model.py, which no module imports); metaaug's modules import no cycle.
"""

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
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


def test_dvc_yaml_lists_the_declared_stages_in_pipeline_order():
    """The same stages as metaaug/stages/*.py declare, each after the stages whose outputs it reads."""
    from metaaug.declaration import declarations

    declared, written = declarations(), list(stages())
    assert sorted(written) == sorted(declared), f"dvc.yaml's stages {written} differ from the declared {list(declared)}"
    for name, declaration in declared.items():
        later = [up for up, _ in declaration.inputs.values() if written.index(up) > written.index(name)]
        assert not later, f"dvc.yaml lists stage {name} before {later}, whose outputs it reads"


CODE = ("stages/", "metaaug/")  # a dep under these is code the command runs (checked by its imports above)


@pytest.mark.parametrize("name", list(stages()))
def test_dvc_yaml_stage_says_what_its_declaration_says(name):
    """cmd, data deps, params, outs and metrics as the declaration makes them (comments and order of the code
    deps are free); the message names the stage, the field and what the declaration expects."""
    from metaaug.declaration import declarations

    declared, written = declarations()[name].dvc_stage(), dict(stages()[name])
    written["deps"] = [d for d in written.get("deps", []) if not d.startswith(CODE)]
    mismatched = {key: value for key, value in declared.items()
                  if (sorted(map(str, written.get(key) or [])) if key == "deps" else written.get(key) or [])
                  != (sorted(map(str, value)) if key == "deps" else value)}
    assert not mismatched, f"dvc.yaml stage {name} differs from its declaration; expected {mismatched}"


def test_only_execution_knobs_and_tracking_names_are_read_without_being_params():
    from metaaug.declaration import declarations, may_be_no_dependency

    for name, declaration in declarations().items():
        wrong = [key for key in declaration.reads if not may_be_no_dependency(key)]
        assert not wrong, f"stage {name} reads {wrong} without depending on them; only workers, distributed and " \
                          "tracking.* may be (any other key changes its output bytes: list it in its params)"
        listed = [key for key in declaration.dvc_params() if key in declaration.reads or may_be_no_dependency(key)]
        assert not listed, f"stage {name} lists {listed} as DVC params: a sweep over them would rerun it for nothing"


def recorded_reads(monkeypatch) -> set[str]:
    """Record every parameter the code reads from now on: attribute access of a leaf, or a section dumped whole."""
    from metaaug import config

    path_of = {config.Params: ""}

    def walk(section: type, prefix: str) -> None:  # nested sections too (metatrain.race, metatrain.cem)
        for name, field in section.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, config.Section):
                path_of[field.annotation] = prefix + name + "."
                walk(field.annotation, prefix + name + ".")

    walk(config.Params, "")
    reads, get, dump = set(), config.Section.__getattribute__, config.Section.model_dump

    def getattribute(self, name):
        value = get(self, name)
        if name in type(self).model_fields and not isinstance(value, config.Section):
            reads.add(path_of[type(self)] + name)
        return value

    def model_dump(self, *args, **kwargs):
        fields = kwargs.get("include") or [f for f in type(self).model_fields if f not in (kwargs.get("exclude") or ())]
        reads.update(path_of[type(self)] + name for name in fields)
        return dump(self, *args, **kwargs)

    monkeypatch.setattr(config.Section, "__getattribute__", getattribute)
    monkeypatch.setattr(config.Section, "model_dump", model_dump)
    return reads


def resolved(key: str, params: dict) -> str:
    """A DVC params key with its `${a.b}` templates replaced by their values in `params`, as DVC resolves them."""
    def value(match):
        found = params
        for part in match.group(1).split("."):
            found = found[part]
        return str(found)

    return re.sub(r"\$\{([^}]+)\}", value, key)


def test_stage_params_declare_every_key_the_stage_reads(tmp_path, monkeypatch):
    """Each stage run through its command on tiny data, its paths the declared ones under a scratch folder, with
    reads recorded: every key it read is one of its DVC params or declared as read without being one."""
    from conftest import tiny_params
    from metaaug.declaration import expanded_stages
    from metaaug import config
    from metaaug.cli import main
    from metaaug.declaration import declarations

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(**{"metatrain.workers": 1})))
    monkeypatch.chdir(tmp_path)
    for name, declaration in declarations().items():
        module, load = importlib.import_module(f"metaaug.stages.{name}"), config.load_params
        with monkeypatch.context() as mp:
            reads = recorded_reads(mp)
            # what loading reads (its validators) is no read of the stage's
            mp.setattr(module, "load_params", lambda path: (load(path), reads.clear())[0])
            for stage in expanded_stages({name: declaration.dvc_stage()}, tiny_params()).values():  # each item's
                with pytest.raises(SystemExit) as exit:
                    main([name, *stage["cmd"].split()[2:]])
                assert exit.value.code == 0, stage["cmd"]
        allowed = [resolved(key, tiny_params()) for key in [*declaration.dvc_params(), *declaration.reads]]
        undeclared = sorted(key for key in reads if not any(key == p or key.startswith(p + ".") for p in allowed))
        assert not undeclared, f"stage {name} reads params its declaration does not list: {undeclared}"
        assert reads, name


COUNT_MODULE = '''"""Stage `count`: how many target images each class has (`data/counts/counts.json`)."""

from pathlib import Path

from metaaug import runner, tracking
from metaaug.config import Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared

DECLARATION = Declaration("count", inputs={"prepared": ("prepare", "data/prepared")},
                          outputs={"out": Output("data/counts", "count")}, params=("seed",))


def run(params: Params, prepared_dir: Path, out: Path) -> None:
    prepared = load_prepared(prepared_dir)
    with runner.stage_run(DECLARATION, {"seed": params.seed}, params.tracking.experiment,
                          {"prepared": prepared_dir, "out": out}) as stage:
        counts = {str(c): int((prepared.target_labels == c).sum()) for c in sorted(set(prepared.target_labels))}
        (stage.output(out) / "counts.json").write_text(str(counts))
        tracking.log_metrics({"count.classes": len(counts)})


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            out: Path = DECLARATION.option("out")):
    """Count the target images of each class."""
    run(load_params(params), prepared, out)
'''

COUNT_ENTRY = '''from metaaug.stages import count, run_command

if __name__ == "__main__":
    run_command(count.command)
'''


@pytest.mark.slow  # prepare and the new stage, through the CLI and through DVC, and the checks in the copy
def test_a_new_stage_is_its_module_its_entry_and_its_dvc_yaml_entry(tmp_path, monkeypatch):
    """docs/contributing.md's "Add a stage", followed literally in a scratch copy: the stage's module, its
    two-line entry and its dvc.yaml entry (the declaration's, with the code it runs as deps) and nothing else;
    then this file's declaration checks pass there, `metaaug count` runs, and `dvc repro count` runs it."""
    from conftest import tiny_params
    from helpers import dvc, make_project, sh
    from metaaug.declaration import Declaration, Output

    root = make_project(tmp_path / "project", tiny_params())
    shutil.copytree(REPO / "tests", root / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bench", root / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "metaaug/stages/count.py").write_text(COUNT_MODULE)
    (root / "stages/count.py").write_text(COUNT_ENTRY)
    declared = Declaration("count", inputs={"prepared": ("prepare", "data/prepared")},
                           outputs={"out": Output("data/counts", "count")}, params=("seed",)).dvc_stage()
    code = ["stages/count.py", "metaaug/stages/count.py", *(d for d in stages()["prepare"]["deps"] if d != "stages/prepare.py"
                                                          and d != "metaaug/stages/prepare.py")]
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    pipeline["stages"]["count"] = {**declared, "deps": code + declared["deps"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    monkeypatch.setenv("PYTHONPATH", str(root))  # the copy's package, with its new stage (dvc's commands too)
    env = dict(os.environ)
    checks = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_structure.py",
                             "-k", "declaration or order or knobs or deps_cover"], cwd=root, env=env,
                            capture_output=True, text=True)
    assert checks.returncode == 0 and "count" in checks.stdout + str(pipeline), checks.stdout[-3000:]
    cli = [str(Path(sys.executable).parent / "metaaug")]
    assert "count" in subprocess.run([*cli, "--help"], cwd=root, env=env, capture_output=True, text=True).stdout
    for command in (["prepare"], ["count"]):
        done = subprocess.run([*cli, *command], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (root / "data/counts/counts.json").exists()
    sh("rm", "-rf", "data", cwd=root)
    repro = dvc(root, "repro", "count")
    assert repro.returncode == 0 and "Running stage 'count'" in repro.stdout, repro.stdout + repro.stderr
    assert (root / "data/counts/counts.json").exists()


def test_a_stage_process_imports_what_it_runs():
    """Each DVC stage is its own process, so every second of imports is paid per stage: SciPy (about 1 s)
    loads where it is used, not with the modules that could use it. The train and evaluate stages' modules
    import neither it nor the search package, nor torch's compiler (no training imports it:
    tests/test_training.py).
    Albumentations and OpenCV stay imported by metaaug.ops: the policy bundle's requirements are read from
    import statements (metaaug/policy_bundle.py)."""
    code = ("import sys\nimport metaaug.stages.train, metaaug.stages.evaluate, metaaug.stages.train_learned\n"
            "print([m for m in ('scipy.stats', 'metaaug.search', 'torch._dynamo') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    # every stage that reads the learner's answer samples the trial's tasks (metaaug.search.tasks) to check it
    # applies, and sizes its populations by the learner's operations: neither costs a compiler import
    code = ("import sys\nimport metaaug.search\nfrom metaaug.population import population_size\n"
            "population_size(0, 3, 32, 5, 32, 'small_cnn')\nprint('torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr
