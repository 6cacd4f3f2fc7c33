"""Scratch metaaug projects for the benchmarks and the end-to-end tests (tests/helpers.py imports these).

A project is this checkout's pipeline files (dvc.yaml, stages/, metaaug/) and a params file in
a fresh directory, with git and DVC initialised and everything committed: what a user's clone
looks like, where `dvc repro` runs for real.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd, check=True):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def make_project(root: Path, params: dict) -> Path:
    """A fresh project: the repo's pipeline files and package sources, git + DVC initialised (a git identity is
    set for this process where none is, so the first commit works on a bare machine)."""
    for key, value in (("NAME", "metaaug-bench"), ("EMAIL", "bench@example.invalid")):
        os.environ.setdefault(f"GIT_AUTHOR_{key}", value)
        os.environ.setdefault(f"GIT_COMMITTER_{key}", value)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "stages", "metaaug"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    bin_dir = Path(sys.executable).parent
    sh("git", "init", "-q", cwd=root)
    sh(str(bin_dir / "dvc"), "init", "-q", cwd=root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # dvc.yaml's plot templates and the page
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")  # plots.html_template: the offline page
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)
    return root


def kill_group(proc: subprocess.Popen) -> None:
    """Terminate a process started with start_new_session=True and its whole group, killing it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
