"""Helpers shared by the test modules (test modules never import each other): scratch projects run
in-process, a live `mlflow server` with a pipeline logged to it, and writers of small data files in
the formats metaaug reads (IDX, CIFAR).
"""

import contextlib
import gzip
import io
import os
import pickle
import shlex
import socket
import struct
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from conftest import tiny_config, tiny_params
from metaaug import publish
from metaaug.cli import main
from metaaug.declaration import declarations, expanded_stages

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the scratch projects the benches make too
from _common import kill_group, make_project, sh  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dvc(root: Path, *args, check=True):
    bin_dir = Path(sys.executable).parent
    env_path = f"{bin_dir}:{os.environ['PATH']}"
    return subprocess.run([str(bin_dir / "dvc"), *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PATH": env_path}, check=False)


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str | None = None, inputs: dict | None = None) -> Iterator[Path]:
    """Yield an empty folder that replaces `path` (marked as `kind`, made from `inputs`) only if the block
    succeeds. A stage's outputs go through `runner.stage_run` instead, which publishes them only once
    their MLflow run has its record."""
    staged = publish.stage_output(path, kind)
    with publish.discarded_on_failure(staged):
        yield staged.content
        publish.finish(staged, inputs)
    publish.publish(staged)


def repro_in_process(root: Path) -> None:
    """What `dvc repro` does, minus a fresh interpreter per stage: run each dvc.yaml command (`python
    stages/<name>.py ...`) in this process, where the imports are already paid for (one torch + mlflow
    import instead of five), then `dvc commit` the outputs, so DVC sees the pipeline up to date. The
    caller has chdir'd to root."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for stage in expanded_stages(yaml.safe_load((root / "dvc.yaml").read_text())["stages"], params).values():
        script, *args = shlex.split(stage["cmd"])[1:]
        with pytest.raises(SystemExit) as exit:
            main([Path(script).stem, *args])
        assert exit.value.code == 0, stage["cmd"]
    committed = dvc(root, "commit", "--force")
    assert committed.returncode == 0 and "up to date" in dvc(root, "status").stdout, committed.stderr


STAGES = tuple(declarations())  # every stage module's DECLARATION, in pipeline order


@dataclass(frozen=True)
class ServedPipeline:
    url: str  # the tracking server
    artifacts: Path  # the server's artifact store
    project: Path  # a git + DVC project whose `dvc repro` logged to the server


def run_pipeline(params, d: dict[str, Path], timings: Path | None = None) -> dict:
    """The pipeline through the stage functions (no DVC), into d's folders (prepared, learner, policy,
    augmented, downstream, plots, reports, metrics); wall times into `timings` when given. Returns evaluate's
    comparison."""
    from metaaug.stages import augment, evaluate, learner, metatrain, prepare, train, train_learned

    timed = (lambda name: timings / f"{name}.json") if timings else (lambda name: None)
    prepare.run(params, d["prepared"])
    learner.run(params, d["prepared"], d["learner"])
    metatrain.run(params, d["prepared"], d["policy"], timed("metatrain"), d["learner"])
    augment.run(params, d["prepared"], d["policy"], d["augmented"])
    for arm in params.train.arms:
        train.run(params, arm, d["prepared"], d["learner"], d["downstream"] / arm, timing=timed(f"train@{arm}"))
    train_learned.run(params, d["prepared"], d["learner"], d["downstream"] / "learned", d["policy"], d["augmented"],
                      timed("train_learned"))
    return evaluate.run(params, d["prepared"], d["downstream"], d["metrics"], d["plots"], d["policy"], d.get("reports"))


def search_policies(prepared: Path, outs: list[Path], **overrides) -> None:
    """A tiny prepare into `prepared`, then one metatrain per folder of `outs` (search seeds params' seed, +1,
    ...), each registering its policy as the next version of `tracking.policy_model` in the active store."""
    from metaaug.stages import metatrain, prepare

    params = tiny_config(**{"metatrain.workers": 1, **overrides})
    prepare.run(params, prepared)
    for i, out in enumerate(outs):
        metatrain.run(params.model_copy(update={"seed": params.seed + i}), prepared, out)


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


_served: dict[str, ServedPipeline] = {}  # one per session, whichever module asks first


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
            repro_in_process(project)
            sh("git", "add", "-A", cwd=project)
            sh("git", "commit", "-qm", "pipeline outputs", cwd=project)
        _served["it"] = ServedPipeline(url, root / "artifacts", project)
        yield _served["it"]
    finally:
        _served.pop("it", None)
        kill_group(server)


def stage_runs(url: str) -> dict:
    """DVC stage name (`train@<arm>` for a fixed arm's) -> its run, from the server."""
    import mlflow

    client = mlflow.MlflowClient(url)
    exp = client.get_experiment_by_name("metaaug")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`metaaug.stage` != ''")
    return {dvc_stage_name(r.data.tags): r for r in runs}


def dvc_stage_name(tags: dict) -> str:
    """The DVC stage a stage run ran: its stage, `train@<arm>` for a fixed arm's (a `matrix:` item)."""
    return f"train@{tags['metaaug.arm']}" if tags["metaaug.stage"] == "train" else tags["metaaug.stage"]


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird"]
CIFAR100_NAMES = [b"apple", b"aquarium_fish", b"baby", b"bear"]


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder, prefix, images, labels, gz):
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(array)
        path = folder / f"{prefix}-{kind}-ubyte" if not gz else folder / f"{prefix}-{kind}-ubyte.gz"
        path.write_bytes(gzip.compress(data) if gz else data)


def cifar_batch(images, labels, label_key):
    """A batch dict with the real keys: rows are the R, G, B planes of one image, row-major."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return {b"batch_label": b"batch", label_key: list(labels), b"data": data, b"filenames": [b"x.png"] * len(images)}


def cifar_files(hundred: bool):
    """(folder name, {file name: pickled bytes}, all images, all labels) of a tiny CIFAR-10/100."""
    if hundred:
        folder, names, key = "cifar-100-python", ["train", "test"], b"fine_labels"
        meta = {b"fine_label_names": CIFAR100_NAMES, b"coarse_label_names": [b"fruit", b"people"]}
        meta_name, n_classes = "meta", len(CIFAR100_NAMES)
    else:
        folder, names, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
        meta = {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 2}
        meta_name, n_classes = "batches.meta", len(CIFAR10_NAMES)
    files = {meta_name: pickle.dumps(meta, protocol=2)}
    images, labels, rng = [], [], np.random.default_rng(int(hundred))
    for i, name in enumerate(names):
        batch_images = rng.integers(0, 256, (2, 32, 32, 3), np.uint8)
        batch_labels = [(2 * i) % n_classes, (2 * i + 1) % n_classes]
        batch = cifar_batch(batch_images, batch_labels, key)
        if hundred:
            batch[b"coarse_labels"] = [0, 1]
        files[name] = pickle.dumps(batch)
        images.append(batch_images)
        labels += batch_labels
    return folder, files, np.concatenate(images), labels


def write_cifar_tar(path, folder, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
