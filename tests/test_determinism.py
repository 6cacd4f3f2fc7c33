"""Determinism: the same params and seed, two fresh projects, `dvc repro train` on the CPU in each -> the same
bytes and the same dvc.lock hashes."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from conftest import tiny_params
from metaaug.files import dir_digest
from helpers import dvc, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two fresh projects, each with its own MLflow store, reproduced up to train (every arm) side by side."""
    params = tiny_params(**{"train.device": "cpu"})
    roots = [make_project(tmp_path_factory.mktemp("determinism") / "project", params) for _ in range(2)]
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(2) as pool:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)  # each project's own sqlite:///mlflow.db
        runs = list(pool.map(lambda root: dvc(root, "repro", "train", "train_learned"), roots))
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    return roots


def lock(root) -> dict:
    """dvc.lock's stage entries: wall times are no DVC output (they go to MLflow and the git-ignored timings/),
    so nothing in them differs between two runs."""
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def test_outputs_are_byte_identical(two_runs):
    a, b = two_runs
    for out in ("data/prepared", "models/policy", "data/augmented", "models/downstream"):
        assert dir_digest(a / out) == dir_digest(b / out), out


def test_dvc_lock_entries_are_identical(two_runs):
    """Run ids and wall times live in MLflow and timings/, never in the outputs, so every hash in the lock
    entries matches."""
    a, b = two_runs
    for stage in ("prepare", "learner", "metatrain", "augment", "train@none", "train@trivialaugment", "train_learned"):
        assert lock(a)[stage] == lock(b)[stage], stage
