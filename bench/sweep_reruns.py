"""What a sweep costs, with dvc.yaml's params as declared now (only what changes a stage's output bytes, and only
the chosen search method's section) against dvc.yaml at another git revision (whole params sections, tracking names).

Two scratch projects with the same package and tiny params, differing only in dvc.yaml: each runs `dvc repro`,
commits, then one `dvc exp run -S <key>=<value>` per sweep; for each, the stages DVC ran and the wall time.

    nice -n 10 python bench/sweep_reruns.py --before e82b18a   # prints a markdown table
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, make_project, sh  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from conftest import tiny_params  # noqa: E402

# execution knobs, a tracking name, the method not in use's settings (none can change an output), and a key of
# the search in use (reruns metatrain and, where the policy's bytes change, what reads it)
SWEEPS = ("metatrain.workers=1", "train.workers=1", "tracking.experiment=sweep", "metatrain.cem.generations=3",
          "metatrain.budget=4")


def dvc(root: Path, *args: str) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} failed in {root}: {out.stderr[-2000:]}")
    return out.stdout


def measure(root: Path) -> dict[str, tuple[list[str], float]]:
    """Per sweep: the stages `dvc exp run` ran and its wall time (after a first `dvc repro`, committed)."""
    dvc(root, "repro")
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "outputs", cwd=root)
    found = {}
    for sweep in SWEEPS:
        start = time.perf_counter()
        out = dvc(root, "exp", "run", "-S", sweep)
        found[sweep] = (re.findall(r"Running stage '([^']+)'", out), time.perf_counter() - start)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD~1", help="git revision whose dvc.yaml is the 'before'")
    args = parser.parse_args()
    params = tiny_params(**{"metatrain.workers": 2, "train.workers": 2})
    with tempfile.TemporaryDirectory() as tmp:
        after = make_project(Path(tmp) / "after", params)
        before = make_project(Path(tmp) / "before", params)
        old = subprocess.run(["git", "show", f"{args.before}:dvc.yaml"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        (before / "dvc.yaml").write_text(old)
        sh("git", "commit", "-qam", "the old dvc.yaml", cwd=before)
        print("| dvc.yaml | `dvc exp run -S ...` | stages run | s |\n|---|---|---|---|", flush=True)
        for name, root in ((f"at {args.before}", before), ("now", after)):
            for sweep, (ran, seconds) in measure(root).items():
                print(f"| {name} | `{sweep}` | {', '.join(ran) or 'none'} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
