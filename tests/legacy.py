"""zarr-python 2.18 in its own virtualenv, created once and cached in .cache/.

Legacy readers must be the real thing, not a shim: zarr 2 and zarr 3 cannot be
installed side by side, so zarr 2 runs in a subprocess of its own venv.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

ZARR2_VERSION = "2.18.7"
CACHE = Path(__file__).resolve().parent.parent / ".cache"
VENV = CACHE / f"zarr2-venv-{ZARR2_VERSION}"
PYTHON = VENV / "bin" / "python"


def zarr2_python() -> Path:
    """The cached venv's python, creating the venv on first use (safe across processes)."""
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / "zarr2-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = VENV / ".complete"
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", f"zarr=={ZARR2_VERSION}"], check=True)
            marker.touch()
    return PYTHON


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
    result = subprocess.run([str(zarr2_python()), "-c", script, *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    return result.stdout
