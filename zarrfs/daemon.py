"""Mounting and unmounting: argument checks, daemonizing, signals, sd_notify.

``zarrfs mount`` returns only once the mount answers: the daemon stats its own
mountpoint from a worker thread (a request its own trio loop must serve) and
only then tells the waiting parent, or systemd (``READY=1``), that it is ready.
"""

from __future__ import annotations

import json
import errno
import logging
import logging.handlers
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

from . import __version__
from .defaults import (DEFAULT_FLUSH_AFTER, DEFAULT_MAX_DIRTY_MIB, DEFAULT_MAX_SCRATCH_MIB, DEFAULT_SHARDS,
                       DEFAULT_TIMEOUT)
from .fs.flusher import Flusher
from .fs.operations import Operations
from .fs.tree import CONTROL_DIR, STATUS_FILE, ViewTree
from .fs.treelock import HoldDuringTaskSteps, TreeLock
from .fs.writes import Writer
from .store import StoreError, is_object_store_url, open_store
from .store.base import Store
from .store.local import process_alive

log = logging.getLogger("zarrfs")

FUSE_DEVICE = "/dev/fuse"
# Options that mount(8) and fstab pass but that mean nothing to a FUSE daemon.
GENERIC_MOUNT_OPTIONS = {
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "defaults", "auto", "noauto",
    "user", "users", "nouser", "nofail", "_netdev", "async", "sync", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "diratime", "nodiratime", "lazytime",
}
EXIT_WARNING_SECONDS = 60.0  # how often an exiting daemon that cannot flush says so


class MountError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass
class MountOptions:
    store: str
    mountpoint: str
    foreground: bool = False
    read_only: bool = False
    view: str = "v3"
    shards: int = DEFAULT_SHARDS
    flush_after: float = DEFAULT_FLUSH_AFTER
    max_dirty_mib: float = DEFAULT_MAX_DIRTY_MIB
    max_scratch_mib: float = DEFAULT_MAX_SCRATCH_MIB
    fuse_options: list[str] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT
    log_level: str = "INFO"
    log_file: str | None = None
    endpoint_url: str | None = None  # of an S3-compatible server, for s3:// stores
    single_writer: bool = False  # write to an object store that ignores conditional writes

    def fuse_option_set(self) -> set[str]:
        # No auto_unmount (as sshfs and rclone): a daemon that dies leaves a dead mount on
        # which every request fails with ENOTCONN, so writers that go on cannot land in
        # the directory beneath the mountpoint, which the next mount would hide (SPEC §6).
        # A restart clears the dead mount first (_clear_dead_mount).
        options = {f"fsname={self.store}", "subtype=zarrfs", "default_permissions"}
        options |= {o for o in self.fuse_options if o not in GENERIC_MOUNT_OPTIONS and o != "ro"}
        options.discard("noauto_unmount")  # the default now; accepted from older fstab lines
        if self.read_only:
            options.add("ro")
        return options


def check_mount_arguments(options: MountOptions) -> None:
    """Fail early, with one clear line, before anything is mounted."""
    _clear_dead_mount(options.mountpoint)
    if not is_object_store_url(options.store):  # a bucket is checked by the daemon (serve)
        if not os.path.exists(options.store):
            raise MountError(f"store {options.store} does not exist")
        if not os.path.isdir(options.store):
            raise MountError(f"store {options.store} is not a directory")
    if not os.path.exists(options.mountpoint):
        raise MountError(f"mountpoint {options.mountpoint} does not exist")
    if not os.path.isdir(options.mountpoint):
        raise MountError(f"mountpoint {options.mountpoint} is not a directory")
    if os.path.ismount(options.mountpoint):
        raise MountError(f"mountpoint {options.mountpoint} is already a mount point")
    if os.listdir(options.mountpoint):
        raise MountError(f"mountpoint {options.mountpoint} is not empty")
    if not os.path.exists(FUSE_DEVICE):
        raise MountError(f"{FUSE_DEVICE} is missing: load the fuse kernel module (modprobe fuse)")
    if not shutil.which("fusermount3", path=os.environ.get("PATH", "") + ":/usr/bin:/bin"):
        raise MountError("fusermount3 is not installed (Debian: apt install fuse3)")
    if options.log_file:
        try:
            with open(options.log_file, "a"):
                pass
        except OSError as error:
            raise MountError(f"cannot open log file {options.log_file}: {error.strerror}") from None


def _clear_dead_mount(mountpoint: str) -> None:
    """A zarrfs mount whose daemon died ("Transport endpoint is not connected")
    would block every restart: the restart detaches it, then mounts at once."""
    try:
        os.statvfs(mountpoint)  # always asks the daemon; stat may be answered from the kernel's cache
    except OSError as error:
        if error.errno == errno.ENOTCONN and is_zarrfs_mount(mountpoint):
            log.warning("%s: clearing the dead mount of a daemon that died", mountpoint)
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)


def mount(options: MountOptions) -> int:
    if not is_object_store_url(options.store):
        options.store = os.path.abspath(options.store)
    options.mountpoint = os.path.abspath(options.mountpoint)
    if options.log_file:
        options.log_file = os.path.abspath(options.log_file)  # the daemon leaves the working directory
    if "ro" in options.fuse_options:
        options.read_only = True
    check_mount_arguments(options)
    if options.foreground:
        configure_logging(options, daemonized=False)
        return serve(options, on_ready=lambda: sd_notify("READY=1"))
    return _daemonize(options)


def _daemonize(options: MountOptions) -> int:
    """Fork; the child mounts and serves, the parent returns once it answers."""
    reader, writer = os.pipe()
    if os.fork():
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            report = pipe.read().decode(errors="replace").strip()
        if report == "ready":
            return 0
        print(report or "zarrfs: error: the daemon exited before the mount answered", file=sys.stderr)
        return 1
    os.close(reader)
    os.setsid()
    _detach_stdio()
    configure_logging(options, daemonized=True)

    def tell_parent(message: str) -> None:
        nonlocal writer
        if writer >= 0:
            os.write(writer, message.encode())
            os.close(writer)
            writer = -1

    code = 1
    try:
        code = serve(options, on_ready=lambda: tell_parent("ready"))
    except MountError as error:
        tell_parent(f"zarrfs: error: {error}")
    except BaseException as error:  # noqa: BLE001 - the parent must always hear back
        log.exception("daemon failed")
        tell_parent(f"zarrfs: error: {error}")
    finally:
        tell_parent("")
        os._exit(code)


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.chdir("/")


def configure_logging(options: MountOptions, daemonized: bool) -> None:
    if options.log_file:
        handler: logging.Handler = logging.FileHandler(options.log_file, encoding="utf-8", errors="backslashreplace")
    elif daemonized and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.StreamHandler(sys.stderr)
    timestamp = "%(asctime)s " if options.log_file else ""
    formatter = _JournalFormatter if isinstance(handler, logging.StreamHandler) and os.environ.get(
        "JOURNAL_STREAM") and not options.log_file else _SafeFormatter
    handler.setFormatter(formatter(timestamp + "zarrfs[%(process)d] %(levelname)s: %(message)s"))
    root = logging.getLogger("zarrfs")
    root.handlers[:] = [handler]
    root.setLevel(options.log_level.upper())
    root.propagate = False


class _SafeFormatter(logging.Formatter):
    """Names in the store are a user's: a newline or non-UTF-8 bytes in one must not
    forge a log line or lose one, so messages show them escaped (\\n, \\udcff)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in record.message)
        return super().formatMessage(record)


class _JournalFormatter(_SafeFormatter):
    """Under systemd, stderr lines carry their priority (<3> error ... <7> debug) for journald."""

    PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def serve(options: MountOptions, on_ready) -> int:
    """Mount, serve until unmounted or signalled, unmount. Returns an exit code."""
    _raise_open_file_limit()
    store = _open_store(options)
    started = time.time()
    tree = ViewTree(store, options.view)
    writer = None
    if not options.read_only:
        _warn_of_writers_unexcluded(store, options)  # may make the mount read-only
    if not options.read_only:
        flusher = Flusher(tree, options.flush_after, int(options.max_dirty_mib * 2**20))
        writer = Writer(tree, flusher, options.shards, int(options.max_scratch_mib * 2**20))
    tree_lock = None if store.capabilities.cheap_calls else TreeLock()
    if tree_lock is not None:
        store.waiting = tree_lock.released  # the network waits of a thread running tree code
    operations = Operations(tree, options.timeout, writer, tree_lock)
    tree.status_text = lambda: _status_text(options, operations, started)
    try:
        pyfuse3.init(operations, options.mountpoint, options.fuse_option_set())
    except RuntimeError as error:
        raise MountError(f"cannot mount {options.mountpoint}: {error}") from None
    log.info("mounted %s on %s (view %s)", options.store, options.mountpoint, options.view)
    unmount = _Unmount(options.mountpoint)
    try:
        instruments = [HoldDuringTaskSteps(tree_lock)] if tree_lock is not None else []
        clean = trio.run(_run_mounted, options.mountpoint, operations, on_ready, unmount, instruments=instruments)
    finally:
        unmount()
    return 0 if clean else 1


def _open_store(options: MountOptions) -> Store:
    """The backing store. Its client is made here, in the daemon, after the fork (an
    object store client's threads do not survive a fork)."""
    try:
        # Stats of metadata and shards serve a second (never longer than the kernel caches
        # attributes); descriptors of the shards read last stay open.
        return open_store(options.store, endpoint_url=options.endpoint_url,
                          reuse_stats_for=min(1.0, options.timeout), keep_open=64)
    except StoreError as error:
        raise MountError(str(error)) from None


def _warn_of_writers_unexcluded(store: Store, options: MountOptions) -> None:
    """Say, in one line, when writers on other nodes cannot be excluded from a shard's
    repack; an object store that ignores conditional writes is mounted read-only."""
    problem = store.locking_problem()
    if not problem:
        return
    if store.capabilities.conditional_writes or options.single_writer:
        log.warning("%s: repacks of a shard cannot exclude other nodes' mounts of this store; mount it "
                    "writable on one node only (docs/hpc-admin.md, \"Two nodes, one store\")", problem)
        return
    log.warning("%s: mounted read-only, since writers on other nodes could overwrite each other's "
                "shards; --single-writer mounts it writable when this is the only writer (docs/s3.md)", problem)
    options.read_only = True


def _raise_open_file_limit() -> None:
    """Readers hold descriptors of shards through their open files: raise the soft limit
    on open files to the hard one, as other file servers do (docs/hpc-admin.md, limits)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("open file limit raised from %d to %d", soft, hard)


class _Unmount:
    """Unmount once: before the exit flush (so the mountpoint does not hang while
    it runs), or on the way out after an error."""

    def __init__(self, mountpoint: str):
        self.mountpoint, self.done = mountpoint, False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        sd_notify("STOPPING=1")
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", self.mountpoint)


async def _run_mounted(mountpoint: str, operations: Operations, on_ready, unmount: _Unmount) -> bool:
    """Serve until unmounted or signalled; then flush. False if data could not be flushed.

    Whatever ends the serving, a signal, an unmount or an internal error, the final
    flush runs (SPEC §6)."""
    flusher = operations.flusher
    clean = True
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_until_unmounted, nursery.cancel_scope)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            if flusher is not None:
                nursery.start_soon(flusher.run)
                nursery.start_soon(_clean_after_crash, operations.tree.store, operations.writer)
            await trio.to_thread.run_sync(os.stat, mountpoint)  # served by the loop above
            on_ready()
    except Exception:  # noqa: BLE001 - logged; what is buffered must still be flushed
        log.critical("internal error; unmounting and flushing what is buffered", exc_info=True)
        clean = False
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the flush short
    unmount()
    if flusher is None:
        return clean
    await operations.writer.metadata.finalize_all()
    operations.writer.persist_scratch()
    return await _final_flush(flusher) and clean


async def _clean_after_crash(store: Store, writer: Writer) -> None:
    """Temporary files of a crashed daemon: never shown, removed in the background.
    Chunk files it was adopting (SPEC §5, metadata after chunks) are adopted again."""
    removed, staged = await trio.to_thread.run_sync(store.clean_after_crash)
    if removed:
        log.info("removed %d temporary files left by an earlier crash", removed)
    for array_key, files in staged.items():
        log.info("%s: adopting %d chunk files again that an earlier crash left staged", array_key, len(files))
        await writer.metadata.adopt_staged(array_key, files, unless_stored=True)


async def _final_flush(flusher: Flusher) -> bool:
    """Everything dirty reaches the store before the daemon exits.

    A daemon that cannot write (disk full, permissions) does not exit and lose
    the data: it keeps retrying, and says so, until the cause is fixed (or it
    is killed, which is the admin's call: TimeoutStopSec in the units). Only
    chunks of an array whose metadata was removed outside the mount cannot be
    stored anywhere: they are dropped, loudly.
    """
    next_warning = trio.current_time()
    while flusher.dirty:
        flusher.drop_orphans()
        sd_notify(f"STATUS=flushing {len(flusher.dirty)} shards")
        try:
            await flusher.flush_all()
        except OSError as error:
            if trio.current_time() >= next_warning:
                log.critical("cannot exit yet: %d shards cannot be written (%s); retrying until they can",
                             len(flusher.dirty), error)
                sd_notify(f"STATUS=cannot write {len(flusher.dirty)} shards: {error}; retrying")
                next_warning = trio.current_time() + EXIT_WARNING_SECONDS
            await trio.sleep(1.0)
    return True


async def _serve_until_unmounted(scope: trio.CancelScope) -> None:
    await pyfuse3.main()
    scope.cancel()  # unmounted from outside (fusermount3 -u): stop the signal watcher too


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            scope.cancel()
            return


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as error:
            log.warning("sd_notify(%s) failed: %s", message, error)


def _status_text(options: MountOptions, operations: Operations, started: float) -> str:
    cache = operations.tree.shards.cache
    lookups = cache.hits + cache.misses
    flusher = operations.flusher
    status = {
        "pid": os.getpid(),
        "version": __version__,
        "store": options.store,
        "mountpoint": options.mountpoint,
        "view": options.view,
        "read_only": options.read_only,
        "uptime_seconds": round(time.time() - started, 1),
        "dirty_bytes": flusher.overlay.dirty_bytes() if flusher else 0,
        "dirty_shards": len(flusher.dirty) if flusher else 0,
        "flushes_done": flusher.flushes_done if flusher else 0,
        "flushes_failed": flusher.flushes_failed if flusher else 0,
        "last_error": flusher.last_error if flusher else None,
        "index_cache_entries": len(cache),
        "index_cache_hit_rate": round(cache.hits / lookups, 4) if lookups else None,
        "known_inodes": len(operations.inodes),
        "open_handles": operations.open_handles(),
        "open_for_writing": operations.open_for_writing(),
        "requests": dict(sorted(operations.requests.items())),
        # an object store's requests by kind (GET, PUT, LIST, ...): what a mount costs
        "store_requests": dict(sorted(getattr(operations.tree.store, "requests", {}).items())),
    }
    return json.dumps(status, indent=2) + "\n"


def read_status(mountpoint: str) -> dict:
    path = os.path.join(mountpoint, CONTROL_DIR, STATUS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise MountError(f"{mountpoint} is not a zarrfs mount ({error})") from None


def is_zarrfs_mount(mountpoint: str) -> bool:
    with open("/proc/mounts") as mounts:
        return any(line.split()[1:3] == [_escape_mount_path(mountpoint), "fuse.zarrfs"] for line in mounts)


def _escape_mount_path(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def umount(mountpoint: str, timeout: float = 120.0, force: bool = False) -> int:
    """Stop the daemon (it flushes, then unmounts) and wait until the mount is gone.

    Like umount(8) of a busy filesystem, it does not cut off writers: it waits up to
    ``timeout`` seconds for files open for writing to be closed, then fails with
    EBUSY. ``force`` stops the daemon anyway; only closed or fsync'ed content is kept.
    """
    mountpoint = os.path.abspath(mountpoint)
    if not is_zarrfs_mount(mountpoint):
        raise MountError(f"{mountpoint} is not a zarrfs mount")
    deadline = time.monotonic() + timeout
    try:
        status = read_status(mountpoint)
        pid = int(status["pid"])
        if not force:
            _wait_for_writers(mountpoint, status, deadline)
        os.kill(pid, signal.SIGTERM)
    except (MountError, ProcessLookupError, KeyError, ValueError, PermissionError) as error:
        if isinstance(error, MountError) and "busy" in str(error):
            raise
        print(f"zarrfs: cannot signal the daemon ({error}); unmounting directly", file=sys.stderr)
        return _fusermount_unmount(mountpoint)
    while time.monotonic() < deadline:
        if not is_zarrfs_mount(mountpoint) and not process_alive(pid):
            return 0
        time.sleep(0.05)
    raise MountError(f"the daemon (pid {pid}) did not unmount {mountpoint} within {timeout:.0f} s")


def _wait_for_writers(mountpoint: str, status: dict, deadline: float) -> None:
    told = False
    while status.get("open_for_writing", 0):
        if time.monotonic() >= deadline:
            raise MountError(f"{mountpoint}: target is busy ({os.strerror(errno.EBUSY)}): "
                             f"{status['open_for_writing']} files are open for writing "
                             "(zarrfs umount --force stops it anyway, keeping only closed content)")
        if not told:
            print(f"zarrfs: waiting for {status['open_for_writing']} files open for writing to be closed",
                  file=sys.stderr)
            told = True
        time.sleep(0.1)
        status = read_status(mountpoint)


def _fusermount_unmount(mountpoint: str) -> int:
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode:
        raise MountError(result.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
    return 0


