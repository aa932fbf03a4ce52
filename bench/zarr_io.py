"""Reading and writing whole arrays with zarr-python 2 (its own venv) and zarr-python 3.

Each runs in a fresh subprocess so that no side profits from a warm interpreter or cached
metadata, and times itself with time.monotonic() (system-wide) after its imports: interpreter
start and imports are not part of the numbers.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from common import REPO

sys.path.insert(0, str(REPO / "tests"))
from legacy import ZARR2_VERSION, zarr2_python  # noqa: E402  (the venv the tests use, cached in .cache/)

# Reads the whole array into memory, then hashes it (untimed) so the two readers can be compared.
READ = """
import hashlib, json, sys, time
import zarr
path, version = sys.argv[1], sys.argv[2]
assert zarr.__version__ == version, zarr.__version__
start = time.monotonic()
if zarr.__version__.startswith("2"):
    array = zarr.open_array(path, mode="r")
else:
    array = zarr.open_array(zarr.storage.LocalStore(path, read_only=True), mode="r")
values = array[...]
end = time.monotonic()
digest = hashlib.blake2b(memoryview(values).cast("B")).hexdigest()
print(json.dumps({"start": start, "end": end, "shape": list(values.shape), "blake2b": digest}))
"""

WRITE = """
import json, sys, time
import numpy as np
import zarr
assert zarr.__version__ == sys.argv[6], zarr.__version__
dest, npy = sys.argv[1], sys.argv[2]
chunks, slab = (int(sys.argv[3]), int(sys.argv[4])), int(sys.argv[5])
data = np.load(npy, mmap_mode="r")
start = time.monotonic()
z = zarr.open_array(dest, mode="w-", shape=data.shape, chunks=chunks, dtype="u1", compressor=None,
                    fill_value=0)
for top in range(0, data.shape[0], slab):
    z[top:top + slab] = data[top:top + slab]
end = time.monotonic()
print(json.dumps({"start": start, "end": end}))
"""


def _python_for(version: str) -> Path:
    return zarr2_python() if version == ZARR2_VERSION else Path(sys.executable)


def _run(python: Path, script: str, *args) -> tuple[dict, float]:
    """Run ``script``; its JSON line and its CPU seconds (user + system, with its start)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([str(python), "-c", script, *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ""})
    if result.returncode:
        raise RuntimeError(f"{python} failed on {args[0]}:\n{result.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads(result.stdout.strip().splitlines()[-1]), cpu


def zarr3_version() -> str:
    import zarr

    return zarr.__version__


def read_array(path: Path, zarr2: bool) -> dict:
    """Read the whole array at ``path`` with zarr-python 2 (``zarr2``) or 3; seconds, digest."""
    version = ZARR2_VERSION if zarr2 else zarr3_version()
    out, cpu = _run(_python_for(version), READ, path, version)
    return {"seconds": out["end"] - out["start"], "blake2b": out["blake2b"], "shape": out["shape"], "cpu": cpu}


def write_array(dest: Path, npy: Path, chunk: tuple[int, int], slab: int) -> dict:
    """zarr-python 2 writes the .npy (read through a memory map) to ``dest`` in slabs of ``slab`` rows."""
    out, cpu = _run(zarr2_python(), WRITE, dest, npy, chunk[0], chunk[1], slab, ZARR2_VERSION)
    return {"start": out["start"], "end": out["end"], "writer_cpu": cpu}
