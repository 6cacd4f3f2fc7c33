"""What verifying the stages' inputs by content costs (docs/integrity.md, "Cost of hashing").

Run in a project after `dvc repro` (or `metaaug prepare`, `metatrain`, `augment`):

    python bench/input_hashing.py

For each input folder: its size, the time `metaaug.ownership.verify_input` takes the first time (hashing
every file against the marker) and again with its files unchanged (stat calls only); then the raw
SHA-256 throughput of this machine on a 256 MiB file, to scale to other data.
"""

import os
import tempfile
import time
from pathlib import Path

from metaaug import files, ownership
from metaaug.timing import machine_description

INPUTS = {"data/prepared": "prepare", "models/policy": "metatrain", "data/augmented": "augment",
          "models/downstream": "train"}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    print(f"{machine_description()}; load average {os.getloadavg()[0]:.1f}")
    for folder, kind in INPUTS.items():
        path = Path(folder).resolve()
        if not path.is_dir():
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        ownership.forget_digests()
        first = timed(lambda: ownership.verify_input(path, kind))
        again = timed(lambda: ownership.verify_input(path, kind))
        print(f"{folder}: {size / 1e6:.1f} MB, verify {1000 * first:.1f} ms, again {1000 * again:.2f} ms")
    with tempfile.NamedTemporaryFile() as fh:
        block = os.urandom(1 << 20)
        for _ in range(256):
            fh.write(block)
        fh.flush()
        seconds = timed(lambda: files.sha256_file(Path(fh.name)))
    print(f"SHA-256: {256 / seconds:.0f} MiB/s")


if __name__ == "__main__":
    main()
