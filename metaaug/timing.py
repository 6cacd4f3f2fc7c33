"""Wall times, and the machine they were taken on.

Timings differ run to run and machine to machine, so they never enter a git- or
DVC-tracked file (a fresh clone's `dvc repro` must leave `git status` clean): each
timed stage logs them to its MLflow run and writes them to its own small JSON file
in the git-ignored `timings/` (`timings/metatrain.json`, `timings/train.json`), which
dvc.yaml does not declare. `metaaug results` turns them into the search cost:
metatrain's wall time as a multiple of one downstream training.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from metaaug.files import read_json


def machine_description(device: torch.device | str | None = None) -> str:
    """Where the timings were taken: the GPU when `device` is CUDA (by default: when one is present), else the
    CPU model and core count."""
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if cuda:
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def timing_doc(device: torch.device | None = None, **figures: float) -> dict:
    """One stage's wall times (seconds) with the machine (the device the stage ran on) they were taken on."""
    return {**figures, "machine": machine_description(device)}


def search_cost(timings: Path) -> dict | None:
    """Metatrain's cost from `timings/metatrain.json` and `timings/train.json`; None while either is missing."""
    search, train = Path(timings) / "metatrain.json", Path(timings) / "train.json"
    if not (search.is_file() and train.is_file()):
        return None
    search, train = read_json(search), read_json(train)
    one_run = train["run_seconds"]
    return {"search_cost": search["search_seconds"] / one_run,
            "search_cost_one_core": search["proxy_seconds"] / one_run,  # proxy trainings summed over processes
            "downstream_run_seconds": one_run, "search_seconds": search["search_seconds"],
            "workers": search["workers"], "machine": search["machine"]}
