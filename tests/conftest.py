"""Shared test fixtures: every test gets its own MLflow store, never the repo's mlflow.db, and the suite runs
from a temporary folder, so nothing it writes (MLflow's default artifact root is ./mlruns of the working
folder) lands in the user's project; a session guard fails the run if anything in the repository changed."""

import os
import subprocess
from pathlib import Path

import pytest

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
from metaaug.stages import pin_cpu_kernels

# The stage commands pin the CPU kernels before torch loads (metaaug.stages); tests that run a stage in-process
# and compare it with one run as a command (under torchrun, by dvc) need the same kernels here.
pin_cpu_kernels()

REPO = Path(__file__).resolve().parents[1]
# What the suite may leave in the repository: the MLflow UI test's screenshots, kept there on purpose
# (git-ignored, docs/scaling.md), and Python's and pytest's caches.
MAY_WRITE = ("test-artifacts/", ".pytest_cache/")


def repo_state(repo: Path = REPO) -> dict[str, tuple]:
    """Every changed, untracked or ignored file of the repository (each file of an ignored folder, the
    virtual environment aside), with its size and modification time: what a test could have written.
    Empty outside a git checkout (an unpacked sdist), where there is nothing to compare."""
    done = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--ignored=traditional",
                           "--untracked-files=all", "-z", "--", ".", ":!.venv"], capture_output=True, text=True)
    listed = done.stdout if done.returncode == 0 else ""
    state = {}
    for entry in filter(None, listed.split("\0")):
        path = entry[3:]
        if path.startswith(MAY_WRITE) or "__pycache__/" in path:
            continue
        try:
            stat = (repo / path).lstat()
            state[path] = (entry[:2], stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            state[path] = (entry[:2], None, None)
    return state


def repo_changes(before: dict, after: dict) -> list[str]:
    """Paths added, removed or rewritten between two repo_state()s."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@pytest.fixture(scope="session", autouse=True)
def outside_the_repo(tmp_path_factory):
    """Run the session from a temporary folder, and fail it if the repository changed meanwhile."""
    before, cwd = repo_state(), os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(cwd)
    changed = repo_changes(before, repo_state())
    assert not changed, f"the test suite wrote into the repository: {changed[:10]}"


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "metaaug-test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "metaaug-test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    yield


@pytest.fixture(autouse=True)
def default_params_file():
    """Each test starts with no params file loaded: the file a command loaded (what later errors name,
    config.params_file) is process state, and would otherwise leak from one test into the next's messages."""
    from metaaug import config

    token = config._PARAMS_FILE.set("params.yaml")
    yield
    config._PARAMS_FILE.reset(token)


def tiny_params(**overrides) -> dict:
    """Defaults shrunk so that a whole pipeline runs in seconds, as a params.yaml mapping
    (`metaaug.config.validate` makes it the typed Params the stages take)."""
    from metaaug.config import defaults

    params = defaults().model_dump()
    params["tasks"]["splits"] = 2
    params["train"]["epochs"] = 4
    params["train"]["arms"] = ["none", "trivialaugment"]
    params["metatrain"].update(proxy_epochs=2, query_per_class=20, budget=3.0)
    params["metatrain"]["race"].update(tasks=1, step=1, confirm_tasks=2)
    params["metatrain"]["cem"].update(candidates=2, tasks=1, step=1, confirm_tasks=2)
    params["augment"]["copies"] = 2
    for dotted, value in overrides.items():  # "section.key" or "section.sub.key"
        *path, key = dotted.split(".")
        target = params
        for part in path:
            target = target[part]
        target[key] = value
    return params


def tiny_config(**overrides):
    """`tiny_params` as the typed Params the stages and library functions take."""
    from metaaug.config import validate

    return validate(tiny_params(**overrides))
