"""The quick-start demo: make a sharded store, mount it, look, read (zarr-python 3, then
zarr-python 2 through the v2 view), unmount."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import zarr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from legacy import zarr2_run  # noqa: E402  zarr-python 2.18 in its own cached venv

ZARRFS = [sys.executable, "-m", "zarrfs"]
LEGACY_READ = """
import sys, zarr
a = zarr.open_array(sys.argv[1] + "/image", mode="r")
print(f"zarr-python {zarr.__version__} reads {a.shape} {a.dtype}, chunks {a.chunks}, sum {int(a[:].sum())}")
"""


def shell(*command: str) -> str:
    print("$", " ".join(command))
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(output.rstrip())
    return output


def make_store(path: str) -> np.ndarray:
    """A 1024x1024 image in 64x64 chunks, packed into 256x256 shards (16 chunks each)."""
    image = (np.add.outer(np.arange(1024), np.arange(1024)) % 4096).astype("uint16")
    group = zarr.open_group(path, mode="w", attributes={"description": "zarrfs demo"})
    array = group.create_array("image", shape=image.shape, chunks=(64, 64), shards=(256, 256),
                               dtype="uint16", dimension_names=["y", "x"])
    array[:] = image
    return image


def main() -> None:
    work = tempfile.mkdtemp(prefix="zarrfs-demo-")
    store, view = os.path.join(work, "store.zarr"), os.path.join(work, "view")
    os.mkdir(view)
    image = make_store(store)
    print(f"backing store: {sum(len(f) for _, _, f in os.walk(store))} files (16 shards + metadata)")
    shell(*ZARRFS, "mount", store, view)
    try:
        print(f"mounted view: {sum(len(f) for _, _, f in os.walk(view))} files (256 chunks + metadata)")
        shell("ls", "-l", os.path.join(view, "image", "c", "0"))
        shell("du", "-sh", store, view)
        # A reader that knows nothing of sharding: the view is a plain chunked array.
        plain = zarr.open_array(os.path.join(view, "image"), mode="r")
        print(f"unsharded reader sees chunks {plain.chunks}, shards {plain.shards}")
        assert np.array_equal(plain[:], image), "the view must read the same values"
        print("read through the mount: identical to the sharded original")
    finally:
        shell(*ZARRFS, "umount", view)
    # The v2 view: a legacy reader (zarr-python 2.18) reads the same sharded store.
    shell(*ZARRFS, "mount", "--view", "v2", "--read-only", store, view)
    try:
        shell("ls", "-a", os.path.join(view, "image"))
        print(zarr2_run(LEGACY_READ, view).strip(), f"(expected sum {int(image.sum())})")
    finally:
        shell(*ZARRFS, "umount", view)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
