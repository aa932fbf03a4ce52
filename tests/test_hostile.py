"""Hostile input (SPEC §7): nothing in a store can hang the mount, exhaust the daemon or
reach outside the store. Each case plants one bad object in a copy of the corpus and
checks, through a real mount in both views, with a watchdog on every request: the bad
object costs only itself (the right errno, one log line), everything else answers.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ZARRFS

CASE = "zarr_2d_end_crc_default_slash"  # 2-D, index at the end, "c/i/j" keys
WATCHDOG = 10.0  # seconds any request may take


def run_with_watchdog(*code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child that must finish within the watchdog (a hung mount
    would leave it in uninterruptible sleep: it is then reported, not waited for)."""
    try:
        return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True,
                              timeout=WATCHDOG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a request on the mount hung for {WATCHDOG} s: {code}")


def errno_of(path: Path, action: str = "read") -> int:
    """0, or the errno that reading (or listing) ``path`` through the mount gives."""
    operation = {"read": "open(p, 'rb').read()", "list": "os.listdir(p)", "stat": "os.stat(p)"}[action]
    result = run_with_watchdog("import os, sys", f"p = {str(path)!r}",
                               f"try:\n    {operation}\n    print(0)\nexcept OSError as e:\n    print(e.errno)")
    return int(result.stdout.strip())


def shard(root: Path, case, coords=(0, 0)) -> Path:
    return case.shard_path(root, coords)


def plant_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def plant_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def plant_device_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def plant_outside_link(path: Path, outside: Path) -> None:
    path.unlink()
    path.symlink_to(outside)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret file outside the store (root's, mode 0600)."""
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir(mode=0o700)
    secret.write_bytes(b"SECRET-BYTES" * 100)
    secret.chmod(0o600)
    return secret


@pytest.mark.parametrize("view", ["v3", "v2"])
@pytest.mark.parametrize("planted", ["fifo", "directory", "device link", "outside link"])
def test_a_shard_key_that_is_not_a_regular_file_is_eio_and_costs_only_its_chunks(store_copy, mount, outside,
                                                                                 view, planted):
    root, cases = store_copy
    case = cases[CASE]
    bad = shard(root, case)
    {"fifo": plant_fifo, "directory": plant_directory, "device link": plant_device_link,
     "outside link": lambda p: plant_outside_link(p, outside)}[planted](bad)
    mnt = mount(root, "--view", view)
    prefix = "c/" if view == "v3" else ""
    assert errno_of(mnt / case.path / f"{prefix}0" / "0") == errno.EIO
    assert errno_of(mnt / case.path / f"{prefix}0" / "0", "stat") == errno.EIO
    assert errno_of(mnt / case.path / f"{prefix}0", "list") == 0
    other = cases["zarr_3d_create_array_start_gzip"]
    assert errno_of(mnt / other.path, "list") == 0
    for name in os.listdir(mnt / other.path):
        assert errno_of(mnt / other.path / name, "stat") == 0
    assert b"SECRET" not in _read_everything(mnt.path / case.path)
    assert mnt.log_text().count(case.path + "/c/0/0") <= 2  # logged once (and once per view rebuild)


def _read_everything(directory: Path) -> bytes:
    seen = b""
    for folder, _, files in os.walk(directory):
        for name in files:
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    seen += f.read()
            except OSError:
                pass
    return seen


def test_a_key_directory_linked_out_of_the_store_serves_no_outside_bytes(store_copy, mount, outside):
    root, cases = store_copy
    case = cases[CASE]
    row = shard(root, case).parent  # the array's c/0 directory
    escaped = outside.parent / "c0"
    row.rename(escaped)
    os.symlink(escaped, row)
    for name in os.listdir(escaped):
        (escaped / name).write_bytes(outside.read_bytes())  # shards that are somebody's secrets
    mnt = mount(root)
    assert b"SECRET" not in _read_everything(mnt.path / case.path)
    assert errno_of(mnt / case.path / "c" / "0" / "0") in (errno.EIO, errno.ENOENT)


@pytest.mark.parametrize("view", ["v3", "v2"])
@pytest.mark.parametrize("planted", ["fifo", "endless", "huge", "deep"])
def test_metadata_that_would_hang_or_exhaust_the_daemon_shows_plain_files(store_copy, mount, view, planted):
    root, cases = store_copy
    case = cases[CASE]
    metadata = root / case.path / "zarr.json"
    metadata.unlink()
    if planted == "fifo":
        os.mkfifo(metadata)
    elif planted == "endless":
        metadata.symlink_to("/dev/zero")
    elif planted == "huge":
        metadata.write_bytes(b"{" + b" " * (17 << 20) + b"}")
    else:
        metadata.write_text("[" * 100_000 + "]" * 100_000)
    (root / case.path / "README.txt").write_text("mine")
    mnt = mount(root, "--view", view)
    assert errno_of(mnt / case.path, "list") == 0
    assert (mnt / case.path / "README.txt").read_text() == "mine"
    assert errno_of(mnt / cases["zarr_3d_create_array_start_gzip"].path, "list") == 0
    status = json.loads((mnt / ".zarrfs" / "status").read_text())
    rss_kib = int(next(line.split()[1] for line in open(f"/proc/{status['pid']}/status")
                       if line.startswith("VmRSS:")))
    assert rss_kib < 400 * 1024, f"daemon RSS {rss_kib} KiB after a hostile zarr.json"
    assert "Traceback" not in mnt.log_text()
    result = subprocess.run([*ZARRFS, "umount", str(mnt.path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
