"""SIGKILL each stage mid-write: its previous outputs stay intact, and the next `dvc repro` completes.

The kill is real: with METAAUG_KILL_BEFORE_RENAME=<output name>, metaaug.publish SIGKILLs its own process once the
new output is completely written to its hidden temp directory, just before the rename that would publish it
-- the latest moment a crash can hit, when the most has been written.
"""

import os
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import tiny_params
from metaaug.publish import KILL_ENV
from metaaug.files import dir_digest
from helpers import dvc, make_project, repro_in_process
from metaaug.declaration import expanded_stages

pytestmark = pytest.mark.slow

# The output each stage publishes first: killed there, none of the stage's outputs may have changed.
FIRST_OUTPUT = {"prepare": "prepared", "learner": "learner", "metatrain": "policy", "augment": "augmented",
                "train@none": "none", "train@trivialaugment": "trivialaugment", "train_learned": "learned",
                "evaluate": "reports"}


def stage_outputs(root: Path, stage: dict) -> list[Path]:
    """The paths dvc.yaml names as a stage's outs and metrics."""
    entries = stage.get("outs", []) + stage.get("metrics", [])
    return [root / (entry if isinstance(entry, str) else next(iter(entry))) for entry in entries]


def snapshot(paths: list[Path]) -> dict[Path, tuple[int, str]]:
    """(inode, content digest) of each output: a replaced output gets a new inode even with equal bytes."""
    return {path: (path.stat().st_ino, dir_digest(path)) for path in paths}


def temps(root: Path) -> list[Path]:
    """Hidden temp outputs (`.<name>.tmp-<pid>-...`) in the workspace."""
    return [p for p in root.rglob(".*.tmp-*") if not {".dvc", ".git"} & set(p.relative_to(root).parts)]


def run_killed(root: Path, cmd: str, output: str) -> subprocess.CompletedProcess:
    """A stage's dvc.yaml command, told to SIGKILL itself before it publishes `output`."""
    argv = [sys.executable if arg == "python" else arg for arg in shlex.split(cmd)]
    return subprocess.run(argv, cwd=root, capture_output=True, text=True, env={**os.environ, KILL_ENV: output})


def test_killed_stages_keep_previous_outputs_and_repro_completes(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project", tiny_params())
    monkeypatch.chdir(root)
    stages = expanded_stages(yaml.safe_load((root / "dvc.yaml").read_text())["stages"], tiny_params())
    repro_in_process(root)
    assert set(stages) == set(FIRST_OUTPUT)
    outputs = {name: stage_outputs(root, stage) for name, stage in stages.items()}
    before = {name: snapshot(paths) for name, paths in outputs.items()}

    # Each stage's own command, killed mid-write: every output it had is untouched (same inode, same bytes).
    with ThreadPoolExecutor(2) as pool:
        killed = dict(zip(stages, pool.map(lambda s: run_killed(root, stages[s]["cmd"], FIRST_OUTPUT[s]), stages)))
    for name, proc in killed.items():
        assert proc.returncode == -signal.SIGKILL, (name, proc.stdout, proc.stderr)
        assert snapshot(outputs[name]) == before[name], name
    left = {p.name.split(".tmp-")[0] for p in temps(root)}  # a stage writes all its outputs before publishing one
    timing_files = {Path(a).name for s in stages.values() for a in shlex.split(s["cmd"]) if a.endswith(".json")}
    every_output = {f".{p.name}" for paths in outputs.values() for p in paths} | {f".{n}" for n in timing_files}
    assert {f".{o}" for o in FIRST_OUTPUT.values()} <= left <= every_output, left

    # Under DVC, with a new seed, killed mid-write in train@none: DVC had removed the old output before running the
    # stage (it keeps it in its cache), so the path is absent, never half-written; `dvc checkout` restores it.
    (root / "params.yaml").write_text(yaml.safe_dump({**tiny_params(), "seed": 1}))
    downstream = root / "models" / "downstream" / "none"
    monkeypatch.setenv(KILL_ENV, FIRST_OUTPUT["train@none"])
    interrupted = dvc(root, "repro")
    monkeypatch.delenv(KILL_ENV)
    assert interrupted.returncode != 0 and "train" in interrupted.stderr, interrupted.stdout + interrupted.stderr
    assert not downstream.exists()
    assert dvc(root, "checkout", "models/downstream/none").returncode == 0
    assert dir_digest(downstream) == before["train@none"][downstream][1]

    # The next `dvc repro` completes: the changed stages run, the pipeline is up to date, no temp is left.
    second = dvc(root, "repro")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage 'train@none'" in second.stdout and "Running stage 'prepare'" not in second.stdout
    assert dir_digest(root / "data" / "prepared") != before["prepare"][root / "data" / "prepared"][1]
    assert "up to date" in dvc(root, "status").stdout
    assert temps(root) == []
