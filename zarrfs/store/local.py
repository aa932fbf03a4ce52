"""A local POSIX directory as the backing store.

Keys are store-relative paths with ``/`` separators (``""`` is the root), so
that log lines and ``zarrfs check`` name shards the way users see them.

Crash safety of writes: a new file is written beside the old one under a
``.zarrfs-tmp-`` name, ``fsync``ed, renamed over it, and the directory is
``fsync``ed; a crash leaves the old file or the new one, plus perhaps a
temporary file that the next mount removes (``remove_temporaries``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
import time
import zlib


class LocalStore:
    def __init__(self, root: str):
        self.root = os.path.realpath(root)  # the root itself may be a symlink

    def path(self, key: str) -> str:
        return os.path.join(self.root, key) if key else self.root

    def stat(self, key: str) -> os.stat_result:
        return os.stat(self.path(key))

    def lstat(self, key: str) -> os.stat_result:
        return os.lstat(self.path(key))

    def listdir(self, key: str) -> list[str]:
        return sorted(os.listdir(self.path(key)))

    def read(self, key: str) -> bytes:
        with open(self.path(key), "rb") as f:
            return f.read()

    def open(self, key: str) -> int:
        """A read-only descriptor; the caller closes it."""
        return os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC)

    def readlink(self, key: str) -> str:
        return os.readlink(self.path(key))

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

    # -- durable writes ------------------------------------------------------

    def replace_durably(self, key: str, data: bytes, mode: int = 0o644, like: str | None = None) -> None:
        """Atomically make ``key`` hold ``data``, durable once this returns.

        The new file keeps the owner and mode of the one it replaces (else those
        of ``like``, e.g. the array's metadata), so a daemon running as root does
        not move a user's files, and their quota, to root.
        """
        directory, name = os.path.split(self.path(key))
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, temporary_name(name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # ours by name: a dead process with our pid left it
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            _take_ownership_of(fd, self.path(key), like and self.path(like))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        os.close(fd)
        os.rename(temporary, self.path(key))
        _fsync_directory(directory)

    def chown_to(self, key: str, uid: int, gid: int) -> None:
        """Files made through an ``allow_other`` mount belong to the caller, not the daemon."""
        if os.geteuid() == 0 and (uid, gid) != (0, 0):
            os.chown(self.path(key), uid, gid, follow_symlinks=False)

    def remove_durably(self, key: str, up_to: str) -> None:
        """Delete ``key``, then its parent directories while empty, up to ``up_to``."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))
        directory = os.path.dirname(key)
        while directory and directory != up_to and directory.startswith(up_to):
            try:
                os.rmdir(self.path(directory))
            except FileNotFoundError:
                pass
            except OSError:  # not empty: other shards live here
                break
            directory = os.path.dirname(directory)
        _fsync_directory(self.path(directory))

    @contextlib.contextmanager
    def locked(self, key: str, target: str, wait: bool = True):
        """An advisory lock, between processes and nodes, for rewriting ``target``,
        taken on one byte (a hash of ``target``) of the file ``key``.
        Without ``wait``, raises BlockingIOError when somebody holds it.

        Open-file-description record locks: unlike classic POSIX locks they
        belong to this descriptor, not to the process, so the repacker's threads
        exclude each other too and closing one descriptor does not drop another
        thread's lock. They work on NFS (lockd) and on Lustre/GPFS mounted with
        locking, and a byte per shard of the array's metadata file needs no
        extra inode per shard.
        """
        slot = zlib.crc32(target.encode()) & 0x7FFFFFFF
        fd = os.open(self.path(key), os.O_RDWR | os.O_CLOEXEC)
        try:
            command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
            fcntl.fcntl(fd, command, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove_temporaries(self, metadata_names=("zarr.json", ".zarray")) -> int:
        """Delete temporary files a crashed daemon left behind; returns how many.

        Another daemon on the same store may be writing one right now: a shard's
        temporary is removed only under that shard's repack lock, and any other
        temporary only once it is old.
        """
        removed = 0
        for directory, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMPORARY_PREFIX) and self._remove_if_abandoned(directory, name, metadata_names):
                    removed += 1
        return removed

    def _remove_if_abandoned(self, directory: str, name: str, metadata_names) -> bool:
        path = os.path.join(directory, name)
        owner, target_name = name[len(TEMPORARY_PREFIX):].partition("-")[::2]
        target = os.path.relpath(os.path.join(directory, target_name), self.root)
        metadata = _array_metadata_above(self.root, directory, metadata_names)
        try:
            if metadata is not None and target_name not in metadata_names:
                # A shard's temporary exists only while its repack holds the shard's lock.
                with self.locked(os.path.relpath(metadata, self.root), target, wait=False):
                    os.unlink(path)
                return True
            if _owner_is_gone(owner) or time.time() - os.stat(path).st_mtime > ABANDONED_AFTER_SECONDS:
                os.unlink(path)
                return True
        except (BlockingIOError, PermissionError, FileNotFoundError):
            pass  # being written right now, or gone already
        return False


TEMPORARY_PREFIX = ".zarrfs-tmp-"
ABANDONED_AFTER_SECONDS = 600  # a temporary of another node is removed once this old


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def temporary_name(name: str, pid: int | None = None) -> str:
    """``.zarrfs-tmp-<host><pid>-<name>``: says who writes it, so that a later
    mount on the same node can tell a dead writer's leftovers at once."""
    return f"{TEMPORARY_PREFIX}{_host_tag()}{os.getpid() if pid is None else pid:08x}-{name}"


def _owner_is_gone(owner: str) -> bool:
    """Whether the process that wrote a temporary is gone (known only on its own node)."""
    if len(owner) != 12 or owner[:4] != _host_tag():
        return False
    try:
        return not process_alive(int(owner[4:], 16))
    except ValueError:
        return False


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _array_metadata_above(root: str, directory: str, names) -> str | None:
    """The metadata file of the array a shard directory belongs to."""
    while True:
        for name in names:
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate):
                return candidate
        if os.path.samefile(directory, root) if os.path.exists(directory) else True:
            return None
        directory = os.path.dirname(directory)


def _take_ownership_of(fd: int, *candidates: str | None) -> None:
    for path in candidates:
        if not path:
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            os.fchown(fd, st.st_uid, st.st_gid)
        return


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
