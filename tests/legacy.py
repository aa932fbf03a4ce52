"""Other versions of the Zarr tool chain, each in its own virtualenv, created once and cached in .cache/.

Legacy readers must be the real thing, not a shim: zarr 2 and zarr 3 cannot be
installed side by side, so zarr 2 (and any other version a test needs: the
oldest zarr-python 3, xarray and dask with either) runs in a subprocess of its
own venv. ``venv_python(packages)`` makes such a venv; ``zarr2_python``,
``zarr2_read`` and ``zarr2_run`` are the zarr-python 2.18 one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ZARR2_VERSION = "2.18.7"
CACHE = Path(__file__).resolve().parent.parent / ".cache"
VENV = CACHE / f"zarr2-venv-{ZARR2_VERSION}"
PYTHON = VENV / "bin" / "python"


def venv_python(packages: Sequence[str], name: str | None = None, label: str = "venv",
                lock_name: str | None = None) -> Path:
    """The python of a cached venv holding ``packages`` (pip requirement specifiers), creating the
    venv on first use (safe across processes: a lock file, and a marker written once pip succeeded).

    The venv is ``.cache/NAME``; without a name, ``LABEL-<hash of the packages>``, so that changing
    the list makes a new venv instead of reusing a stale one. An unpinned package is whatever was
    newest when the venv was made.
    """
    packages = list(packages)
    digest = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:12]
    venv = CACHE / (name or f"{label}-{digest}")
    python = venv / "bin" / "python"
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / (lock_name or f"{venv.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / ".complete"
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
            marker.touch()
    return python


def venv_run(python: Path, script: str, *args: str, stdin: str | None = None, timeout: float = 300,
             env: dict | None = None) -> str:
    """Run ``script`` (python source) with a venv's python; its stdout. Fails with its stderr."""
    result = subprocess.run([str(python), "-c", script, *args], input=stdin, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PYTHONPATH": "", **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def zarr2_python() -> Path:
    """The cached zarr-python 2.18 venv's python, creating the venv on first use (safe across processes)."""
    return venv_python([f"zarr=={ZARR2_VERSION}"], name=VENV.name, lock_name="zarr2-venv.lock")


READ_SCRIPT = """
import json, sys
import numpy as np
import zarr
assert zarr.__version__ == sys.argv[3], zarr.__version__
root, out = sys.argv[1], sys.argv[2]
values, errors = {}, {}
for path in json.loads(sys.stdin.read()):
    try:
        values[path.replace("/", "|") or "."] = zarr.open_array(root + "/" + path, mode="r")[...]
    except Exception as error:
        errors[path] = f"{type(error).__name__}: {error}"
np.savez(out, **values)
print(json.dumps(errors))
"""


def zarr2_read(root: Path, paths: list[str], out: Path) -> tuple[dict, dict]:
    """Read arrays with zarr-python 2: ``({path: values}, {path: error})``."""
    import numpy as np

    result = subprocess.run(
        [str(zarr2_python()), "-c", READ_SCRIPT, str(root), str(out), ZARR2_VERSION],
        input=json.dumps(paths), capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout)
    with np.load(out) as saved:
        values = {key.replace("|", "/").strip("."): saved[key] for key in saved.files}
    return values, errors


def zarr2_run(script: str, *args: str) -> str:
    """Run a zarr-python 2 script; its stdout."""
    return venv_run(zarr2_python(), script, *args)
