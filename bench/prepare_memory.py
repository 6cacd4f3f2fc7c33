"""Peak memory of `metaaug prepare` on a 100k-image source, and what it costs when only part of it is used.

Writes a synthetic source of N small gray images (default 100,000 PNGs of 28x28 in 100 class folders,
plus the same images as one raw IDX pair and one uncompressed .npz) into a temp folder, then runs the
real prepare stage (`python -m metaaug prepare`, MLflow logging included) in a child process per row
and reads that child's peak RSS (ru_maxrss from wait4). Linux counts a child's memory from before its
exec too, so this parent stays small: the source is made in a forked helper, and nothing heavy is
imported here until the measurements are done. Rows:

* digits: the default 1,797-image source, the floor (Python, torch, MLflow, matplotlib);
* every class used: the big folder is data.source, so prepare needs all of it;
* 5 of 100 classes used: digits for meta-training, the big source as tasks.target_source with
  five target classes: an image folder decodes only those five folders, IDX and npz images are
  memory-mapped, so only the pages of the kept images are read.

    python bench/prepare_memory.py [--images 100000] [--classes 100] [--size 28] [--keep DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_source(root: Path, n: int, classes: int, size: int) -> None:
    """N noisy gray images, class k brighter by k: an image folder, an IDX pair and an .npz of the same pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    brighter = (labels * (127 // classes)).astype(np.uint8)
    images = rng.integers(0, 128, (n, size, size), dtype=np.uint8) + brighter[:, None, None]
    for k in range(classes):
        (root / "folder" / f"c{k:03d}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / "folder" / f"c{label:03d}" / f"{i:06d}.png", compress_level=1)
    (root / "idx").mkdir(exist_ok=True)
    header = lambda shape: bytes([0, 0, 0x08, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    (root / "idx" / "train-images-idx3-ubyte").write_bytes(header(images.shape) + images.tobytes())
    (root / "idx" / "train-labels-idx1-ubyte").write_bytes(header(labels.shape) + labels.astype(np.uint8).tobytes())
    np.savez(root / "data.npz", images=images, labels=labels)
    (root / "done").touch()


def peak_rss(params: dict, work: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one `python -m metaaug prepare` child."""
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "METAAUG_PROGRESS": "0"}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "metaaug", "prepare", "--params", str(work / "params.yaml"),
                              "--out", str(work / "prepared")], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"prepare failed: {child.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--keep", type=Path, help="write (or reuse) the synthetic source here instead of a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "source"
        start = time.perf_counter()
        if not (root / "done").exists():
            helper = multiprocessing.get_context("fork").Process(
                target=make_source, args=(root, args.images, args.classes, args.size))
            helper.start()
            helper.join()
        print(f"source: {args.images:,} images of {args.size}x{args.size} in {args.classes} classes "
              f"({args.images * args.size ** 2 / 2 ** 20:.0f} MiB of pixels), ready in {time.perf_counter() - start:.0f} s")
        names = {"imagefolder": [f"c{k:03d}" for k in range(5)], "idx": [str(k) for k in range(5)],
                 "npz": [str(k) for k in range(5)]}
        paths = {"imagefolder": root / "folder", "idx": root / "idx", "npz": root / "data.npz"}
        per_class = args.images // args.classes
        small = {"tasks": {"splits": 2, "shots": 5}}
        pixels = args.size ** 2
        rows = [("digits (the floor)", 1797, 8 * 8, {})]
        rows += [(f"{kind}: every class used", args.images, pixels,
                  {"data": {"source": f"{kind}:{paths[kind]}"}, "tasks": {"target_classes": names[kind]}})
                 for kind in ("imagefolder", "idx", "npz")]
        rows += [(f"{kind}: 5 of {args.classes} classes used", 5 * per_class, pixels,
                  {"tasks": {"target_source": f"{kind}:{paths[kind]}", "target_classes": names[kind]}})
                 for kind in ("imagefolder", "idx", "npz")]
        print("\n| source | images used | their pixels (MiB) | peak RSS (MiB) | wall (s) |\n|---|---|---|---|---|")
        for i, (label, used, size, params) in enumerate(rows):
            work = Path(tmp) / f"run{i}"
            work.mkdir()
            merged = {**params, "tasks": {**small["tasks"], **params.get("tasks", {})}}
            rss, seconds = peak_rss(merged, work)
            print(f"| {label} | {used:,} | {used * size / 2 ** 20:.1f} | {rss:.0f} | {seconds:.1f} |",
                  flush=True)
    from metaaug.timing import machine_description

    print(f"\nMeasured on: {machine_description()}.")


if __name__ == "__main__":
    main()
