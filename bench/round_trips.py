"""What one kernel request costs: per-file time of each system call a reader makes,
on a fresh zarrfs mount, with the requests each step sent (from the status file).

    .venv/bin/python bench/round_trips.py STORE [zarrfs mount options...]

STORE is a sharded store whose array sits at its root with 2-D chunk keys (as the
suite's D1 and D2: bench/.cache/d1/sharded); its files are read first, so that no
step waits for the disk. Steps, in this order, each over every
chunk: stat (LOOKUP: nothing is listed first), os.open+close (OPEN, RELEASE; none on
--read-only mounts), an isatty ioctl (what CPython's open() asks), os.read of the whole
file (READ, page cache cold), and CPython's open().read() (everything warm). The
difference between steps is what docs/performance.md calls the cost of a round trip.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import termios
import time

ZARRFS = [sys.executable, "-m", "zarrfs"]


def chunk_paths(mountpoint: str) -> list[str]:
    doc = json.load(open(os.path.join(mountpoint, "zarr.json")))
    if "shape" not in doc:  # the v2 view
        doc = json.load(open(os.path.join(mountpoint, ".zarray")))
        rows, cols = (-(-s // c) for s, c in zip(doc["shape"], doc["chunks"]))
        sep = doc.get("dimension_separator", ".")
        return [os.path.join(mountpoint, f"{i}{sep}{j}") for i in range(rows) for j in range(cols)]
    chunk = doc["chunk_grid"]["configuration"]["chunk_shape"]
    rows, cols = (-(-s // c) for s, c in zip(doc["shape"], chunk))
    return [os.path.join(mountpoint, "c", str(i), str(j)) for i in range(rows) for j in range(cols)]


def requests(mountpoint: str) -> dict[str, int]:
    with open(os.path.join(mountpoint, ".zarrfs", "status")) as f:
        return json.load(f)["requests"]


def open_close(path: str) -> None:
    os.close(os.open(path, os.O_RDONLY))


def isatty(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, termios.TCGETS, bytes(64))
    except OSError:
        pass  # ENOTTY: what every regular file answers
    finally:
        os.close(fd)


def read_whole(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def python_open(path: str) -> None:
    with open(path, "rb") as f:
        f.read()


STEPS = [("stat", os.stat), ("os.open+close", open_close), ("isatty ioctl", isatty),
         ("read (cold)", read_whole), ("open().read()", python_open)]


def warm_page_cache(store: str) -> None:
    """Read the backing files, so that no step waits for the disk."""
    for directory, _, files in os.walk(store):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                while f.read(1 << 22):
                    pass


def main(store: str, options: list[str]) -> None:
    warm_page_cache(store)
    mountpoint = tempfile.mkdtemp(prefix="zarrfs-round-trips-")
    subprocess.run([*ZARRFS, "mount", *options, store, mountpoint], check=True)
    try:
        paths = chunk_paths(mountpoint)
        print(f"{len(paths)} files, zarrfs {' '.join(options) or '(default options)'}")
        for name, step in STEPS:
            before = requests(mountpoint)
            start = time.perf_counter()
            for path in paths:
                step(path)
            elapsed = time.perf_counter() - start
            after = requests(mountpoint)
            sent = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > len(paths) // 100}
            print(f"  {name:15} {1e6 * elapsed / len(paths):7.1f} us/file   requests: {sent}")
    finally:
        subprocess.run([*ZARRFS, "umount", mountpoint], check=True)
        os.rmdir(mountpoint)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
