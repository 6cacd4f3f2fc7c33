"""Wall time and peak memory of `dvc repro` on the default data, stage by stage, and of the no-op `dvc repro`.

Builds a fresh project in a temporary directory (the repo's dvc.yaml, stages/ and
metaaug/, the given params; git init, dvc init; MLflow in the project's own
sqlite file), then runs the whole pipeline as one `dvc repro`, as a user does, measuring:

* wall time of the whole `dvc repro`, and of each stage from DVC's `Running stage` line to the next stage's
  (DVC's hashing and lock writing after a stage count to it; a matrix stage's items to the stage: train is the
  four fixed arms); DVC's start-up before the first stage is a row of its own;
* peak RSS of the process tree (dvc + the stage's python and its workers), summed over the tree, sampled every
  50 ms, per stage and in all;
* peak RSS of the largest single process: per stage the largest sampled, for the whole run exact (the kernel's
  maxrss via wait4).

Then one no-op `dvc repro` (nothing may run), and metatrain's cost as a multiple
of one downstream training (timings/: search seconds / median training run,
and the metatrain stage's wall time / the same). Prints a markdown table.
Targets: full default pipeline <= 10 min and <= 2 GiB peak RSS on
2 CPU cores; no-op `dvc repro` <= 5 s.

    python bench/pipeline.py [--params params.yaml] [--keep DIR] [--source rgb32]

`--source rgb32` runs the given params on a 32 px RGB source of 1,797 images instead of their data.source
(bench/coloured_digits.py: the digits resized and coloured); its target is 8 min on 2 cores (issue 34),
and the table names the learner `train.model: auto` chose there, with its evidence (metaaug/learners.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from coloured_digits import coloured_digits  # bench/coloured_digits.py

from _common import REPO, make_project
from metaaug import learners
from metaaug.files import read_json
from metaaug.timing import machine_description, search_cost

GIB = 1 << 30
TARGETS = {"pipeline_seconds": 600, "peak_rss": 2 * GIB, "noop_seconds": 5}
RGB32_PIPELINE_SECONDS = 480


# A small launcher runs each command and reports its children's maxrss: a child's maxrss starts
# at its parent's RSS at fork time, so forking from this process (which holds more) would inflate it.
LAUNCHER = ("import resource, subprocess, sys\n"
            "code = subprocess.call(sys.argv[2:])\n"
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(code)\n")


STARTUP = "DVC start-up"  # the time before DVC's first `Running stage` line


def measure(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run `cmd`; wall seconds, peak summed RSS of its process tree (sampled), largest process's maxrss (exact),
    and per DVC stage it ran (`stages`: wall seconds, sampled peaks of the tree and of its largest process)."""
    maxrss = cwd / ".bench.maxrss"
    start = time.perf_counter()
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(maxrss), *cmd], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    events = [(STARTUP, start)]  # (stage, when its `Running stage` line came), appended by the reader thread

    def read() -> None:
        with open(cwd / ".bench.log", "ab") as log:
            for line in launcher.stdout:
                log.write(line)
                if match := re.match(rb"Running stage '([^'@]+)", line):
                    events.append((match.group(1).decode(), time.perf_counter()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks = {}  # stage -> (tree, largest process)
    try:
        while launcher.poll() is None:
            sizes = process_rss(launcher.pid)
            stage = events[-1][0]
            tree, largest = peaks.get(stage, (0, 0))
            peaks[stage] = (max(tree, sum(sizes)), max([largest, *sizes]))
            time.sleep(0.05)
    finally:
        if launcher.poll() is None:  # interrupted: stop the whole measured tree, not just the launcher
            os.killpg(launcher.pid, signal.SIGTERM)
    reader.join()
    end = time.perf_counter()
    if launcher.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}; see {cwd / '.bench.log'}")
    stages = {}
    for (stage, began), (_, ended) in zip(events, [*events[1:], (None, end)]):
        row = stages.setdefault(stage, {"seconds": 0.0, "peak_tree": 0, "peak_process": 0})
        row["seconds"] += ended - began
        row["peak_tree"], row["peak_process"] = (max(a, b) for a, b in zip(
            (row["peak_tree"], row["peak_process"]), peaks.get(stage, (0, 0))))
    return {"seconds": end - start, "peak_tree": max((t for t, _ in peaks.values()), default=0),
            "peak_process": int(maxrss.read_text()) * 1024, "stages": stages}


def process_rss(launcher_pid: int) -> list[int]:
    """RSS of each of the launcher's descendants now (not the launcher); one that ends while we look counts 0."""
    try:
        tree = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.Error:
        return []
    sizes = []
    for p in tree:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return sizes


def run(project: Path) -> tuple[dict, dict, dict]:
    """The pipeline as one `dvc repro`, then the no-op repro. Returns (the repro's measurements with its stages,
    no-op measurement, search cost from timings/)."""
    bin_dir = Path(sys.executable).parent
    # PYTHONPATH: the stages import the project's own copy of metaaug, a snapshot unaffected by later edits
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(project),
           "METAAUG_PROGRESS": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    dvc = str(bin_dir / "dvc")
    repro = measure([dvc, "repro"], project, env)
    for name, m in repro["stages"].items():
        print(f"{name}: {m['seconds']:.1f} s", file=sys.stderr)
    log_size = (project / ".bench.log").stat().st_size
    noop = measure([dvc, "repro"], project, env)
    if "Running stage" in (project / ".bench.log").read_bytes()[log_size:].decode(errors="replace"):
        raise SystemExit("the no-op `dvc repro` ran a stage: the pipeline is not reproducible as cached")
    return repro, noop, search_cost(project / "timings")


def code_version() -> str:
    """The repo's commit, and whether the working tree (which the project copied) differed from it."""
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "metaaug", "stages", "dvc.yaml", "params.yaml")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (" with uncommitted changes" if dirty else "")


def table(repro: dict, noop: dict, cost: dict, limit: float = TARGETS["pipeline_seconds"]) -> str:
    """The markdown report: one row per stage, the total, the no-op, the search-cost ratios, the verdicts."""
    mib = lambda b: f"{b / (1 << 20):,.0f}"  # noqa: E731
    stages = repro["stages"]
    lines = ["| stage | wall time (s) | peak RSS, process tree (MiB) | peak RSS, largest process (MiB) |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {m['seconds']:.1f} | {mib(m['peak_tree'])} | {mib(m['peak_process'])} |"
              for name, m in stages.items()]
    total, peak = repro["seconds"], repro["peak_tree"]
    lines += [f"| **full pipeline** (one `dvc repro`) | **{total:.1f}** | **{mib(peak)}** | "
              f"**{mib(repro['peak_process'])}** |",
              f"| no-op `dvc repro` | {noop['seconds']:.1f} | {mib(noop['peak_tree'])} | {mib(noop['peak_process'])} |"]
    one = cost["downstream_run_seconds"]
    checks = [(f"full pipeline ≤ {limit / 60:g} min", f"{total / 60:.1f} min", total <= limit),
              ("peak RSS ≤ 2 GiB", f"{peak / GIB:.2f} GiB", peak <= TARGETS["peak_rss"]),
              ("no-op `dvc repro` ≤ 5 s", f"{noop['seconds']:.1f} s", noop["seconds"] <= TARGETS["noop_seconds"])]
    lines += ["", f"One downstream training (median over the learned arm's splits): {one:.2f} s. Metatrain: "
              f"search {cost['search_cost']:.1f}× one training (timings/; proxy trainings summed over processes "
              f"{cost['search_cost_one_core']:.1f}×), whole stage "
              f"{stages['metatrain']['seconds'] / one:.1f}× (with DVC and MLflow start-up).", "",
              "Targets: " + "; ".join(f"{label}: {value}, {'met' if ok else '**missed**'}"
                                      for label, value, ok in checks) + ".",
              "", f"Measured on: {machine_description()}; code: {code_version()}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file to run with")
    parser.add_argument("--keep", type=Path, help="build the project here and keep it (default: a temp dir)")
    parser.add_argument("--source", choices=["rgb32"], help="replace data.source by this bench source")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists():
        raise SystemExit(f"--keep {args.keep}: already exists; expected a new directory for the project")
    os.environ["DVC_NO_ANALYTICS"] = "1"  # no analytics daemon in the measured process trees
    root = args.keep or Path(tempfile.mkdtemp(prefix="metaaug-bench-"))
    try:
        params = yaml.safe_load(args.params.read_text())
        if args.source == "rgb32":
            root.mkdir(parents=True, exist_ok=True)
            images, labels = coloured_digits(32)
            np.savez(root / "rgb32.npz", images=images, labels=labels)
            params["data"] = {**params.get("data", {}), "source": f"npz:{root / 'rgb32.npz'}"}
        project = make_project(root / "project", params)
        load = os.getloadavg()[0]
        results = run(project)
        print(table(*results, RGB32_PIPELINE_SECONDS if args.source == "rgb32" else TARGETS["pipeline_seconds"]))
        accuracy = {k: v for k, v in read_json(project / "metrics.json").items() if not k.startswith("gain")}
        print("\nTest accuracy, mean over the splits (%): " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
        if (project / "models/learner" / learners.FILE).exists():
            print("\n" + " ".join(learners.markdown(read_json(project / "models/learner" / learners.FILE))))
        print(f"1-minute load average before / after: {load:.1f} / {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores (other jobs on the machine lengthen the wall times).")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
