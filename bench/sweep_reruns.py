"""What a sweep costs with the pipeline as it is now (a stage's params only what changes its output bytes, only the
chosen search method's section; a DVC stage per fixed arm) against the pipeline at another git revision.

Two scratch projects on tiny params, one with this checkout's dvc.yaml, stages/ and metaaug/, one with that
revision's (each stage runs its project's own package): each runs `dvc repro`, commits, then one
`dvc exp run -S <key>=<value>` per sweep; for each, the stages DVC ran and the wall time.

    nice -n 10 python bench/sweep_reruns.py --before 1bb8168   # prints a markdown table
    python bench/sweep_reruns.py --before 1bb8168 --default --sweeps metatrain.budget=4   # the real trainings

On tiny params the trainings cost next to nothing, so the seconds measure start-ups and the load, and only the
stages run tell the pipelines apart; `--default` runs the repository's params.yaml (100 downstream trainings
of the digits), where the seconds show what a sweep costs.
"""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, make_project, sh  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from conftest import tiny_params  # noqa: E402

# execution knobs, a tracking name, the method not in use's settings (none can change an output), a key of the
# search in use (reruns metatrain and, where the policy's bytes change, what reads it) and one only the learned
# arm reads
SWEEPS = ("metatrain.workers=1", "train.workers=1", "tracking.experiment=sweep", "metatrain.cem.generations=3",
          "metatrain.budget=4", "train.learned_source=on_the_fly")
PIPELINE = ("dvc.yaml", "stages", "metaaug")


def dvc(root: Path, *args: str) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})  # the project's own package
    if out.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} failed in {root}: {out.stderr[-2000:]}")
    return out.stdout


def measure(root: Path, sweeps: list[str]) -> dict[str, tuple[list[str], float]]:
    """Per sweep: the stages `dvc exp run` ran and its wall time (after a first `dvc repro`, committed)."""
    dvc(root, "repro")
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "outputs", cwd=root)
    found = {}
    for sweep in sweeps:
        start = time.perf_counter()
        out = dvc(root, "exp", "run", "-S", sweep)
        found[sweep] = (re.findall(r"Running stage '([^']+)'", out), time.perf_counter() - start)
    return found


def at_revision(root: Path, revision: str) -> None:
    """Replace the project's pipeline files and package with those of git `revision`, committed."""
    archive = subprocess.run(["git", "archive", revision, *PIPELINE], cwd=REPO, capture_output=True, check=True).stdout
    for name in PIPELINE:
        shutil.rmtree(root / name) if (root / name).is_dir() else (root / name).unlink()
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(root, filter="data")
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", f"the pipeline at {revision}", cwd=root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD~1", help="git revision whose pipeline is the 'before'")
    parser.add_argument("--default", action="store_true", help="the repository's params.yaml, not tiny params")
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), help="key=value, one `dvc exp run -S` each")
    args = parser.parse_args()
    params = (yaml.safe_load((REPO / "params.yaml").read_text()) if args.default
              else tiny_params(**{"metatrain.workers": 2, "train.workers": 2}))
    with tempfile.TemporaryDirectory() as tmp:
        after = make_project(Path(tmp) / "after", params)
        old_arms = [*params["train"]["arms"], "learned"]  # before the learned arm had its own stage, it was listed
        before = make_project(Path(tmp) / "before", {**params, "train": {**params["train"], "arms": old_arms}})
        at_revision(before, args.before)
        print("| pipeline | `dvc exp run -S ...` | stages run | s |\n|---|---|---|---|", flush=True)
        for name, root in ((f"at {args.before}", before), ("now", after)):
            for sweep, (ran, seconds) in measure(root, args.sweeps).items():
                print(f"| {name} | `{sweep}` | {', '.join(ran) or 'none'} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
