"""The train stage under `torchrun` on the CPU (2 processes, gloo) against one process.

`shard` must reproduce single-process training exactly; `ddp` (one learner over both ranks, batches
split unevenly: 25 images in batches of 10 -> slices of 5/5, 5/5, 3/2) within float tolerance.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_params
from metaaug.errors import MetaaugError
from metaaug.io import read_json
from metaaug.config import validate
from metaaug.stages import train
from metaaug.tasks import prepare
from metaaug.config import TrainConfig
from metaaug.training import predict, to_tensor, train_learner

ARMS = ["none", "trivialaugment"]


def params_for(mode: str) -> dict:
    params = tiny_params(**{"train.arms": ARMS, "train.batch_size": 10, "train.distributed": mode})
    params["tracking"]["experiment"] = f"dist-{mode}"
    return params


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Prepared target splits and the train stage's outputs from one process."""
    root = tmp_path_factory.mktemp("dist")
    params = validate(params_for("none"))
    (root / "prepared").mkdir()
    prepare(params.data, params.tasks, params.seed, root / "prepared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri(root))
        train.run(params, root / "prepared", root / "single")
    return root


def tracking_uri(root: Path) -> str:
    """One MLflow store for the module (its tables take seconds to create); one experiment per mode."""
    return f"sqlite:///{root / 'mlflow.db'}"


def torchrun(root: Path, mode: str, out: Path) -> None:
    """`torchrun --nproc_per_node=2 stages/train.py ...`, the command in docs/scaling.md."""
    params_file = root / f"{mode}.yaml"
    params_file.write_text(yaml.safe_dump(params_for(mode)))
    torchrun_bin = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun_bin), "--standalone", "--nproc_per_node=2", str(REPO / "stages/train.py"),
           "--params", str(params_file), "--prepared", str(root / "prepared"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_uri(root)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("train: none: 2 splits") == 1, done.stdout  # rank 0 alone reports


def outputs(out: Path, arm: str) -> tuple[list[dict], list[dict]]:
    return torch.load(out / f"{arm}.pt", weights_only=True), read_json(out / "results.json")["arms"][arm]


def stage_runs(root: Path, mode: str) -> tuple:
    """The train stage's run for `mode`, and its arm x split runs (in the splits experiment)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(root))
    exp = client.get_experiment_by_name(f"dist-{mode}")
    runs = client.search_runs([exp.experiment_id])
    train = [r for r in runs if r.data.tags.get("metaaug.stage") == "train"]
    children = client.search_runs([client.get_experiment_by_name(f"dist-{mode}-splits").experiment_id])
    return train, children


def against_single(root: Path, mode: str) -> list[tuple[dict, dict, dict, dict]]:
    """Run `mode` under torchrun and check its MLflow runs; then per training: (state dict, single-process
    state dict, results.json record, single-process record)."""
    torchrun(root, mode, root / mode)
    train, children = stage_runs(root, mode)
    assert len(train) == 1 and train[0].data.params["train.distributed"] == mode
    assert train[0].data.params["train.ranks"] == "2" and len(children) == len(ARMS) * 2
    pairs = []
    for arm in ARMS:
        (states, runs), (ref_states, ref_runs) = outputs(root / mode, arm), outputs(root / "single", arm)
        assert len(states) == len(ref_states) == 2 and states[0].keys() == ref_states[0].keys()
        pairs += zip(states, ref_states, runs, ref_runs)
    return pairs


@pytest.mark.slow
def test_shard_over_two_ranks_reproduces_one_process_exactly(single):
    for state, ref, run, ref_run in against_single(single, "shard"):
        assert all(torch.equal(state[k], ref[k]) for k in ref)
        assert run["curves"] == ref_run["curves"]


@pytest.mark.slow
def test_ddp_over_two_ranks_matches_one_process_within_tolerance(single):
    for state, ref, run, ref_run in against_single(single, "ddp"):
        for key in ref:
            assert torch.allclose(state[key].float(), ref[key].float(), rtol=1e-3, atol=1e-4), key
        assert run["curves"]["loss"] == pytest.approx(ref_run["curves"]["loss"], rel=1e-4)
        assert run["curves"]["train_acc"] == ref_run["curves"]["train_acc"]


def test_distributed_without_torchrun_stops_before_writing(single, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(MetaaugError, match=r"train.distributed = ddp needs processes started by torchrun.*expected"):
        train.run(validate(params_for("ddp")), single / "prepared", single / "never")
    assert not (single / "never").exists()


def test_several_processes_without_a_distributed_mode_stop_before_writing(single, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MetaaugError, match=r"train.distributed = none, but torchrun started 2 processes; expected"):
        train.run(validate(params_for("none")), single / "prepared", single / "never")
    assert not (single / "never").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (this test runs on GPU machines)")
def test_cuda_training_matches_cpu_within_mixed_precision_tolerance():
    """bfloat16 autocast on CUDA vs float32 on the CPU: same learner, seed and data; close curves and answers."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = to_tensor((digits.images[:50] * 255 / 16).astype("uint8")[..., None])
    y = torch.tensor(digits.target[:50])
    settings = TrainConfig(epochs=5, batch_size=25)
    cpu_model, cpu = train_learner(x, y, 10, settings, seed=1, device=torch.device("cpu"))
    gpu_model, gpu = train_learner(x, y, 10, settings, seed=1, device=torch.device("cuda"))
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=0.05)
    assert (predict(cpu_model, x) == predict(gpu_model, x)).mean() >= 0.9
