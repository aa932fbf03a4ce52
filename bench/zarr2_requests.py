"""Requests per chunk, and the daemon's CPU, of zarr-python 2.18 writing and then reading an
array through a fresh ``--view v2`` mount (issue 14's profile of legacy writers and readers).

    .venv/bin/python bench/zarr2_requests.py [CHUNK_SIDE]     # 64 (4 KiB, as D2) or 256 (64 KiB, as D1)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, ZARRFS, cpu_seconds, zarrfs_status

sys.path.insert(0, str(REPO / "tests"))
from legacy import zarr2_python  # noqa: E402  (the venv the tests use, cached in .cache/)

# Each prints the seconds zarr-python 2 took, after its imports.
WRITE = """
import sys, time
import numpy as np, zarr
side, n = int(sys.argv[2]), int(sys.argv[3])
a = zarr.open_array(sys.argv[1] + '/arr', mode='w', shape=(n * side, n * side), chunks=(side, side),
                    dtype='u1', compressor=None)
data = np.random.default_rng(1).integers(1, 255, size=a.shape, dtype='u1')
start = time.monotonic()
a[...] = data
print(time.monotonic() - start)
"""
READ = """
import sys, time
import zarr
a = zarr.open_array(sys.argv[1] + '/arr', mode='r')
start = time.monotonic()
a[...]
print(time.monotonic() - start)
"""


def measure(store: Path, mountpoint: Path, script: str, side: int, n: int) -> tuple[float, float, dict]:
    """zarr-python 2's seconds, the daemon's CPU seconds and its requests, by kind, while
    ``script`` runs against a fresh mount."""
    subprocess.run([str(ZARRFS), "mount", str(store), str(mountpoint), "--view", "v2"], check=True)
    try:
        before = zarrfs_status(mountpoint)
        cpu = cpu_seconds(before["pid"])
        out = subprocess.run([str(zarr2_python()), "-c", script, str(mountpoint), str(side), str(n)],
                             check=True, capture_output=True, text=True).stdout
        after = zarrfs_status(mountpoint)
        requests = {kind: count - before["requests"].get(kind, 0) for kind, count in after["requests"].items()}
        return float(out), cpu_seconds(before["pid"]) - cpu, {k: v for k, v in requests.items() if v}
    finally:
        subprocess.run([str(ZARRFS), "umount", str(mountpoint)], check=True)


def main() -> None:
    side = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    n = 64 if side <= 64 else 32  # chunks per axis
    with tempfile.TemporaryDirectory(prefix="zarrfs-zarr2-requests-") as work:
        store, mountpoint = Path(work) / "store", Path(work) / "mnt"
        store.mkdir()
        mountpoint.mkdir()
        for what, script in (("write", WRITE), ("read", READ)):
            seconds, cpu, requests = measure(store, mountpoint, script, side, n)
            per_chunk = {kind: round(count / n**2, 2) for kind, count in sorted(requests.items())}
            print(f"{what}: {n * n} chunks of {side} x {side} bytes, zarr-python 2 {seconds:.2f} s, "
                  f"daemon CPU {cpu:.2f} s; requests per chunk {per_chunk}")


if __name__ == "__main__":
    main()
