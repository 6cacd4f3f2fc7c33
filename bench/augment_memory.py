"""Peak memory of the augment stage and the learned arm's training on a 60,000-image source, and the
augment throughput of the bounded-memory bank against the all-in-memory path it replaced.

Part 1, scale: a generated source of N 28x28 gray images in 10 classes (the digits, resized, with
noise; `data.source: npz:<file>`), the default protocol (classes 5-9 the target, half of them held
out for testing, so the pool is ~N/4 images). The real stages run as child processes, each one's
peak RSS read from wait4 (ru_maxrss): `prepare`, then `augment` (TrivialAugment-Wide written as the
policy file: the search is not what is measured) at `augment.copies` 10 and 150, then `train` with
the learned arm alone (2 splits) reading the 150-copy bank. Target: augment and train <= 1.5 GiB.

Part 2, speed at the default size: the default pipeline's pool (digits, classes 5-9, 448 images,
150 copies, TrivialAugment-Wide), augmented by the old path (every float copy stacked, then a
uint8 copy, then np.save) and by metaaug.bank.write_bank, alternately in fresh child processes,
`--repeats` times each: median wall time, images/s, peak RSS, and whether the files are
byte-identical. Target: the new path within 20 % of the old one's throughput.

This parent imports nothing heavy (a forked or spawned child's RSS would count it).

    python bench/augment_memory.py [--images 60000] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def make_source(path: Path, n: int, size: int) -> None:
    """n (size x size) gray images: the digits resized, each with its own noise; labels are the digits."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = np.stack([cv2.resize((d * (255 / 16)).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                     for d in digits.images])
    rng = np.random.default_rng(0)
    pick = np.arange(n) % len(base)
    images = np.clip(base[pick] + rng.normal(0, 12, (n, size, size)), 0, 255).round().astype(np.uint8)
    np.savez(path, images=images, labels=digits.target[pick].astype(np.int64))


def stage(name: str, work: Path, *options: str) -> tuple[float, float, str]:
    """One real stage (`python -m metaaug <name>`), its MLflow runs in the work folder's store."""
    return run_measured([sys.executable, "-m", "metaaug", name, "--params", str(work / "params.yaml"), *options],
                        {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"})


def run_measured(args: list[str], env: dict) -> tuple[float, float, str]:
    """(peak RSS in bytes, wall seconds, stdout) of one child process, from its own wait4 rusage."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "METAAUG_PROGRESS": "0", **env},
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args[2:5])} failed:\n{err.read()[-3000:]}")
        return usage.ru_maxrss * 1024, seconds, out.read()


def write_policy(path: Path) -> None:
    """TrivialAugment-Wide as a policy file, in a child (torch stays out of this process)."""
    code = ("import sys; from metaaug.policies import fixed_policy, save_policy; "
            "save_policy(fixed_policy('trivialaugment'), sys.argv[1], {'bench': 'augment_memory'})")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True)


def speed_child(path: str, prepared: str, policy: str, out: str, copies: int) -> None:
    """One augmentation of the prepared pool by `path` (old | new); prints {seconds, images}."""
    import numpy as np
    import torch

    from metaaug.bank import write_bank
    from metaaug.policies import load_policy, sample_apply
    from metaaug.tasks import load_prepared
    from metaaug.training import to_tensor

    data = load_prepared(prepared)
    test = set(data.manifest["test"])
    pool = np.array([i for i in range(len(data.target_labels)) if i not in test])
    x = to_tensor(np.asarray(data.target_images)[pool])
    pol = load_policy(Path(policy) / "policy.json")
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if path == "old":  # metaaug/stages/augment.py before metaaug.bank
        bank = torch.stack([sample_apply(pol, x, gen).clamp_(0, 1) for _ in range(copies)])
        images = (bank * 255).round_().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        np.save(out, images, allow_pickle=False)
    else:
        write_bank(Path(out), pol, x, copies, gen)
    print(json.dumps({"seconds": time.perf_counter() - start, "images": copies * len(pool)}))


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of in a temp dir")
    parser.add_argument("--child", nargs=5, metavar=("PATH", "PREPARED", "POLICY", "OUT", "COPIES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, prepared, policy, out, copies = args.child
        return speed_child(path, prepared, policy, out, int(copies))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        print(f"start: {load()}")
        print(f"\n## Part 1: {args.images:,} images of 28x28 (npz), the real stages as child processes\n")
        work = root / "scale"
        work.mkdir(exist_ok=True)
        source = work / "source.npz"
        if not source.exists():
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'bench'); import augment_memory as b;"
                            f" b.make_source(__import__('pathlib').Path({str(source)!r}), {args.images}, 28)"],
                           cwd=REPO, check=True)
        params = {"data": {"source": f"npz:{source}"}, "tasks": {"splits": 2},
                  "train": {"arms": ["learned"]}, "augment": {"copies": 150}}
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        policy = work / "policy"
        policy.mkdir(exist_ok=True)
        write_policy(policy / "policy.json")
        rows = []
        rss, seconds, out = stage("prepare", work, "--out", str(work / "prepared"))
        rows.append(("prepare", rss, seconds, out.strip().splitlines()[-1]))
        for copies in (10, 150):
            (work / "params.yaml").write_text(yaml.safe_dump({**params, "augment": {"copies": copies}}))
            rss, seconds, out = stage("augment", work, "--prepared", str(work / "prepared"), "--policy", str(policy),
                                      "--out", str(work / f"augmented{copies}"))
            bank = (work / f"augmented{copies}" / "images.npy").stat().st_size
            rows.append((f"augment, {copies} copies (bank {bank / GIB:.2f} GiB on disk)", rss, seconds,
                         out.strip().splitlines()[-1]))
        rss, seconds, out = stage("train", work, "--prepared", str(work / "prepared"), "--policy", str(policy),
                                  "--augmented", str(work / "augmented150"), "--out", str(work / "downstream"),
                                  "--timing", str(work / "train_timing.json"))
        rows.append(("train, learned arm from the 150-copy bank, 2 splits", rss, seconds, out.strip().splitlines()[-1]))
        print("| stage | peak RSS (GiB) | wall (s) | its last line |\n|---|---|---|---|")
        for label, rss, seconds, line in rows:
            print(f"| {label} | {rss / GIB:.2f} | {seconds:.0f} | {line[:90]} |", flush=True)
        worst = max(r[1] for r in rows[1:])
        print(f"\naugment + train peak RSS: {worst / GIB:.2f} GiB (target <= 1.5 GiB: "
              f"{'met' if worst <= 1.5 * GIB else 'NOT met'}); {load()}")

        print("\n## Part 2: default size (digits pool, 448 images x 150 copies, TrivialAugment-Wide), "
              "old path vs metaaug.bank\n")
        default = root / "default"
        default.mkdir(exist_ok=True)
        (default / "params.yaml").write_text(yaml.safe_dump({}))
        stage("prepare", default, "--out", str(default / "prepared"))
        results = {"old": [], "new": []}
        for r in range(args.repeats):
            for path in ("old", "new") if r % 2 == 0 else ("new", "old"):
                rss, _, out = run_measured([sys.executable, str(REPO / "bench" / "augment_memory.py"), "--child", path,
                                            str(default / "prepared"), str(policy), str(default / f"{path}.npy"),
                                            "150"], {})
                results[path].append((json.loads(out)["seconds"], json.loads(out)["images"], rss))
        same = (default / "old.npy").read_bytes() == (default / "new.npy").read_bytes()
        print("| path | median wall (s) | images/s | peak RSS (MiB) |\n|---|---|---|---|")
        speed = {}
        for path, label in (("old", "all in memory (before)"), ("new", "metaaug.bank.write_bank")):
            wall = statistics.median(s for s, _, _ in results[path])
            speed[path] = results[path][0][1] / wall
            print(f"| {label} | {wall:.2f} | {speed[path]:,.0f} | "
                  f"{statistics.median(m for _, _, m in results[path]) / 2 ** 20:.0f} |")
        ratio = speed["new"] / speed["old"]
        print(f"\nnew / old throughput: {ratio:.2f} (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}); "
              f"files byte-identical: {same}; {args.repeats} runs each, alternating; {load()}")
    from metaaug.timing import machine_description

    print(f"\nMeasured on: {machine_description()}.")


if __name__ == "__main__":
    main()
