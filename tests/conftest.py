"""Shared test fixtures: every test gets its own MLflow store, never the repo's mlflow.db."""

from pathlib import Path

import pytest

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
from metaaug.stages import pin_cpu_kernels

# The stage commands pin the CPU kernels before torch loads (metaaug.stages); tests that run a stage in-process
# and compare it with one run as a command (under torchrun, by dvc) need the same kernels here.
pin_cpu_kernels()

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "metaaug-test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "metaaug-test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    yield


def tiny_params(**overrides) -> dict:
    """Defaults shrunk so that a whole pipeline runs in seconds, as a params.yaml mapping
    (`metaaug.config.validate` makes it the typed Params the stages take)."""
    from metaaug.config import defaults

    params = defaults().model_dump()
    params["tasks"]["splits"] = 2
    params["train"]["epochs"] = 4
    params["train"]["arms"] = ["none", "trivialaugment", "learned"]
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
