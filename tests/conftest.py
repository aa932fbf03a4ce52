"""Fixtures that mount real zarrfs filesystems and always unmount them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ZARRFS = [sys.executable, "-m", "zarrfs"]


def is_mounted(path: Path) -> bool:
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class Mount:
    """A zarrfs mount made by a test, with its log file."""

    def __init__(self, store: Path, path: Path, log: Path):
        self.store, self.path, self.log = store, path, log

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def status(self) -> dict:
        return json.loads((self.path / ".zarrfs" / "status").read_text())

    def unmount(self) -> None:
        subprocess.run([*ZARRFS, "umount", str(self.path)], check=True, capture_output=True, timeout=60)
        assert not is_mounted(self.path)


class Mounter:
    """Makes mounts and undoes every one of them in ``close``."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._made: list[Mount] = []

    def __call__(self, store: Path, *options: str) -> Mount:
        work = self._tmp.mktemp("mnt")
        path, log = work / "view", work / "zarrfs.log"
        path.mkdir()
        self._made.append(Mount(Path(store), path, log))
        result = subprocess.run(
            [*ZARRFS, "mount", str(store), str(path), "--log-file", str(log), *options],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return self._made[-1]

    def close(self) -> None:
        for m in self._made:
            if is_mounted(m.path):
                try:
                    m.unmount()
                except Exception:  # noqa: BLE001 - teardown must always unmount
                    force_unmount(m.path)


def _mounts(tmp_path_factory):
    mounter = Mounter(tmp_path_factory)
    try:
        yield mounter
    finally:
        mounter.close()


@pytest.fixture
def mount(tmp_path_factory):
    """``mount(store, *options) -> Mount``; every mount is undone at teardown."""
    yield from _mounts(tmp_path_factory)


@pytest.fixture(scope="module")
def module_mount(tmp_path_factory):
    """Like ``mount``, for mounts that a whole test module shares."""
    yield from _mounts(tmp_path_factory)


@pytest.fixture(scope="session")
def corpus_store(tmp_path_factory):
    """``(store, cases)``: one store of sharded arrays by zarr-python 3 and tensorstore.

    Read-only for tests: copy it (``shutil.copytree``) before changing anything.
    """
    from corpus import build_corpus

    store = tmp_path_factory.mktemp("corpus") / "store.zarr"
    return store, build_corpus(store)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def list_files(root: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
    }
