"""A newcomer's first hour, replayed on a fresh clone: the README's two quick-start commands as written, then
what a user checks first. Prints one markdown table (docs/benchmarks.md holds a run's output).

    python bench/first_hour.py [--repo URL_OR_PATH] [--skip-tests] [--keep DIR]

Checks: command 1 (set up + `dvc repro`) exits 0 and leaves `git status` clean (the committed dvc.lock, metrics
and plots reproduced byte for byte); `dvc metrics show` fits 120 columns; `metaaug --help` and `--version` take
under 1 s; `dvc exp show --only-changed` fits 200 columns; command 2 (set up + the test suite) exits 0.
The commands are read from the README's quick-start block, so what is tested is what the README says.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start(readme: Path) -> list[str]:
    """The commands of the README's first bash block under '## Quick start' (comments dropped)."""
    section = readme.read_text().split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def timed(command: str, cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=env)
    return done, time.perf_counter() - start


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(REPO), help="what to clone (default: this repository)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out command 2 (about 12 minutes)")
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    where = args.keep or Path(tempfile.mkdtemp(prefix="metaaug-first-hour-"))
    clone = where / "metaaug"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    setup, tests = quick_start(clone / "README.md")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    rows = [("machine", machine(), "")]

    done, seconds = timed(setup, clone, env)
    rows.append(("command 1: set up + `dvc repro`", f"exit {done.returncode}, {seconds / 60:.1f} min",
                 "pass" if done.returncode == 0 else "FAIL: " + done.stderr.strip()[-300:]))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    rows.append(("`git status` after `dvc repro`", "clean" if not status else status.replace("\n", "; ")[:300],
                 "pass" if not status else "FAIL"))
    venv = {**env, "PATH": f"{clone / '.venv' / 'bin'}:{env['PATH']}"}
    table = subprocess.run(["dvc", "metrics", "show"], cwd=clone, capture_output=True, text=True, env=venv).stdout
    width = max(map(len, table.splitlines()), default=0)
    rows.append(("`dvc metrics show` width", f"{width} columns", "pass" if 0 < width <= 120 else "FAIL"))
    table = subprocess.run(["dvc", "exp", "show", "--only-changed", "--no-pager"], cwd=clone, capture_output=True,
                           text=True, env={**venv, "COLUMNS": "200"}).stdout
    width = max(map(len, table.splitlines()), default=0)
    rows.append(("`dvc exp show --only-changed` width", f"{width} columns", "pass" if 0 < width <= 200 else "FAIL"))
    for flag in ("--help", "--version"):
        times = [timed(f"metaaug {flag}", clone, venv)[1] for _ in range(3)]
        median = statistics.median(times)
        rows.append((f"`metaaug {flag}`", f"{median:.2f} s (median of 3)", "pass" if median < 1 else "FAIL"))
    if not args.skip_tests:
        done, seconds = timed(tests, clone, env)
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        rows.append(("command 2: set up + the test suite", f"exit {done.returncode}, {seconds / 60:.1f} min: {summary}",
                     "pass" if done.returncode == 0 else "FAIL"))
    print("| check | result | verdict |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.keep is None:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
