"""Wall times, and the machine they were taken on.

Timings differ run to run and machine to machine, so they never enter a git- or
DVC-tracked file (a fresh clone's `dvc repro` must leave `git status` clean): each
timed stage logs them to its MLflow run and writes them to its own small JSON file
in the git-ignored `timings/` (`timings/metatrain.json`, `timings/train.json`), which
dvc.yaml does not declare. `metaaug results` turns them into the search cost:
metatrain's wall time as a multiple of one downstream training.

`timings/` is not versioned with the outputs, so a timing records what it describes (the MLflow run of the
stage that took it) and the search cost is shown only beside the evaluation of those very runs (evaluate
records the runs it read in evaluation.json: report.write_report).
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from metaaug.errors import MetaaugError
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
    """One stage's wall times (seconds) with the machine (the device the stage ran on) they were taken on, and
    the MLflow run they describe (the active one: the stage's own)."""
    from metaaug.tracking import active_run

    return {**figures, "machine": machine_description(device), "run_id": active_run()[0]}


FIGURES = {"metatrain.json": ("search_seconds", "proxy_seconds", "workers"), "train_learned.json": ("run_seconds",)}
EXPECTED = "the file the pipeline's metatrain or train_learned stage writes there (rerun `dvc repro`)"


def _timing(path: Path) -> dict:
    """One timing file, checked: a mapping with positive finite figures and the machine, else one line."""
    doc = read_json(path, EXPECTED)
    figures = FIGURES[path.name]
    bad = next((k for k in figures if not isinstance(doc, dict) or isinstance(doc.get(k), bool)
                or not isinstance(doc.get(k), (int, float)) or not math.isfinite(doc[k]) or doc[k] <= 0), None)
    if bad is not None or not isinstance(doc.get("machine"), str):
        what = f"{bad!r} is {doc.get(bad)!r}" if bad is not None and isinstance(doc, dict) else "no timing"
        raise MetaaugError(f"{path}: {what}; expected {', '.join(figures)} as positive numbers and the machine, "
                           f"in {EXPECTED}")
    return doc


def search_cost(timings: Path, inputs: dict | None = None) -> dict | str | None:
    """Metatrain's cost from `timings/metatrain.json` and `timings/train_learned.json` (one training: the
    learned arm's median); None while either is missing.
    With `inputs` (evaluation.json's `inputs`: the digests of the outputs evaluate compared), a reason (a
    string) instead of the cost when the timings timed other outputs (each records its output's digest)."""
    search_path, train_path = Path(timings) / "metatrain.json", Path(timings) / "train_learned.json"
    if not (search_path.is_file() and train_path.is_file()):
        return None
    search, train = _timing(search_path), _timing(train_path)
    if inputs is not None:
        for stage, doc in (("metatrain", search), ("train_learned", train)):
            if doc.get("output_digest") is None or doc.get("output_digest") != inputs.get(stage):
                return (f"{timings}/{stage}.json timed another {stage} output than the one the evaluation compared; "
                        "rerun the pipeline to time these outputs")
    one_run = train["run_seconds"]
    return {"search_cost": search["search_seconds"] / one_run,
            "search_cost_one_core": search["proxy_seconds"] / one_run,  # proxy trainings summed over processes
            "downstream_run_seconds": one_run, "search_seconds": search["search_seconds"],
            "workers": search["workers"], "machine": search["machine"]}
