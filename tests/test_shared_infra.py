"""Shared infrastructure, locally: the pipeline logs to a real `mlflow server` (SQLite backend, artifacts
served into its own directory) instead of a local file, and DVC versions the data in a remote (a local
directory): `dvc push`, then `dvc pull` into a fresh clone restores `data/augmented/` byte for byte.

`served_pipeline` is session-wide and also used by test_mlflow_ui.py: one server, one pipeline run
(test_pipeline_dvc.py covers `dvc repro` itself).
"""

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import tiny_params
from test_bad_inputs import free_port
from test_pipeline_dvc import dvc, make_project, sh

pytestmark = pytest.mark.slow
STAGES = ("prepare", "metatrain", "augment", "train", "evaluate")


@dataclass(frozen=True)
class ServedPipeline:
    url: str  # the tracking server
    artifacts: Path  # the server's artifact store
    project: Path  # a git + DVC project whose `dvc repro` logged to the server


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port, in its own process group (it starts a uvicorn worker)."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1], "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner processes
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True), url


def wait_healthy(server: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited ({server.returncode}):\n{log.read_text()}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK":
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    """Terminate the server's process group (the server and its worker), killing it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


_served: dict[str, ServedPipeline] = {}  # one per session, whichever module asks first


def run_stages(project: Path) -> None:
    """Every dvc.yaml stage's command, in order, in this process (one torch + mlflow import instead of five
    interpreters), then `dvc commit` records the outputs in dvc.lock as `dvc repro` would have."""
    from metaaug.cli import main

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[:2] == ["python", f"stages/{name}.py"], stage["cmd"]
        with pytest.raises(SystemExit) as done:
            main([name, *argv[2:]])
        assert done.value.code in (0, None), f"{name} exited {done.value.code}"
    committed = dvc(project, "commit", "--force")
    assert committed.returncode == 0, committed.stdout + committed.stderr


@pytest.fixture(scope="session")
def served_pipeline(tmp_path_factory):
    """A tiny pipeline run with MLFLOW_TRACKING_URI pointing at a live `mlflow server`, committed with DVC."""
    if "it" in _served:
        yield _served["it"]
        return
    root = tmp_path_factory.mktemp("shared")
    server, url = start_mlflow_server(root)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for var in ("AUTHOR", "COMMITTER"):  # the autouse fixture that sets these is per test
                mp.setenv(f"GIT_{var}_NAME", "metaaug-test")
                mp.setenv(f"GIT_{var}_EMAIL", "test@example.invalid")
            project = make_project(root / "project", tiny_params(**{"metatrain.workers": 1}))  # as the server starts
            wait_healthy(server, url, root / "server.log")
            mp.setenv("MLFLOW_TRACKING_URI", url)
            mp.chdir(project)
            run_stages(project)
            sh("git", "add", "-A", cwd=project)
            sh("git", "commit", "-qm", "pipeline outputs", cwd=project)
        _served["it"] = ServedPipeline(url, root / "artifacts", project)
        yield _served["it"]
    finally:
        _served.pop("it", None)
        stop(server)


def stage_runs(url: str) -> dict:
    """Stage name -> its run, from the server."""
    import mlflow

    client = mlflow.MlflowClient(url)
    exp = client.get_experiment_by_name("metaaug")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`metaaug.stage` != ''")
    return {r.data.tags["metaaug.stage"]: r for r in runs}


def test_pipeline_logs_runs_and_artifacts_to_the_server(served_pipeline, tmp_path):
    import mlflow

    runs = stage_runs(served_pipeline.url)
    assert sorted(runs) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    metrics = yaml.safe_load((served_pipeline.project / "metrics.json").read_text())
    assert runs["evaluate"].data.metrics["arms.none.mean"] == pytest.approx(metrics["arms"]["none"]["mean"])
    assert runs["train"].data.tags["upstream.augment"] == runs["augment"].info.run_id
    assert not (served_pipeline.project / "mlflow.db").exists()  # nothing went to the local default
    # artifacts went through the server into its artifact store, and come back byte for byte
    prepare = runs["prepare"].info
    got = mlflow.MlflowClient(served_pipeline.url).download_artifacts(prepare.run_id, "target_samples.png", tmp_path)
    stored = list(served_pipeline.artifacts.rglob(f"{prepare.run_id}/artifacts/target_samples.png"))
    assert len(stored) == 1 and Path(got).read_bytes() == stored[0].read_bytes()


def test_dvc_push_then_pull_into_a_fresh_clone_restores_augmented_data(served_pipeline, tmp_path):
    project, remote = served_pipeline.project, tmp_path / "remote"
    for args in (("remote", "add", "-d", "shared", str(remote)), ("push",)):
        done = dvc(project, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    sh("git", "commit", "-qam", "dvc remote", cwd=project)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "data/augmented").exists()
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    original = sorted(p.relative_to(project) for p in (project / "data/augmented").rglob("*") if p.is_file())
    restored = sorted(p.relative_to(clone) for p in (clone / "data/augmented").rglob("*") if p.is_file())
    assert original == restored and any(p.name == "images.npy" for p in original)
    assert all((project / p).read_bytes() == (clone / p).read_bytes() for p in original)
    status = dvc(clone, "status")
    assert "up to date" in status.stdout, status.stdout
