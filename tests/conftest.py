"""Fixtures that mount real zarrfs filesystems and always unmount them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends import BACKENDS, Backend, credentials_environment
from helpers import alive, mount_entries, processes_naming, read_status
from s3server import moto, s3_credentials, seaweedfs  # noqa: F401  (fixtures, for every test module)

ZARRFS = [sys.executable, "-m", "zarrfs"]


def is_mounted(path: Path) -> bool:
    return bool(mount_entries(path))


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class Mount:
    """A zarrfs mount made by a test, with its log file."""

    def __init__(self, store: Path | str, path: Path, log: Path):
        self.store, self.path, self.log = store, path, log  # store: a Path, or an s3:// URL (a str)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def status(self) -> dict:
        return read_status(self.path)

    def unmount(self) -> None:
        subprocess.run([*ZARRFS, "umount", str(self.path)], check=True, capture_output=True, timeout=60)
        assert not is_mounted(self.path)


class Mounter:
    """Makes mounts and undoes every one of them in ``close``."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._made: list[Mount] = []

    def __call__(self, store: Path | str, *options: str) -> Mount:
        """``store``: a directory, or an ``s3://`` URL (then pass ``--endpoint-url`` in ``options``)."""
        work = self._tmp.mktemp("mnt")
        path, log = work / "view", work / "zarrfs.log"
        path.mkdir()
        url = isinstance(store, str) and store.startswith("s3://")
        self._made.append(Mount(store if url else Path(store), path, log))
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


class Cleanup:
    """Mountpoints, processes and daemons a test made without ``mount`` (by the CLI, mount(8), an
    fstab line, a foreground daemon); all undone at teardown, whatever happened, so that a failing
    test never leaves a mount or a daemon behind."""

    def __init__(self):
        self.paths: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []

    def mountpoint(self, path: Path, *, create: bool = False) -> Path:
        """Unmount ``path`` at teardown; ``create`` makes the directory (tests of bad mountpoints
        register paths that are missing or plain files, and must keep them so)."""
        path = Path(path)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self.paths.append(path)
        return path

    def process(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Kill ``proc`` at teardown if it still runs."""
        self.procs.append(proc)
        return proc

    def daemon(self, pid: int) -> int:
        """Kill the daemon ``pid`` at teardown if it outlives its unmount."""
        self.pids.append(pid)
        return pid

    def undo(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for path in self.paths:
            if is_mounted(path):
                try:
                    subprocess.run([*ZARRFS, "umount", str(path)], capture_output=True, timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            for _ in range(5):
                if not is_mounted(path):
                    break
                if subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True,
                                  timeout=15).returncode:
                    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=15)
        # daemons registered, and any left in a private mount namespace (found by their arguments)
        stragglers = [*self.pids, *(pid for path in self.paths for pid in processes_naming(path))]
        for pid in stragglers:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def cleanup():
    """A ``Cleanup`` for mounts and processes made by hand."""
    undo = Cleanup()
    try:
        yield undo
    finally:
        undo.undo()


@pytest.fixture(scope="session")
def corpus_store(tmp_path_factory):
    """``(store, cases)``: one store of sharded arrays by zarr-python 3 and tensorstore.

    Read-only for tests: copy it (``shutil.copytree``) before changing anything.
    """
    from corpus import build_corpus

    store = tmp_path_factory.mktemp("corpus") / "store.zarr"
    return store, build_corpus(store)


@pytest.fixture
def store_copy(corpus_store, tmp_path):
    """``(root, cases by name)``: a private copy of the corpus, free to change or damage."""
    source, cases = corpus_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(source, copy)
    return copy, {c.name: c for c in cases}


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# The repack lock file zarrfs makes once in each array it writes (SPEC §6: "a file that
# is never replaced"); part of a finished store, like zarr.json.
LOCK_FILE = ".zarrfs-lock"


def list_files(root: Path) -> set[str]:
    """Every file below ``root`` (relative paths), but the arrays' repack lock files."""
    return {
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
        if f != LOCK_FILE
    }


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    """The backend a suite runs on (tests/backends.py): ``local``, or ``s3`` (a fresh prefix of
    the session's SeaweedFS per store). A whole module runs on one backend, then the other.

    For ``s3`` the test identity is in ``AWS_*`` variables of this process while the module
    runs on it, so that mount daemons and ``zarrfs`` commands inherit it. A test that only
    makes sense on a local directory restricts itself with
    ``@pytest.mark.parametrize("backend", ["local"], indirect=True)`` and a one-line reason.
    """
    scratch = tmp_path_factory.mktemp(f"backend-{request.param}")
    if request.param == "local":
        yield Backend("local", scratch)
        return
    server = request.getfixturevalue("seaweedfs")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)
        for name, value in credentials_environment().items():
            patch.setenv(name, value)
        yield Backend("s3", scratch, server)
