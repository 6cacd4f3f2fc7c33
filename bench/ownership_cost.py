"""What proving ownership and taking the store lock cost, side by side with the work they guard
(docs/benchmarks.md, "Ownership and lock").

    python bench/ownership_cost.py [--mb 64] [--repeat 20]

In a temp folder on the disk the outputs live on: a marked output of `--mb` MB (a prepared set's size at the
defaults is about 20 MB) is checked before it is replaced (`ownership.check_output`: every file hashed against
its marker, then again with its files unchanged: stat calls only), beside reading its bytes once (the least any
stage that reads it pays); then a publish that keeps the folder's mode, group and ACLs beside one without; then
the store lock (`store.store_lock`: open with O_NOFOLLOW, flock, record the holder, close) beside opening the
SQLite store the way `check_store` does (connect, BEGIN IMMEDIATE, ROLLBACK). Each pair is timed in one run,
alternating, and reported as a ratio.
"""

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from metaaug import ownership, publish
from metaaug.store import store_lock
from metaaug.timing import machine_description


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def marked_output(path: Path, mb: int) -> None:
    staged = publish.stage_output(path, "prepare")
    for i in range(8):  # a few files, as a prepared set has
        (staged.content / f"part{i}.npy").write_bytes(os.urandom(mb * (1 << 20) // 8))
    publish.finish(staged)
    publish.publish(staged)


def read_all(path: Path) -> None:
    for f in sorted(path.iterdir()):
        f.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"{machine_description()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as d:
        out = Path(d) / "out"
        marked_output(out, args.mb)

        def cold():
            ownership.forget_digests()
            ownership.check_output(out, "prepare")

        cold_ms, read_ms = median_ms(cold, 5), median_ms(lambda: read_all(out), 5)
        warm_ms = median_ms(lambda: ownership.check_output(out, "prepare"), args.repeat)
        print(f"marker check, {args.mb} MB output: first {cold_ms:.1f} ms, again {warm_ms:.2f} ms; reading its "
              f"bytes once {read_ms:.1f} ms (first check / read = {cold_ms / read_ms:.2f})")

        small = Path(d) / "small"
        marked_output(small, 0)
        real_keep = publish.keep_attributes
        kept = median_ms(lambda: marked_output(small, 0), args.repeat)
        publish.keep_attributes = lambda old, new: None
        try:
            bare = median_ms(lambda: marked_output(small, 0), args.repeat)
        finally:
            publish.keep_attributes = real_keep
        print(f"publish of a small output: {kept:.2f} ms keeping mode/group/ACLs, {bare:.2f} ms without "
              f"(ratio {kept / bare:.2f})")

        db = Path(d) / "mlflow.db"
        sqlite3.connect(db).close()

        def lock():
            with store_lock(f"sqlite:///{db}"):
                pass

        def open_store():
            connection = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=15)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            connection.close()

        lock_ms, store_ms = median_ms(lock, args.repeat), median_ms(open_store, args.repeat)
        print(f"store lock: {1000 * lock_ms:.0f} us; opening the SQLite store: {1000 * store_ms:.0f} us "
              f"(lock / store = {lock_ms / store_ms:.2f})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
