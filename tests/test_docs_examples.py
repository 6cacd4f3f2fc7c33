"""Every runnable example in README.md and docs/*.md runs as printed, from the directory its text names.

* A runnable example is a fenced block marked ```bash or ```python; an unmarked fence is an output listing.
  Each block is one test, named by file and line.
* bash blocks run with bash -e from the repository root ("from the repository root", as the README's quick
  start and every command of the docs say) of a fresh project: a copy of the checkout's files in a new git
  repository, with no outputs, venv or store. A block that installs, reproduces or runs experiments is `slow`.
* python blocks run in a fresh interpreter. The README's Python API example runs where the pipeline extra's
  packages (scikit-learn, MLflow, DVC, ...) cannot be imported: the core install it names (`python -S` with a
  view of this venv's site-packages that leaves out every distribution only `metaaug[pipeline]` installs). docs/registry.md's
  loading example runs at the root of a project whose default store holds a registered policy.
* NOT_RUN lists, with the reason, every block that cannot run here (a GPU, several nodes, a server, a
  placeholder for the user's own data or repository, a template to copy): a reader sees what is not checked.
  XFAIL lists blocks that fail today for a known open reason (strict: they fail the suite once they pass).
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params
from helpers import search_policies

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# (file, a line of the block): why it is not run here
NOT_RUN = {
    ("README.md", "bash tests/run.sh"): "runs this test suite itself (CI runs it: .ci/run)",
    ("README.md", "python3 -m venv .venv"): "the quick start's fresh venv (a 10-minute install of 167 packages) and "
                                           "the default pipeline: bench/first_hour.py runs it on a fresh clone",
    ("README.md", "mlflow ui"): "starts the MLflow UI server (tests/test_mlflow_ui.py drives the UI)",
    ("README.md", "imagefolder:/path/to/folder"): "/path/to/folder stands for the user's own image folder",
    ("docs/scaling.md", "python bench/gpu_check.py"): "needs a GPU (its first line; the --device cpu line is "
                                                      "tests/test_gpu_check.py's)",
    ("docs/scaling.md", "--nnodes=2"): "torchrun over two nodes and a tracking server",
    ("docs/scaling.md", "stages/train.py --arm none"): "torchrun after a `dvc repro` and the params.yaml edit its first "
                                                       "line names (tests/test_distributed.py runs this command)",
    ("docs/scaling.md", "--nproc_per_node=2 stages/metatrain.py"): "torchrun after a `dvc repro` and the params.yaml "
                                                                   "edit its first line names (tests/test_distributed.py)",
    ("docs/scaling.md", "mlflow server"): "starts a tracking server on a host of its own",
    ("docs/scaling.md", "dvc remote add"): "a team mount and `<repo>` stand for the user's (tests/test_shared_infra.py "
                                           "pushes to and pulls from a local remote)",
    ("docs/registry.md", "dvc artifacts get"): "`<repo url or path>` stands for the user's repository "
                                               "(tests/test_shared_infra.py gets the artifact from a clone)",
    ("docs/contributing.md", 'Op("Name"'): "a template line for metaaug/ops.py (tests/test_contributing.py fills "
                                            "it in and appends it to a copy's OPS)",
    ("docs/contributing.md", "KIND = \"mykind\""): "a template for a new metaaug/data/<kind>.py (tests/test_sources.py "
                                                   "adds such a module and loads it)",
    ("docs/search.md", "def my_method"): "a template for a new file metaaug/search/my_method.py "
                                         "(tests/test_contributing.py writes it into a copy and runs metatrain with it)",
    ("docs/install.md", "/path/to/metaaug"): "/path/to/metaaug stands for the user's copy of the sources",
    ("docs/install.md", "/tmp/v_dev"): "the timing's recipe: 2 GB in /tmp/v_dev, outside the test's folders (the "
                                       "README's quick start block installs from the same constraints)",
}
# (file, a line of the block): the open reason it fails as printed
XFAIL = {}
SLOW = re.compile(r"^[^#\n]*(dvc (repro|exp run)|pip install|torchrun)", re.M)  # a bash block that installs or
# runs the pipeline: minutes


def examples() -> list:
    """pytest params, one per ```bash / ```python block: (file, line, language, code)."""
    params = []
    for doc in DOCS:
        name, text = str(doc.relative_to(REPO)), doc.read_text()
        for found in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.S | re.M):
            line, (language, code) = text.count("\n", 0, found.start()) + 1, found.groups()
            marks = [pytest.mark.slow] if language == "bash" and SLOW.search(code) else []
            for table, mark in ((NOT_RUN, pytest.mark.skip), (XFAIL, None)):
                reason = next((why for (file, part), why in table.items() if file == name and part in code), None)
                if reason and mark:
                    marks.append(mark(reason=reason))
                elif reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(name, line, language, code, id=f"{name}:{line}", marks=marks))
    return params


def test_every_listed_block_exists():
    """A NOT_RUN or XFAIL entry names a block the docs still hold (no stale exemptions)."""
    blocks = {(p.values[0], p.values[3]) for p in examples()}
    for file, part in [*NOT_RUN, *XFAIL]:
        assert any(file == f and part in code for f, code in blocks), f"no block of {file} holds {part!r}"


def fresh_project(dest: Path, tiny: bool = False) -> Path:
    """The checkout's files (tracked and not ignored, as they are now) in a new git repository: a fresh clone.
    `tiny`: with conftest's tiny params.yaml, so that a block running the pipeline (dvc repro, dvc exp run) takes
    seconds, not the default's minutes, and the suite stays within its time (the commands run as printed)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    if tiny:
        (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=docs", "-c", "user.email=docs@example.org",
                                                   "commit", "-qm", "fresh clone"]):
        subprocess.run(["git", *command], cwd=dest, check=True, capture_output=True)
    return dest


HIDDEN_DISTS: set[str] = set()  # filled by hidden_modules


def hidden_modules() -> list[str]:
    """The top-level modules of what `metaaug[pipeline]` installs beyond the core (requirements/lock.py's
    closure of each, from this environment's metadata): what a core install cannot import."""
    spec = importlib.util.spec_from_file_location("lock", REPO / "requirements" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    HIDDEN_DISTS.update(set(lock.closure(["metaaug[pipeline]"])) - set(lock.closure(["metaaug"])))
    from importlib.metadata import packages_distributions
    from packaging.utils import canonicalize_name

    return sorted(module for module, dists in packages_distributions().items()
                  if all(canonicalize_name(d) in HIDDEN_DISTS for d in dists))


def core_site_packages(dest: Path) -> Path:
    """A view of this venv's site-packages without what only the pipeline extra installs (links to every other
    entry): on sys.path instead of site-packages (python -S), it is a core install."""
    from packaging.utils import canonicalize_name

    hidden = set(hidden_modules())
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        dist = canonicalize_name(entry.name.split("-")[0]) if entry.suffix == ".dist-info" else None
        if entry.name.removesuffix(".py") not in hidden and not (dist and dist in HIDDEN_DISTS):
            (dest / entry.name).symlink_to(entry)
    return dest


def run(command: list[str], cwd: Path, env: dict, timeout: int) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def clean_env(**extra) -> dict:
    """This environment without the test's store and PYTHONPATH (a user's shell), with this venv's bin first."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    return env | {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}"} | extra


def register_default_policy(project: Path, monkeypatch) -> None:
    """A tiny prepare + metatrain, registered as the default model in the project's default store."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    search_policies(project / "data" / "prepared", [project / "models" / "policy"])


def registry_example() -> str:
    """docs/registry.md's python block: it loads a registered policy from the default store."""
    return next(p.values[3] for p in examples() if p.values[0] == "docs/registry.md" and p.values[2] == "python")


@pytest.mark.parametrize("name, line, language, code", examples())
def test_example_runs_as_printed(name, line, language, code, tmp_path, monkeypatch):
    project = fresh_project(tmp_path / "project", tiny=language == "bash" and bool(SLOW.search(code)))
    if language == "bash":
        run(["bash", "-e", "-c", code], project, clean_env(PYTHONPATH=str(project)), timeout=3600)
    elif code == registry_example():  # a registered policy, from the default store, at the repository root
        register_default_policy(project, monkeypatch)
        run([sys.executable, "-c", code], project, clean_env(PYTHONPATH=str(project)), timeout=600)
    else:  # the Python API on the core install
        site = core_site_packages(tmp_path / "site-packages")
        run([sys.executable, "-S", "-c", code], tmp_path, clean_env(PYTHONPATH=f"{project}:{site}"), timeout=600)


def test_the_registry_example_finds_the_default_store_from_a_subfolder(tmp_path, monkeypatch):
    project = fresh_project(tmp_path / "project")
    register_default_policy(project, monkeypatch)
    run([sys.executable, "-c", registry_example()], project / "docs", clean_env(PYTHONPATH=str(project)), timeout=600)
    assert not (project / "docs" / "mlflow.db").exists()
