"""bench/gpu_check.py, the GPU path's one unattended check, on a machine without a GPU: its dry run
(`--device cpu`: every part, the CPU in place of CUDA, tiny params) passes every check, and without CUDA
it refuses with one `error:` line."""

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from helpers import STAGES

SCRIPT = REPO / "bench" / "gpu_check.py"


def rows(table: str) -> list[list[str]]:
    """The markdown table's body rows as lists of cells."""
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| part ")]


@pytest.mark.slow  # about 2 min on 2 cores: twelve stage processes, four of them under torchrun
def test_dry_run_passes_every_part(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--keep", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    table = rows(done.stdout)
    assert not [r for r in table if any("FAILED" in cell for cell in r)], done.stdout
    checks = {(r[0], r[1]): r[2] for r in table}
    for stage in [*(s for s in STAGES if s != "train"), "train@none", "train@trivialaugment"]:  # a fixed arm's each
        assert re.fullmatch(r"[\d.]+ s.*", checks["A", f"{stage} on cpu"]), stage
    assert checks["A", "chosen policy"].startswith("baseline point: ")
    assert "gain " in checks["A", "evaluation headline"]
    # both metatrain runs on the CPU, on the same data and settings: the same bytes
    assert checks["B", "policy.json, cpu run vs cpu run"].startswith("identical bytes")
    assert len([r for r in table if r[0] == "C" and "img/s" in r[2]]) == 4
    for mode in ("ddp", "shard"):
        assert "outputs load (2 arms x 2 splits)" in checks["D", f"train, distributed: {mode}, 1 rank(s)"]
    assert "Measured on: " in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the script would run for real")
def test_without_cuda_it_refuses_with_one_error_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["error: no CUDA device (torch.cuda.is_available() is False); expected a GPU "
                                        "machine, or --device cpu for a dry run"]
