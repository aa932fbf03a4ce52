"""Files per second of an open/read/close loop over a zarrfs mount, cold then warm.

    .venv/bin/python bench/open_loop.py STORE [zarrfs mount options...]

A quick probe of the per-file request cost (no plain-directory comparison:
bench/read_bench.py does that). STORE is e.g. bench/.cache/sharded-1024MiB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

ZARRFS = [sys.executable, "-m", "zarrfs"]


def files_per_second(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 1 << 20)
        os.close(fd)
    return len(paths) / (time.perf_counter() - start)


def main(store: str, options: list[str]) -> None:
    mountpoint = tempfile.mkdtemp(prefix="zarrfs-open-loop-")
    subprocess.run([*ZARRFS, "mount", *options, store, mountpoint], check=True)
    try:
        paths = subprocess.run(["find", mountpoint, "-type", "f"], capture_output=True, text=True).stdout.split()
        for label in ("cold", "warm"):
            print(f"{' '.join(options) or '(defaults)'}  {label}: {files_per_second(paths):,.0f} files/s")
    finally:
        subprocess.run([*ZARRFS, "umount", mountpoint], check=True)
        os.rmdir(mountpoint)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
