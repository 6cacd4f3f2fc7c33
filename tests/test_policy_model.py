"""The registered policy is self-contained: it loads and predicts where metaaug is not installed.

* the logged model carries the metaaug modules applying a policy runs (its `code/`), pip requirements that
  name the real runtime distributions pinned (no `metaaug`, which no index serves), an input example and
  the signature;
* slow: `mlflow models serve` with MLflow's own environment manager builds a fresh virtualenv from what the
  model records (run from a folder outside the repository, no PYTHONPATH), in which metaaug is not
  importable, and the model's predictions there equal metaaug.augment_batch's here. (`mlflow.models.predict`
  would do the same, but it installs Python itself into a new pyenv root on every call: a download.)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import metaaug
from conftest import REPO
from helpers import search_policies
from metaaug import policy_bundle

MODEL = "models:/digits-policy@current"


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """prepare, then metatrain once under a named registered model; returns the policy directory."""
    monkeypatch.chdir(tmp_path)
    search_policies(tmp_path / "prepared", [tmp_path / "policy"], **{"tracking.policy_model": "digits-policy"})
    return tmp_path / "policy"


def test_the_bundle_is_what_applying_a_policy_imports():
    files, third_party = policy_bundle.closure()
    names = {str(f.relative_to(policy_bundle.PACKAGE)) for f in files}
    assert {"__init__.py", "api.py", "policies.py", "ops.py", "errors.py"} <= names
    # nothing of the pipeline: no stage, no tracking, no search, no data sources
    assert not {n for n in names if n.startswith(("stages", "search", "data", "tracking", "registry", "cli"))}
    assert {"torch", "albumentations", "cv2", "numpy"} <= third_party
    assert not third_party & {"sklearn", "dvc", "typer", "matplotlib", "metaaug"}
    pins = dict(line.split("==") for line in policy_bundle.pip_requirements())
    assert pins["torch"] == "2.13.0"  # the public version: a CPU machine's pip takes the CPU wheel
    assert "metaaug" not in pins and "mlflow" not in pins  # MLflow pins itself


def test_the_logged_model_records_its_code_requirements_and_example(registered):
    local = Path(mlflow.artifacts.download_artifacts(MODEL))
    code = {str(p.relative_to(local / "code")) for p in (local / "code").rglob("*.py")}
    assert code == {f"metaaug/{f.relative_to(policy_bundle.PACKAGE)}" for f in policy_bundle.closure()[0]}
    requirements = (local / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    assert not [r for r in requirements if r.startswith("metaaug")]
    example = json.loads((local / "serving_input_example.json").read_text())
    assert np.array(example["inputs"]).shape == (2, 8, 8, 1) and example["params"] == {"seed": 0}
    info = mlflow.models.get_model_info(MODEL)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert info.saved_input_example_info is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, log: Path, seconds: float) -> None:
    """Until `url` answers 200; fails with the server's log when it exits or the time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the model server exited {server.returncode}:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(2)
    pytest.fail(f"the model server did not answer within {seconds} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pyenv") is None, reason="MLflow's virtualenv environment manager needs pyenv")
def test_the_model_serves_from_a_fresh_environment_built_from_what_it_records(registered, tmp_path):
    """`mlflow models serve --env-manager virtualenv` (MLflow's environment manager: a new virtualenv from the
    model's python_env.yaml and requirements.txt, installed by pip from this machine's package index), run
    from a folder outside the repository with no PYTHONPATH: nothing of this checkout is reachable there.
    Offline but for the package index, when pyenv already holds this Python version (else it downloads it)."""
    assert REPO not in tmp_path.parents and Path.cwd() == tmp_path
    envs, log, port = tmp_path / "envs", tmp_path / "serve.log", free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_ENV_ROOT": str(envs)}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL, "-p", str(port),
                                   "--env-manager", "virtualenv"], cwd=tmp_path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server, log, seconds=900)
        images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
            data=json.dumps({"inputs": images.tolist(), "params": {"seed": 7}}).encode())
        with urllib.request.urlopen(request, timeout=120) as answer:
            out = np.array(json.loads(answer.read())["predictions"], dtype=np.uint8)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    policy = metaaug.load_policy(registered)
    expected = metaaug.augment_batch(policy, torch.from_numpy(images).permute(0, 3, 1, 2),
                                     torch.Generator().manual_seed(7)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(out, expected)
    # the environment it ran in has no metaaug of its own: the model's code/ was all it had
    (python,) = envs.glob("*/bin/python")
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('metaaug'))"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert found.stdout.strip() == "None"
