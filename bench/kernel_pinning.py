"""What pinning the CPU kernels to AVX2 (metaaug.stages.pin_cpu_kernels, which every stage applies) costs in speed.

One downstream training per learner and size (bench/model_cost.py: the default recipe, 150 epochs), in fresh
processes, alternately unpinned (each library's own choice for this CPU) and pinned, `--rounds` times; the
medians and their ratio. On a CPU whose best level is AVX2 the pins choose what the libraries would have
chosen (ratio ~1); on an AVX-512 CPU they give up its wider kernels for outputs that match every x86-64 CPU.

    python bench/kernel_pinning.py [--rounds 3] [--sizes 8 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from metaaug.stages import PINNED_KERNELS
from metaaug.timing import machine_description

MODEL_COST = Path(__file__).with_name("model_cost.py")


def seconds_per_run(env: dict, sizes: list[str]) -> dict[tuple[str, str], float]:
    """(size, learner) -> seconds of one 150-epoch training, from model_cost.py's table."""
    out = subprocess.run([sys.executable, str(MODEL_COST), "--sizes", *sizes], env=env, capture_output=True,
                         text=True, check=True).stdout
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "x" in line[:10]]
    return {(r[0].strip(), r[1].strip()): float(r[-1]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["8", "32"])
    args = parser.parse_args()
    unpinned = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    runs = {"unpinned": [], "pinned": []}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        runs["unpinned"].append(seconds_per_run(unpinned, args.sizes))
        runs["pinned"].append(seconds_per_run({**unpinned, **PINNED_KERNELS}, args.sizes))
    print("| size | learner | unpinned, s per run | pinned, s per run | pinned / unpinned |\n|---|---|---|---|---|")
    for key in runs["pinned"][0]:
        a, b = (statistics.median(r[key] for r in runs[mode]) for mode in ("unpinned", "pinned"))
        print(f"| {key[0]} | {key[1]} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    print(f"\nmedians of {args.rounds} alternating rounds; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; measured on: {machine_description()}; pins: "
          + ", ".join(f"{k}={v}" for k, v in PINNED_KERNELS.items()))


if __name__ == "__main__":
    main()
