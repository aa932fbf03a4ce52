"""Operating zarrfs (SPEC §2 mount forms, §8 operations) with the real tools an admin uses.

- the systemd units pass ``systemd-analyze verify`` as instances;
- the daemon speaks systemd's notify protocol the way ``Type=notify`` needs it
  (this file plays systemd: it owns the NOTIFY_SOCKET);
- ``mount -t fuse.zarrfs`` and fstab lines (``mount -T FSTAB``) through mount(8)
  and mount.fuse3, which run ``zarrfs`` from a reset PATH;
- ``--help`` documents every option; logs stay quiet at INFO.

Nothing is mocked. Every mount is undone by the ``cleanup`` finalizer, every
process started here is killed there if it is still running.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import LOCK_FILE, Cleanup, is_mounted, list_files, wait_until
from helpers import DEAD_MOUNT_ERRORS, alive, cmdline, mount_entries, mount_options, read_status, unescape_mount_field

pytestmark = pytest.mark.timeout(180)

VENV_BIN = Path(sys.executable).parent
ZARRFS = str(VENV_BIN / "zarrfs")  # the console script, as users run it
SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
# mount(8) drops PATH before it runs mount.fuse3, whose /bin/sh then uses this default.
SH_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 60
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# -- helpers -------------------------------------------------------------------


def run(*args: str, env=None, timeout: float = TIMEOUT, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def is_zarrfs_mounted(path: Path) -> bool:
    return [e[2] for e in mount_entries(path)] == ["fuse.zarrfs"]


def assert_sharded_backing_array(array_dir: Path, expected: np.ndarray, chunks, shards_per_axis: int) -> None:
    """The backing array is sharded (read by zarr-python 3 directly) and holds ``expected``."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    (codec,) = [c for c in meta["codecs"] if c["name"] == "sharding_indexed"]
    assert codec["configuration"]["chunk_shape"] == list(chunks)
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [c * shards_per_axis for c in chunks]
    array = zarr.open_array(str(array_dir), mode="r")
    assert array.shards == tuple(c * shards_per_axis for c in chunks)
    np.testing.assert_array_equal(array[...], expected)
    grid = [s // (c * shards_per_axis) for s, c in zip(expected.shape, chunks)]
    shard_keys = {f"c/{i}/{j}" for i in range(grid[0]) for j in range(grid[1])}
    assert list_files(array_dir) == {"zarr.json", *shard_keys}, "only shards and metadata"


@pytest.fixture
def short_tmp():
    """A short directory (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="zarrfs-ops-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sharded_store(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A small sharded array by zarr-python 3: 40x40 int32, shards 20x20 of 5x5 chunks."""
    path = (tmp_path_factory.mktemp("ops-store") / "data.zarr").resolve()
    data = np.arange(1, 1601, dtype="i4").reshape(40, 40)
    array = zarr.create_array(str(path), shape=data.shape, chunks=(5, 5), shards=(20, 20), dtype="i4")
    array[:] = data
    return path, data


# -- systemd-analyze verify ---------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)")


def _verify(unit: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    return run(SYSTEMD_ANALYZE, "verify", "--man=no", *extra, f"./{unit.name}", cwd=unit.parent, env=env)


def _assert_verified(result: subprocess.CompletedProcess, unit: Path) -> None:
    assert result.returncode == 0, result.stderr
    # systemd-analyze only *warns* (exit 0) about unknown keys and unparsable values:
    # none may be about our unit.
    about_us = [line for line in result.stderr.splitlines()
                if unit.name in line or str(unit) in line or "zarrfs" in line]
    assert not about_us, result.stderr


@needs_systemd_analyze
def test_system_unit_instance_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "zarrfs@mnt-view.service"
    shutil.copy(SYSTEMD_DIR / "zarrfs@.service", unit)
    _assert_verified(_verify(unit), unit)


@needs_systemd_analyze
def test_user_unit_instance_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "units" / "zarrfs-user@home-alice-view.service"
    unit.parent.mkdir()
    shutil.copy(SYSTEMD_DIR / "zarrfs-user@.service", unit)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    os.chmod(runtime, 0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    _assert_verified(_verify(unit, "--user", env=env), unit)


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a unit whose ExecStart binary is missing does."""
    unit = tmp_path / "zarrfs@mnt-view.service"
    text = (SYSTEMD_DIR / "zarrfs@.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/zarrfs", str(tmp_path / "no-such-zarrfs")))
    assert _verify(unit).returncode != 0


def test_units_run_what_make_install_installs():
    """Both units start the daemon in the foreground (Type=notify), from /usr/local/bin."""
    for name in ("zarrfs@.service", "zarrfs-user@.service"):
        text = (SYSTEMD_DIR / name).read_text()
        settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        assert settings["Type"] == "notify", name
        assert settings["NotifyAccess"] in ("main", "all"), name
        assert settings["ExecStart"].startswith("/usr/local/bin/zarrfs mount --foreground "), name
        assert settings["KillSignal"] == "SIGTERM", name
        assert settings["Restart"] == "on-failure", name
        # a private mount namespace would hide the FUSE mount from everybody else
        for hidden in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts", "PrivateDevices"):
            assert hidden not in settings, (name, hidden)


# -- playing systemd: Type=notify ------------------------------------------------------


class NotifySocket:
    """The receiving end of NOTIFY_SOCKET, as systemd has it (with sender credentials)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int | None, str]] = []  # (sender pid, message)

    def receive(self, timeout: float) -> tuple[int | None, str] | None:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("iII", payload[:12])
        for line in data.decode().splitlines():
            self.messages.append((pid, line))
        return pid, data.decode()

    def wait_for(self, prefix: str, timeout: float, proc: subprocess.Popen | None = None) -> tuple[int | None, str]:
        """Receive until a message line starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, line in self.messages:
                if line.startswith(prefix):
                    return pid, line
            if proc is not None and proc.poll() is not None:
                while self.receive(0.1) is not None:  # what it sent just before it exited
                    pass
                break
            self.receive(min(0.5, max(0.01, deadline - time.monotonic())))
        for pid, line in self.messages:
            if line.startswith(prefix):
                return pid, line
        raise AssertionError(f"no {prefix} from the daemon; received {self.lines()}")

    def lines(self) -> list[str]:
        return [line for _, line in self.messages]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(short_tmp):
    sock = NotifySocket(short_tmp / "notify")
    try:
        yield sock
    finally:
        sock.close()


def start_foreground(store: Path, mnt: Path, notify: NotifySocket, log: Path, cleanup: Cleanup,
                     *options: str) -> subprocess.Popen:
    """``zarrfs mount --foreground`` as systemd's ExecStart runs it, with NOTIFY_SOCKET."""
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    with open(log, "w") as stderr:
        return cleanup.process(subprocess.Popen(
            [ZARRFS, "mount", "--foreground", str(store), str(mnt), *options],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr))


def wait_for_ready(notify: NotifySocket, proc: subprocess.Popen, mnt: Path, log: Path) -> dict:
    """Wait for READY=1; what was true of the mount the moment it arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = notify.receive(0.5)
        if got is not None and "READY=1" in got[1].splitlines():
            parent, here = os.stat(mnt.parent), os.stat(mnt)  # first thing after READY=1
            return {
                "sender": got[0],
                "in_proc_mounts": is_zarrfs_mounted(mnt),
                "own_device": here.st_dev != parent.st_dev,
                "listing": sorted(os.listdir(mnt)),
                "status_pid": read_status(mnt)["pid"],
                "before_ready": notify.lines()[:-1],
            }
        assert proc.poll() is None, f"daemon exited before READY=1:\n{log.read_text()}"
    raise AssertionError(f"no READY=1 within 30 s; received {notify.lines()}\n{log.read_text()}")


def ready_daemon_with_unflushed_array(tmp_path: Path, notify: NotifySocket, cleanup: Cleanup, *options: str):
    """``(store, mnt, log, proc, data)``: a foreground daemon on a new empty store, READY=1 received,
    and a 40x40 int32 array of 5x5 chunks written through it by zarr-python 3 that only the exit
    flush will write to the store (--flush-after 600)."""
    store = tmp_path / "store"
    store.mkdir()
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    log = tmp_path / "daemon.stderr"
    proc = start_foreground(store, mnt, notify, log, cleanup, "--flush-after", "600", *options)
    wait_for_ready(notify, proc, mnt, log)
    data = np.arange(1, 1601, dtype="i4").reshape(40, 40)
    zarr.create_array(str(mnt / "arr"), shape=(40, 40), chunks=(5, 5), dtype="i4")[:] = data
    return store, mnt, log, proc, data


def test_notify_ready_only_once_mounted_then_sigterm_flushes_into_shards(tmp_path, notify_socket, cleanup):
    store = tmp_path / "store"
    store.mkdir()
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    log = tmp_path / "daemon.stderr"
    proc = start_foreground(store, mnt, notify_socket, log, cleanup,
                            "--flush-after", "600", "--shards", "4", "--log-level", "INFO")

    ready = wait_for_ready(notify_socket, proc, mnt, log)
    # NotifyAccess=main: systemd only accepts messages sent by the main process.
    assert ready["sender"] == proc.pid
    assert ready["in_proc_mounts"], "READY=1 before /proc/mounts had the fuse.zarrfs entry"
    assert ready["own_device"], "READY=1 while the mountpoint was still the plain directory"
    assert ready["listing"] == []  # an empty store; .zarrfs is hidden
    assert ready["status_pid"] == proc.pid  # no fork in the foreground: systemd's main pid
    assert not any(line.startswith("READY=1") for line in ready["before_ready"])

    # zarr-python 3 writes an unsharded array through the mount; nothing is flushed yet.
    data = np.arange(1, 1601, dtype="i4").reshape(40, 40)
    array = zarr.create_array(str(mnt / "arr"), shape=(40, 40), chunks=(5, 5), dtype="i4", zarr_format=3)
    array[:] = data
    np.testing.assert_array_equal(zarr.open_array(str(mnt / "arr"), mode="r")[...], data)
    status = read_status(mnt)
    assert status["dirty_shards"] == 4 and status["dirty_bytes"] > 0, status
    assert list_files(store / "arr") == {"zarr.json"}, "flushed before SIGTERM despite --flush-after 600"

    proc.send_signal(signal.SIGTERM)  # what `systemctl stop` does (KillSignal=SIGTERM)
    sender, _ = notify_socket.wait_for("STOPPING=1", timeout=60, proc=proc)
    assert sender == proc.pid
    assert proc.wait(timeout=60) == 0, log.read_text()
    while notify_socket.receive(0.1) is not None:
        pass
    lines = notify_socket.lines()
    assert lines.count("READY=1") == 1, lines
    assert any(line.startswith("STATUS=flushing") for line in lines), lines  # shown by systemctl status
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert not is_mounted(mnt)
    stderr = log.read_text()
    assert "Traceback" not in stderr

    # The backing store holds shards only, and zarr-python 3 reads them directly.
    assert_sharded_backing_array(store / "arr", data, chunks=(5, 5), shards_per_axis=4)
    assert not [f for f in list_files(store) if ".zarrfs-tmp-" in f]


def test_notify_socket_in_the_abstract_namespace(tmp_path, sharded_store, cleanup):
    """systemd may hand out ``@name`` (abstract) notify sockets, e.g. in containers."""
    store, _ = sharded_store
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    name = f"zarrfs-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        sock.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name}
        proc = cleanup.process(subprocess.Popen(
            [ZARRFS, "mount", "-f", "--read-only", str(store), str(mnt)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        assert sock.recv(4096) == b"READY=1"
        assert is_zarrfs_mounted(mnt)
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(mnt)
    finally:
        sock.close()


def _hold_array_lock(array_dir: Path) -> int:
    """Hold a POSIX record lock on all of the array's repack lock file, as another node's
    repack would (the file is made by whoever repacks first)."""
    fd = os.open(array_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    return fd


@pytest.mark.parametrize("first_stop", ["SIGTERM", "umount"])
def test_a_second_stop_request_while_flushing_loses_nothing(first_stop, tmp_path, notify_socket, cleanup):
    store, mnt, log, proc, data = ready_daemon_with_unflushed_array(tmp_path, notify_socket, cleanup,
                                                                    "--shards", "4")
    # Another node is repacking: the final flush has to wait for the advisory lock,
    # which makes "while flushing" last as long as this test likes.
    held = _hold_array_lock(store / "arr")
    try:
        if first_stop == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # what stopping the mount unit does at shutdown
            assert run("umount", str(mnt)).returncode == 0
        notify_socket.wait_for("STATUS=flushing", timeout=30, proc=proc)
        time.sleep(0.2)
        assert proc.poll() is None, "the daemon did not wait for the lock"
        proc.send_signal(signal.SIGTERM)  # systemd stopping the service / a second `kill`
        time.sleep(0.5)
    finally:
        os.close(held)  # the other node is done
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert_sharded_backing_array(store / "arr", data, chunks=(5, 5), shards_per_axis=4)


def _answers(*command: str, within: float = 3.0) -> bool:
    """Whether ``command`` (on the mountpoint) finishes in time; run apart, since it may hang."""
    try:
        return run(*command, timeout=within).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def test_the_mountpoint_does_not_hang_while_the_daemon_flushes_at_exit(tmp_path, notify_socket, cleanup):
    store, mnt, log, proc, data = ready_daemon_with_unflushed_array(tmp_path, notify_socket, cleanup)
    held = _hold_array_lock(store / "arr")  # a long flush
    try:
        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STATUS=flushing", timeout=30, proc=proc)
        stat_answers = _answers("stat", str(mnt))
        df_answers = _answers("df", "-i", str(mnt))
    finally:
        os.close(held)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert_sharded_backing_array(store / "arr", data, chunks=(5, 5), shards_per_axis=8)
    assert stat_answers and df_answers, "the mountpoint hung while the daemon flushed"


def test_flush_waits_for_another_nodes_lock(tmp_path, notify_socket, cleanup):
    """Repacks take the advisory lock on the array's lock file; the exit flush waits for it."""
    store, mnt, log, proc, data = ready_daemon_with_unflushed_array(tmp_path, notify_socket, cleanup,
                                                                    "--shards", "4")
    held = _hold_array_lock(store / "arr")
    try:
        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STATUS=flushing", timeout=30, proc=proc)
        time.sleep(1.0)
        assert proc.poll() is None, "the daemon exited while another process held the lock"
        assert list_files(store / "arr") == {"zarr.json"}, "a shard was written under someone else's lock"
    finally:
        os.close(held)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert_sharded_backing_array(store / "arr", data, chunks=(5, 5), shards_per_axis=4)


# -- mount(8): -t fuse.zarrfs and fstab lines ----------------------------------------------


def _zarrfs_on_default_path() -> str | None:
    return shutil.which("mount.fuse.zarrfs", path="/sbin:/usr/sbin") or shutil.which("zarrfs", path=SH_DEFAULT_PATH)


needs_installed_entry_point = pytest.mark.skipif(
    shutil.which("mount.fuse3", path="/sbin:/usr/sbin") is None or _zarrfs_on_default_path() is None,
    reason="mount(8) needs mount.fuse3 (Debian: fuse3) and zarrfs on /bin/sh's default PATH "
           "(`make install` links /usr/local/bin/zarrfs)",
)


def _daemon_pid(mnt: Path, cleanup: Cleanup) -> int:
    return cleanup.daemon(read_status(mnt)["pid"])


@needs_installed_entry_point
def test_mount_t_fuse_zarrfs_read_only_and_umount(sharded_store, tmp_path, cleanup):
    store, data = sharded_store
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    # mount(8) runs mount.fuse3 without PATH; mount.fuse3 runs `zarrfs STORE DIR -o OPTS`.
    result = run("env", "-u", "PATH", "/usr/bin/mount", "-t", "fuse.zarrfs", str(store), str(mnt), "-o", "ro")
    assert result.returncode == 0, result.stderr
    assert is_zarrfs_mounted(mnt)
    assert "ro" in mount_options(mnt)
    pid = _daemon_pid(mnt, cleanup)
    assert sorted(os.listdir(mnt)) == ["c", "zarr.json"]
    np.testing.assert_array_equal(zarr.open_array(str(mnt), mode="r")[...], data)

    result = run("umount", str(mnt))
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt)
    assert wait_until(lambda: not alive(pid), timeout=15), "the daemon outlived umount(8)"


@needs_installed_entry_point
def test_mount_t_fuse_zarrfs_then_umount8_still_flushes(tmp_path, cleanup):
    """umount(8) (or systemd stopping the mount unit) instead of `zarrfs umount`:
    the kernel detaches at once, the daemon flushes afterwards, then exits."""
    store = tmp_path / "store"
    store.mkdir()
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    result = run("mount", "-t", "fuse.zarrfs", str(store), str(mnt))
    assert result.returncode == 0, result.stderr
    pid = _daemon_pid(mnt, cleanup)
    data = np.arange(1, 1601, dtype="i4").reshape(40, 40)
    zarr.create_array(str(mnt / "arr"), shape=(40, 40), chunks=(5, 5), dtype="i4")[:] = data
    assert read_status(mnt)["dirty_shards"] == 1  # the default --shards 8 -> one 40x40 shard

    assert run("umount", str(mnt)).returncode == 0
    assert wait_until(lambda: not alive(pid), timeout=30)
    assert_sharded_backing_array(store / "arr", data, chunks=(5, 5), shards_per_axis=8)


def mount_by_fstab(fstab: Path, text: str, mnt: Path) -> None:
    """``mount -T FSTAB MNT`` with PATH unset, as at boot: mount(8) finds the line for ``mnt``."""
    fstab.write_text(text)
    result = run("env", "-u", "PATH", "/usr/bin/mount", "-T", str(fstab), str(mnt))
    assert result.returncode == 0, result.stderr


FSTAB_OPTIONS = [
    "ro,allow_other,nofail",
    # what docs/hpc-admin.md recommends for a store on a network filesystem
    "ro,allow_other,nofail,_netdev,x-systemd.requires-mounts-for=/tmp",
]


@needs_installed_entry_point
@pytest.mark.parametrize("options", FSTAB_OPTIONS, ids=["plain", "netdev"])
def test_fstab_line_mounts_read_only_and_zarrfs_umount(options, sharded_store, tmp_path, cleanup):
    store, data = sharded_store
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    mount_by_fstab(tmp_path / "fstab", f"# zarrfs test\n{store} {mnt} fuse.zarrfs {options} 0 0\n", mnt)
    assert is_zarrfs_mounted(mnt)
    assert {"ro", "allow_other"} <= mount_options(mnt)
    (entry,) = mount_entries(mnt)
    assert unescape_mount_field(entry[0]) == str(store)  # `df` and `mount` name the store
    pid = _daemon_pid(mnt, cleanup)

    assert sorted(os.listdir(mnt)) == ["c", "zarr.json"]
    assert sorted(os.listdir(mnt / "c" / "0")) == [str(j) for j in range(8)]
    np.testing.assert_array_equal(zarr.open_array(str(mnt), mode="r")[...], data)
    for attempt in (lambda: open(mnt / "new-file", "w"),
                    lambda: open(mnt / "c" / "0" / "0", "r+b"),
                    lambda: os.mkdir(mnt / "newdir"),
                    lambda: os.unlink(mnt / "c" / "0" / "0")):
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS
    assert read_status(mnt)["read_only"] is True

    result = run(ZARRFS, "umount", str(mnt))
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt)
    assert not alive(pid)
    assert list_files(store) == {"zarr.json", "c/0/0", "c/0/1", "c/1/0", "c/1/1"}


@needs_installed_entry_point
def test_fstab_line_can_choose_the_v2_view(sharded_store, tmp_path, cleanup):
    store, _ = sharded_store
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    mount_by_fstab(tmp_path / "fstab", f"{store} {mnt} fuse.zarrfs ro,nofail,view=v2 0 0\n", mnt)
    cleanup.daemon(read_status(mnt)["pid"])
    assert read_status(mnt)["view"] == "v2"
    assert ".zarray" in os.listdir(mnt)


# -- restarts after a kill -------------------------------------------------------------------


def test_a_killed_daemon_is_restartable_over_its_dead_mount(sharded_store, tmp_path, cleanup):
    """kill -9 of the daemon (OOM killer) leaves a dead mount (ENOTCONN); a restart clears it."""
    store, _ = sharded_store
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    assert run(ZARRFS, "mount", "--read-only", str(store), str(mnt)).returncode == 0
    pid = _daemon_pid(mnt, cleanup)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), timeout=10)
    with pytest.raises(OSError) as error:
        os.listdir(mnt)
    assert error.value.errno in DEAD_MOUNT_ERRORS
    result = run(ZARRFS, "mount", "--read-only", str(store), str(mnt))
    assert result.returncode == 0, result.stderr
    _daemon_pid(mnt, cleanup)
    assert sorted(os.listdir(mnt)) == ["c", "zarr.json"]


# -- who owns what the daemon writes -------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemon runs as root for other users")


@needs_root
def test_a_repack_keeps_the_owner_and_mode_of_the_shard(tmp_path, cleanup):
    store = tmp_path / "store"
    array = zarr.create_array(str(store / "arr"), shape=(20, 20), chunks=(5, 5), shards=(10, 10), dtype="i4")
    array[:] = 1
    for path in [store, *store.rglob("*")]:
        os.chown(path, 1000, 1000)
        os.chmod(path, 0o2775 if path.is_dir() else 0o664)
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    result = run(ZARRFS, "mount", str(store), str(mnt))
    assert result.returncode == 0, result.stderr
    zarr.open_array(str(mnt / "arr"), mode="r+")[0:5, 0:5] = 7
    assert run(ZARRFS, "umount", str(mnt)).returncode == 0
    assert zarr.open_array(str(store / "arr"), mode="r")[0, 0] == 7
    rewritten = os.stat(store / "arr" / "c" / "0" / "0")
    untouched = os.stat(store / "arr" / "c" / "1" / "1")
    assert (untouched.st_uid, untouched.st_gid, oct(untouched.st_mode & 0o7777)) == (1000, 1000, "0o664")
    assert (rewritten.st_uid, rewritten.st_gid, oct(rewritten.st_mode & 0o7777)) == (1000, 1000, "0o664")


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_files_made_through_an_allow_other_mount_belong_to_the_caller(short_tmp, cleanup):
    os.chmod(short_tmp, 0o755)
    store = short_tmp / "store"
    store.mkdir(mode=0o777)
    os.chmod(store, 0o777)
    mnt = cleanup.mountpoint(short_tmp / "mnt", create=True)
    result = run(ZARRFS, "mount", str(store), str(mnt), "-o", "allow_other")
    assert result.returncode == 0, result.stderr
    cleanup.daemon(read_status(mnt)["pid"])
    script = 'mkdir "$1/d" && echo hello > "$1/d/README.txt" && stat -c %u "$1/d" "$1/d/README.txt"'
    result = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script, "sh", str(mnt))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65534", "65534"]
    assert run(ZARRFS, "umount", str(mnt)).returncode == 0
    assert os.stat(store / "d").st_uid == 65534
    assert os.stat(store / "d" / "README.txt").st_uid == 65534


# -- --help --------------------------------------------------------------------------------

SPEC_MOUNT_OPTIONS = ["-f", "--foreground", "--read-only", "--view", "--shards", "--flush-after",
                      "--max-dirty", "-o", "--log-level", "--log-file"]


def test_mount_help_mentions_every_mount_option():
    result = run(ZARRFS, "mount", "--help")
    assert result.returncode == 0, result.stderr
    for option in SPEC_MOUNT_OPTIONS:
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", result.stdout), (option, result.stdout)
    assert "{v3,v2}" in result.stdout
    assert "--attr-timeout" in result.stdout  # the documented timeout knob (docs/architecture.md)
    assert "default 8" in result.stdout  # --shards: the default is documented


def test_top_level_help_mentions_every_command():
    result = run(ZARRFS, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("mount", "umount", "status", "info", "check"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), (command, result.stdout)
        sub = run(ZARRFS, command, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: zarrfs {command}"), sub


# -- logs ------------------------------------------------------------------------------------


def test_info_logs_stay_quiet_over_thousands_of_chunks(tmp_path, cleanup):
    store = tmp_path / "store"
    store.mkdir()
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    log = tmp_path / "zarrfs.log"
    result = run(ZARRFS, "mount", str(store), str(mnt), "--log-level", "INFO", "--log-file", str(log),
                 "--flush-after", "0.2", "--shards", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    cleanup.daemon(read_status(mnt)["pid"])

    shape, chunks = (512, 256), (8, 8)  # 64 x 32 = 2048 chunks, 128 shards
    data = np.arange(np.prod(shape), dtype="i4").reshape(shape) + 1
    zarr.create_array(str(mnt / "arr"), shape=shape, chunks=chunks, dtype="i4", compressors=None)[:] = data
    np.testing.assert_array_equal(zarr.open_array(str(mnt / "arr"), mode="r")[...], data)
    assert wait_until(lambda: read_status(mnt)["dirty_shards"] == 0, timeout=60)
    # every chunk again, now from the shards, and by plain file reads
    names = [mnt / "arr" / "c" / str(i) / str(j) for i in range(64) for j in range(32)]
    assert sum(len(p.read_bytes()) for p in names) == data.nbytes
    np.testing.assert_array_equal(zarr.open_array(str(mnt / "arr"), mode="r")[...], data)
    assert read_status(mnt)["flushes_done"] >= 128
    assert run(ZARRFS, "umount", str(mnt)).returncode == 0

    lines = log.read_text().splitlines()
    assert 2 <= len(lines) <= 10, "\n".join(lines)  # mounted ..., SIGTERM: unmounting, unmounted ...
    for line in lines:
        assert re.search(rf"\bzarrfs\[\d+\] ({'|'.join(LEVELS)}): ", line), line
    assert not [line for line in lines if re.search(r"\bc/\d+/\d+\b", line)], "per-chunk lines at INFO"
    assert_sharded_backing_array(store / "arr", data, chunks=chunks, shards_per_axis=4)
