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
import ctypes
import errno
import fcntl
import functools
import itertools
import os
import re
import secrets
import socket
import stat
import struct
import threading
import time
import zlib
from collections import OrderedDict
from typing import Hashable

from .base import ABSENT, Capabilities, Conflict, FileChanged, Stat, TooLarge


READ_BLOCK = 1 << 20
RECENT_STATS_MAX = 1 << 16  # entries; past it the whole memo is dropped (it refills in a second)


def _stat_of(st: os.stat_result) -> Stat:
    """The protocol's Stat of a POSIX stat result: a version is (inode, size, mtime)."""
    return Stat(st.st_mode, st.st_size, st.st_mtime_ns, (st.st_ino, st.st_size, st.st_mtime_ns),
                st.st_uid, st.st_gid, st.st_nlink, st.st_ino, st.st_atime_ns, st.st_ctime_ns)


class SharedFile:
    """A read-only descriptor of one version of a file, shared by all who opened that
    version: open files cost the daemon one descriptor per file version, not per handle."""

    def __init__(self, store: LocalStore, key: tuple, fd: int, serial: int):
        self.store, self.key, self.fd, self.users = store, key, fd, 1
        self.serial = serial  # of the store's opens: of two versions of a key, the later one is newer

    @property
    def version(self) -> Hashable:
        return self.key[1]

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def stat(self) -> Stat:
        return _stat_of(os.fstat(self.fd))

    def release(self) -> None:
        self.store._release(self)


class LocalPlainFile:
    """A plain file (outside any array) open for writing: a descriptor of the backing file."""

    def __init__(self, fd: int):
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def stat(self) -> Stat:
        return _stat_of(os.fstat(self.fd))

    def set_attributes(self, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None) -> None:
        """fchmod, fchown, futimens (the file may have no name any more)."""
        if mode is not None:
            os.fchmod(self.fd, stat.S_IMODE(mode))
        if uid is not None or gid is not None:
            os.fchown(self.fd, -1 if uid is None else uid, -1 if gid is None else gid)
        if atime_ns is not None or mtime_ns is not None:
            st = os.fstat(self.fd)
            os.utime(self.fd, ns=(atime_ns or st.st_atime_ns, mtime_ns or st.st_mtime_ns))

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _changes_the_store(method):
    """A method that changes the backing store (see ``LocalStore._change``)."""

    @functools.wraps(method)
    def changing(self, *args, **kwargs):
        with self._change():
            return method(self, *args, **kwargs)

    return changing


class LocalStore:
    capabilities = Capabilities(hard_links=True, symlinks=True, owners_and_modes=True, cheap_calls=True,
                                conditional_writes=True)

    def __init__(self, root: str, reuse_stats_for: float = 0.0, keep_open: int = 0):
        """``reuse_stats_for`` (see recent_stat) and ``keep_open`` (see share)
        are for the daemon, whose reads all come from one thread."""
        self.root = os.path.realpath(root)  # the root itself may be a symlink
        self.name = self.root
        self.reuse_stats_for = reuse_stats_for  # seconds
        self.keep_open = keep_open  # descriptors
        self._recent: dict[tuple[str, bool], tuple[int, float, Stat | None]] = {}  # (key, followed) -> seen
        self._generation = 0  # of changes of the store through it
        self._changing = 0  # changes under way
        self._changes_lock = threading.Lock()
        self._shared: dict[tuple, SharedFile] = {}  # (key, version) -> the descriptor its readers share
        self._unused_kept: OrderedDict[str, SharedFile] = OrderedDict()  # of those, unused: the newest of a key
        self._opens = itertools.count()
        self._shared_lock = threading.Lock()  # (zarrfs check shares from worker threads)
        self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # what keys resolve beneath

    def path(self, key: str) -> str:
        return os.path.join(self.root, key) if key else self.root

    # -- every path resolves beneath the store root ------------------------------
    # A daemon running as root for many users must never act outside the store,
    # whatever symlinks a user plants (or swaps for directories it is working in):
    # keys are resolved with openat2(RESOLVE_BENEATH) (symlinks that stay inside the
    # store are followed, others fail), and the last component is acted on relative
    # to its parent's descriptor, without following it unless asked.

    def stat(self, key: str) -> Stat:
        """``key``'s attributes, following a last symlink only if it stays in the store."""
        fd = self._beneath(key, os.O_PATH | os.O_CLOEXEC)
        try:
            return _stat_of(os.fstat(fd))
        finally:
            os.close(fd)

    def lstat(self, key: str) -> Stat:
        fd = self._beneath(key, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return _stat_of(os.fstat(fd))
        finally:
            os.close(fd)

    def _beneath(self, key: str, flags: int) -> int:
        """open_beneath, with a path that leads out of the store reported as EIO."""
        try:
            return open_beneath(self._root_fd, key, flags)
        except OSError as error:
            if error.errno == errno.EXDEV:
                raise OSError(errno.EIO, "leads out of the store", key) from None
            raise

    @contextlib.contextmanager
    def _parent(self, key: str):
        """``(descriptor of the parent directory, last name)`` of ``key``."""
        directory, name = split_key(key)
        fd = self._beneath(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd, name
        finally:
            os.close(fd)

    @_changes_the_store
    def create(self, key: str, flags: int, mode: int) -> LocalPlainFile:
        """Open (or create) a plain file for writing; never through a last symlink."""
        with self._parent(key) as (fd, name):
            return LocalPlainFile(os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                                          dir_fd=fd))

    @_changes_the_store
    def mkdir(self, key: str, mode: int) -> None:
        with self._parent(key) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    @_changes_the_store
    def rmdir(self, key: str) -> None:
        with self._parent(key) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    @_changes_the_store
    def unlink(self, key: str) -> None:
        with self._parent(key) as (fd, name):
            os.unlink(name, dir_fd=fd)

    @_changes_the_store
    def symlink(self, target: str, key: str) -> None:
        with self._parent(key) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    @_changes_the_store
    def rename(self, old: str, new: str) -> None:
        with self._parent(old) as (old_fd, old_name), self._parent(new) as (new_fd, new_name):
            os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)

    @_changes_the_store
    def link(self, old: str, new: str) -> None:
        with self._parent(old) as (old_fd, old_name), self._parent(new) as (new_fd, new_name):
            os.link(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)

    @_changes_the_store
    def truncate(self, key: str, size: int) -> None:
        fd = self._beneath(key, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    @_changes_the_store
    def set_attributes(self, key: str, mode=None, uid=None, gid=None, times_ns=None) -> None:
        """chmod, chown, utimes of ``key`` itself (a symlink's own, where that exists)."""
        with self._parent(key) as (fd, name):
            if mode is not None:
                if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.EOPNOTSUPP, "symlinks have no mode of their own", key)
                os.chmod(name, mode, dir_fd=fd)
            if uid is not None or gid is not None:
                os.chown(name, -1 if uid is None else uid, -1 if gid is None else gid, dir_fd=fd,
                         follow_symlinks=False)
            if times_ns is not None:
                os.utime(name, ns=times_ns, dir_fd=fd, follow_symlinks=False)

    # -- stat results reused between changes -----------------------------------
    # A reader walking an array asks for the same metadata file and shard dozens
    # of times a second: one stat per key serves for ``reuse_stats_for`` seconds,
    # unless the store changed through this object since (``_change``). Changes
    # from outside the mount show within that time, well inside the kernel's own
    # attribute timeout; bytes are never served from a stale stat, since opens
    # compare the descriptor's fstat with the version the index was read from.

    def recent_stat(self, key: str, follow_symlinks: bool = True) -> Stat:
        """``stat(key)`` (``lstat`` without ``follow_symlinks``), possibly as seen a moment
        ago. Raises FileNotFoundError."""
        now, generation = time.monotonic(), self._generation  # (before the stat: a change may end during it)
        remembered = self._recent.get((key, follow_symlinks))
        if (remembered is not None and not self._changing and remembered[0] == generation
                and now - remembered[1] < self.reuse_stats_for):
            st = remembered[2]
        else:
            try:
                st = self.stat(key) if follow_symlinks else self.lstat(key)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if self.reuse_stats_for > 0:
                if len(self._recent) >= RECENT_STATS_MAX:
                    self._recent.clear()
                self._recent[(key, follow_symlinks)] = (generation, now, st)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", key)
        return st

    @contextlib.contextmanager
    def _change(self):
        """Around a change of the store (see ``recent_stat``): while it lasts no stat is
        reused, and none seen before it ends is reused after. Writes into the mount's
        buffer change nothing here, so a writer's chunks do not make readers stat again;
        a repack is a change only while it makes directories and renames its new shard."""
        with self._changes_lock:  # (repacks and metadata change the store from worker threads)
            self._changing += 1
        try:
            yield
        finally:
            with self._changes_lock:
                self._changing -= 1
                self._generation += 1

    def forget_recent(self, key: str) -> None:
        """The next recent_stat of ``key`` looks again (it was seen to have changed)."""
        self._recent.pop((key, True), None)
        self._recent.pop((key, False), None)

    def generation(self) -> int | None:
        """Changes of the store through this object so far, for callers that keep what they
        derive from recent stats; None while one is under way (keep nothing seen now)."""
        return None if self._changing else self._generation

    def listdir(self, key: str) -> list[str]:
        fd = self._beneath(key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def scan(self, key: str) -> list[tuple[str, bool]]:
        """``(name, is a directory)`` of each entry of directory ``key``, by name;
        symlinks are not followed (a symlink to a directory is no directory here)."""
        fd = self._beneath(key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(fd) as entries:
                return sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries)
        finally:
            os.close(fd)

    def read(self, key: str, limit: int | None = None) -> bytes:
        """The whole regular file ``key``; more than ``limit`` bytes raise TooLarge
        (checked while reading too: the file may grow, or never end)."""
        return self.read_versioned(key, limit)[0]

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Hashable]:
        """``read``, and the version the bytes are of."""
        fd = self.open(key)
        try:
            version = _stat_of(os.fstat(fd)).version
            if limit is not None and os.fstat(fd).st_size > limit:
                raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", key)
            chunks, total = [], 0
            while chunk := os.read(fd, READ_BLOCK if limit is None else min(READ_BLOCK, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if limit is not None and total > limit:
                    raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", key)
            return b"".join(chunks), version
        finally:
            os.close(fd)

    def open(self, key: str) -> int:
        """A read-only descriptor of the regular file ``key``; the caller closes it.

        Nothing in the store can make the daemon block, or read outside the store:
        the path resolves beneath the store root only and the last component is not
        followed (a symlink is the kernel's to follow, in the reader's context); the
        open does not wait (a FIFO); anything but a regular file is refused with EIO.
        """
        if not stat.S_ISREG(self.lstat(key).st_mode):  # FIFOs, sockets, devices are never opened
            raise OSError(errno.EIO, "not a regular file", key)
        fd = self._beneath(key, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the look: it cannot block us
            os.close(fd)
            raise OSError(errno.EIO, "not a regular file", key)
        return fd

    def share(self, key: str, version: Hashable | None = None) -> SharedFile:
        """``key`` open for reading, ``release()`` it when done: at ``version`` if it is open
        at that version already (by a reader, or one of the last ``keep_open`` ones), else
        the current version. A reader walks the chunks of one shard after another, and
        lstat, open and fstat would cost each of them six system calls more."""
        with self._shared_lock:
            shared = self._shared.get((key, version))
            if shared is None:
                fd = self.open(key)
                name = (key, _stat_of(os.fstat(fd)).version)
                shared = self._shared.get(name)
                if shared is None:
                    self._close_unused(key)  # an older version: replaced since
                    shared = self._shared[name] = SharedFile(self, name, fd, next(self._opens))
                    return shared
                os.close(fd)
            if not shared.users:
                del self._unused_kept[key]
            shared.users += 1
            return shared

    def _release(self, shared: SharedFile) -> None:
        with self._shared_lock:
            shared.users -= 1
            if not shared.users:
                self._unused(shared)

    def _unused(self, shared: SharedFile) -> None:
        """Nobody reads ``shared`` any more: kept for the next reader of that version if it
        is the newest of its key (an older one was replaced: its disk space is freed now),
        closed when ``keep_open`` newer ones are kept."""
        key = shared.key[0]
        kept = self._unused_kept.get(key)
        if kept is not None and kept.serial > shared.serial:
            self._close(shared)
            return
        self._close_unused(key)
        self._unused_kept[key] = shared
        while len(self._unused_kept) > self.keep_open:
            self._close(self._unused_kept.popitem(last=False)[1])

    def _close_unused(self, key: str) -> None:
        kept = self._unused_kept.pop(key, None)
        if kept is not None:
            self._close(kept)

    def _close(self, shared: SharedFile) -> None:
        del self._shared[shared.key]
        os.close(shared.fd)

    def pread_version(self, key: str, version: tuple, size: int, offset: int) -> bytes:
        """Bytes of ``key`` in the given version (``Stat.version``). Raises FileChanged if it has
        been replaced."""
        shared = self.share(key, version)
        try:
            if shared.version != version:
                raise FileChanged(key)
            return shared.pread(size, offset)
        finally:
            shared.release()

    def readlink(self, key: str) -> str:
        with self._parent(key) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self._root_fd)

    # -- durable writes ------------------------------------------------------

    def replace_durably(self, key: str, data: bytes, mode: int = 0o644, like: str | None = None,
                        expected: Hashable | None = None, owner: tuple[int, int] | None = None) -> None:
        """Atomically make ``key`` hold ``data``, durable once this returns; with
        ``expected``, only if ``key`` still holds that version (else Conflict): the
        caller holds the key's lock (``locked``), so no zarrfs can change it between
        this check and the rename.

        The new file keeps the owner and mode of the one it replaces (else those
        of ``like``, e.g. the array's metadata), so a daemon running as root does
        not move a user's files, and their quota, to root. A file with an ``owner``
        of its own (one renamed onto ``key``) keeps ``mode`` and that owner instead,
        as rename(2) does. No symlink on the way is followed: a daemon running as
        root writes inside the store only.
        """
        self._check_expected(key, expected)
        with self._replacing(key, mode) as fd:
            if owner is None:
                _take_ownership_of(fd, self._lstat_beneath(key), None if like is None else self._lstat_beneath(like))
            else:
                os.fchmod(fd, mode)  # (not the umask's)
                if os.geteuid() == 0:
                    os.fchown(fd, *owner)
            _pwrite_all(fd, data, 0)

    @contextlib.contextmanager
    def _replacing(self, key: str, mode: int):
        """A new file for ``key``: yields the fd of a temporary beside it; when the block
        ends, the temporary is fsynced and renamed onto ``key``, and the directory fsynced;
        when the block raises, the temporary is removed and ``key`` stays as it was."""
        directory, name = split_key(key)
        with self._change():  # (it may make directories)
            dir_fd = self._directory(directory, create=True)
        try:
            temporary = temporary_name(name)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd)
            try:
                yield fd
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(temporary, dir_fd=dir_fd)
                raise
            os.close(fd)
            with self._change():
                os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _check_expected(self, key: str, expected: Hashable | None) -> None:
        if expected is None:
            return
        current = self._lstat_beneath(key)
        if (ABSENT if current is None else current.version) != expected:
            raise Conflict(key)

    def _directory(self, key: str, create: bool = False) -> int:
        """A descriptor of directory ``key``, opened component by component without
        following symlinks; ``create`` makes missing ones, each with the owner and mode
        of the directory it is made in (a daemon running as root does not give a
        user's array root-owned key directories)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in key.split("/") if key else ():
                if part in (".", ".."):
                    raise OSError(errno.EXDEV, "path leads out of the store", key)
                try:
                    child = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    _make_directory_like(fd, part)
                    child = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lstat_beneath(self, key: str) -> Stat | None:
        try:
            return self.lstat(key)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def chown_to(self, key: str, uid: int, gid: int) -> None:
        """Files made through an ``allow_other`` mount belong to the caller, not the daemon."""
        if os.geteuid() == 0 and (uid, gid) != (0, 0):
            self.set_attributes(key, uid=uid, gid=gid)

    @_changes_the_store
    def remove_durably(self, key: str, up_to: str, expected: Hashable | None = None) -> None:
        """Delete ``key`` (with ``expected``: only if it holds that version, else Conflict),
        then its parent directories while empty, up to ``up_to``."""
        self._check_expected(key, expected)
        directory, name = split_key(key)
        try:
            dir_fd = self._directory(directory)
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        while directory and directory != up_to and directory.startswith(up_to):
            parent, name = split_key(directory)
            parent_fd = self._directory(parent)
            try:
                os.rmdir(name, dir_fd=parent_fd)
                os.fsync(parent_fd)
            except FileNotFoundError:
                pass
            except OSError:  # not empty: other shards live here
                break
            finally:
                os.close(parent_fd)
            directory = parent

    @contextlib.contextmanager
    def locked(self, array_key: str, target: str, wait: bool = True):
        """An advisory lock, between processes and nodes, for rewriting ``target`` (a key
        in the array at ``array_key``), taken on one byte (a hash of ``target`` relative
        to the array) of the array's lock file ``.zarrfs-lock``, which is created once
        and never replaced (metadata is replaced by rename, so a lock on it would not
        exclude anybody). Without ``wait``, raises BlockingIOError when somebody holds it.

        Open-file-description record locks: unlike classic POSIX locks they belong
        to this descriptor, not to the process, so the repacker's threads exclude
        each other too and closing one descriptor does not drop another thread's
        lock. They work on NFS (lockd) and on Lustre/GPFS mounted with locking
        (docs/hpc-admin.md); ``locking_problem`` tells where they do not.
        """
        relative = target[len(array_key) + 1:] if array_key else target
        slot = zlib.crc32(relative.encode()) & 0x7FFFFFFF
        dir_fd = self._directory(array_key)
        try:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
            fcntl.fcntl(fd, command, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
            yield
        finally:
            os.close(fd)  # releases the lock

    def files_below(self, key: str):
        """Key parts (relative to ``key``) of every file below directory ``key``; no
        symlink is followed (a worker thread: this walks)."""
        try:
            top = self._beneath(key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            for directory, _, files, _ in os.fwalk(".", dir_fd=top):
                below = () if directory == "." else tuple(directory[2:].split("/"))
                for name in files:
                    yield below + (name,)
        finally:
            os.close(top)

    @_changes_the_store
    def stage_chunk_files(self, array_key: str, is_chunk_key) -> list[tuple[str, tuple[str, ...]]]:
        """Rename the files below ``array_key`` whose key parts (relative to the array)
        ``is_chunk_key`` accepts to hidden staging names beside them; returns
        ``(staged key, key parts)`` of each. A shard written at a key then never meets
        a chunk file of the same name, and a crash leaves them to adopt again."""
        staged = []
        for parts in list(self.files_below(array_key)):
            if zarrfs_own(parts[-1]) or not is_chunk_key(parts):
                continue
            key = join_key(array_key, *parts[:-1], STAGED_PREFIX + parts[-1])
            self.rename(join_key(array_key, *parts), key)
            staged.append((key, parts))
        for directory in {split_key(key)[0] for key, _ in staged}:
            self._fsync_directory(directory)
        return staged

    def _fsync_directory(self, key: str) -> None:
        fd = self._beneath(key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @_changes_the_store
    def remove_staged(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self.unlink(key)

    @_changes_the_store
    def remove_lock_file(self, array_key: str) -> None:
        """The array is being deleted (``rm -r`` through the mount)."""
        with contextlib.suppress(FileNotFoundError):
            self.unlink(join_key(array_key, LOCK_FILE))

    def locking_problem(self) -> str | None:
        """Why repack locks may not exclude other nodes here, or None when they work:
        a lock on this node fails, or the filesystem is mounted with node-local locks."""
        probe = os.path.join(self.root, temporary_name("lock-probe"))
        try:
            fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return None  # a store we cannot write: nothing will be repacked
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0))
        except OSError as error:
            return f"record locks fail here ({error.strerror})"
        finally:
            os.close(fd)
            os.unlink(probe)
        return node_local_locking(self.root)

    @_changes_the_store
    def clean_after_crash(self, metadata_names=("zarr.json", ".zarray")) -> tuple[int, dict]:
        """Delete temporary files a crashed daemon left behind, and find chunk files it
        was adopting. Returns how many temporaries were removed, and per array key the
        staged files to adopt again (``(staged key, key parts)``).

        Another daemon on the same store may be writing one right now: a shard's
        temporary is removed only under that shard's repack lock, and any other
        temporary only once it is old.
        """
        removed, staged = 0, {}
        for directory, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMPORARY_PREFIX) and self._remove_if_abandoned(directory, name, metadata_names):
                    removed += 1
                elif name.startswith(STAGED_PREFIX):
                    self._found_staged(directory, name, metadata_names, staged)
        return removed, staged

    def _found_staged(self, directory: str, name: str, metadata_names, staged: dict) -> None:
        metadata = _array_metadata_above(self.root, directory, metadata_names)
        original = os.path.join(directory, name[len(STAGED_PREFIX):])
        if metadata is None:  # its array is gone: the file is a plain file again
            os.rename(os.path.join(directory, name), original)
            return
        array_key = os.path.relpath(os.path.dirname(metadata), self.root)
        array_key = "" if array_key == "." else array_key
        parts = tuple(os.path.relpath(original, os.path.dirname(metadata)).split(os.sep))
        key = os.path.relpath(os.path.join(directory, name), self.root)
        staged.setdefault(array_key, []).append((key, parts))

    def _remove_if_abandoned(self, directory: str, name: str, metadata_names) -> bool:
        ours = TEMPORARY.fullmatch(name)
        if ours is None:
            return False  # a user's file that merely looks like ours
        path = os.path.join(directory, name)
        owner, target_name = ours.groups()
        target = os.path.relpath(os.path.join(directory, target_name), self.root)
        metadata = _array_metadata_above(self.root, directory, metadata_names)
        try:
            if metadata is not None and target_name not in metadata_names:
                # A shard's temporary exists only while its repack holds the shard's lock.
                array_key = os.path.relpath(os.path.dirname(metadata), self.root)
                with self.locked("" if array_key == "." else array_key, target, wait=False):
                    os.unlink(path)
                return True
            if _owner_is_gone(owner) or time.time() - os.stat(path).st_mtime > ABANDONED_AFTER_SECONDS:
                os.unlink(path)
                return True
        except (BlockingIOError, PermissionError, FileNotFoundError):
            pass  # being written right now, or gone already
        return False

    def read_many(self, dir_key: str, names, limit: int | None = None) -> list[bytes | None]:
        """The whole regular files ``names`` (single names, no ``/``) of directory ``dir_key``,
        in order; None for a name that does not exist (all None when the directory does
        not). Each is bounded like ``read``.

        For reading thousands of small files (``zarrfs pack``): the directory is resolved
        beneath the store root once, and each file costs an open relative to it (the name
        not followed: a symlink is refused like anything but a regular file, with EIO),
        one fstat, one read (of one byte more than its size: the read comes back short at
        the end) and a close, instead of
        ``read``'s two resolutions, lstat, two fstats and two reads."""
        found: list[bytes | None] = []
        with contextlib.closing(self._regular_files_in(dir_key, names)) as files:
            for name, fd, st in files:
                found.append(None if fd is None else _read_whole(fd, st.st_size, limit, join_key(dir_key, name)))
        return found

    def _regular_files_in(self, dir_key: str, names):
        """Each of ``names`` in the directory ``dir_key`` (resolved beneath the store root
        once), opened relative to it: ``(name, fd, stat)`` of a regular file, the fd closed
        when the caller moves on, or ``(name, None, None)`` where there is none. A name is
        never followed: a symlink, like anything but a regular file, is EIO. Close the
        generator (``contextlib.closing``) so that an error of the caller closes the fds."""
        names = list(names)
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is no name of a file in {dir_key!r}")
        try:
            dir_fd = self._beneath(dir_key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):  # no such directory: no such files
            for name in names:
                yield name, None, None
            return
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            for name in names:
                try:
                    fd = os.open(name, flags, dir_fd=dir_fd)
                except FileNotFoundError:
                    yield name, None, None
                    continue
                except OSError as error:
                    if error.errno == errno.ELOOP:  # a symlink: never followed here
                        raise OSError(errno.EIO, "not a regular file", join_key(dir_key, name)) from None
                    raise
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):  # FIFOs, sockets, devices (opened without waiting)
                        raise OSError(errno.EIO, "not a regular file", join_key(dir_key, name))
                    yield name, fd, st
                finally:
                    os.close(fd)
        finally:
            os.close(dir_fd)

    def replace_durably_from_files(self, key: str, source, groups, finish, mode: int = 0o644,
                                   limit: int | None = None) -> list[int | None]:
        """Atomically make ``key`` hold the regular files of ``source`` (a store) named by
        ``groups`` (``(dir_key, names)`` pairs, names as for ``read_many``), one after another
        in that order, followed by ``finish(sizes)``: the bytes to append, given the size of
        each file (None for one that does not exist: it adds nothing). Durable once this
        returns; returns the sizes. When ``finish`` returns None, nothing is written.

        For ``zarrfs pack``, which builds each shard out of many chunk files: when ``source``
        is a LocalStore, the bytes never pass through Python. Each file is opened as
        ``read_many`` opens it (beneath the source's root, a symlink or anything but a
        regular file refused with EIO, more than ``limit`` bytes TooLarge) and copied by the
        kernel (``copy_file_range``; ``sendfile`` across filesystems that refuse it; else
        read and write) into a temporary beside ``key`` at consecutive offsets; then
        ``finish``'s bytes, fsync, rename onto ``key``, fsync of the directory, as in
        ``replace_durably`` (the new file keeps the owner and mode of the one it replaces).
        A source file whose size changes while it is copied is an EIO error. On any error
        the temporary is removed and ``key`` is left as it was. Other sources: ``read_many``,
        then ``replace_durably``."""
        if not isinstance(source, LocalStore):
            return replace_from_read_many(self, key, source, groups, finish, mode, limit)
        try:
            with self._replacing(key, mode) as fd:
                _take_ownership_of(fd, self._lstat_beneath(key))
                sizes, end = source._copy_files_into(fd, groups, limit)
                tail = finish(sizes)
                if tail is None:
                    raise _NothingToWrite
                _pwrite_all(fd, tail, end)
        except _NothingToWrite:
            pass
        return sizes

    def _copy_files_into(self, out_fd: int, groups, limit: int | None) -> tuple[list[int | None], int]:
        """Copy the files of ``groups`` (see ``replace_durably_from_files``) one after another
        to the start of the file open at ``out_fd``; their sizes (None: missing) and the end."""
        sizes: list[int | None] = []
        end = 0
        in_kernel = True  # copy_file_range works between these two files' filesystems (until refused)
        for dir_key, names in groups:
            with contextlib.closing(self._regular_files_in(dir_key, names)) as files:
                for name, fd, st in files:
                    if fd is None:
                        sizes.append(None)
                        continue
                    if limit is not None and st.st_size > limit:
                        raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", join_key(dir_key, name))
                    in_kernel = self._copy_exactly(fd, out_fd, st.st_size, end, dir_key, name, in_kernel)
                    sizes.append(st.st_size)
                    end += st.st_size
        return sizes, end

    @staticmethod
    def _copy_exactly(src_fd: int, out_fd: int, size: int, offset: int, dir_key: str, name: str,
                      in_kernel: bool) -> bool:
        """Copy the file open at ``src_fd`` (from its start), which fstat said holds ``size``
        bytes, to ``offset`` of ``out_fd``; EIO if it ends anywhere else. One call asks for a
        byte more than ``size``: coming back short, it found the end (as ``_read_whole``).
        ``in_kernel``: try copy_file_range; returns whether to try it for the next file."""
        done = 0
        while True:
            ask = size + 1 - done
            copied = None
            if in_kernel:
                try:
                    copied = os.copy_file_range(src_fd, out_fd, ask, offset_dst=offset + done)
                except OSError as error:  # EXDEV: another filesystem (type); EINVAL, ENOSYS: none here
                    if error.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    in_kernel = False
            if copied is None:
                copied = LocalStore._copy_without_copy_file_range(src_fd, out_fd, ask, offset + done)
            done += copied
            if copied == 0 or done > size or (copied < ask and done == size):
                break
        if done != size:
            raise OSError(errno.EIO, f"changed while being copied ({size} bytes when opened, "
                                     f"{'more' if done > size else done} when copied)", join_key(dir_key, name))
        return in_kernel

    @staticmethod
    def _copy_without_copy_file_range(src_fd: int, out_fd: int, count: int, offset: int) -> int:
        try:  # sendfile writes where out_fd is: put it there
            os.lseek(out_fd, offset, os.SEEK_SET)
            return os.sendfile(out_fd, src_fd, None, count)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        data = os.read(src_fd, min(count, READ_BLOCK))
        _pwrite_all(out_fd, data, offset)
        return len(data)


def _pwrite_all(fd: int, data, offset: int) -> None:
    """All of ``data`` at ``offset`` (a write may take fewer bytes than it is given)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


TEMPORARY_PREFIX = ".zarrfs-tmp-"
STAGED_PREFIX = ".zarrfs-adopt-"  # a chunk file that arrived before its metadata, until repacked
LOCK_FILE = ".zarrfs-lock"  # in each array directory written through a mount; never replaced
# Filesystems whose mount options make record locks local to one node.
NODE_LOCAL_LOCK_OPTIONS = {"nfs": {"nolock", "local_lock=all", "local_lock=posix"},
                           "nfs4": {"local_lock=all", "local_lock=posix"},
                           "lustre": {"localflock", "noflock"}}


class _NothingToWrite(Exception):
    """``finish`` of ``replace_durably_from_files`` gave nothing: the temporary goes, the key stays."""


def _read_whole(fd: int, size: int, limit: int | None, key: str) -> bytes:
    """All of the regular file open at ``fd`` whose fstat said ``size`` bytes: usually one
    read; more than ``limit`` bytes raise TooLarge (checked while reading: it may grow)."""
    if limit is not None and size > limit:
        raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", key)
    want = size + 1 if limit is None else min(size, limit) + 1
    data = os.read(fd, want)
    if len(data) == size:  # short of what was asked: the end of the file
        return data
    chunks, total = [data], len(data)
    while data:
        if limit is not None and total > limit:
            raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", key)
        data = os.read(fd, READ_BLOCK if limit is None else min(READ_BLOCK, limit + 1 - total))
        chunks.append(data)
        total += len(data)
    if limit is not None and total > limit:
        raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", key)
    return b"".join(chunks)


def replace_from_read_many(store, key: str, source, groups, finish, mode: int = 0o644,
                           limit: int | None = None) -> list[int | None]:
    """``replace_durably_from_files`` the simple way (any stores): the files read with
    ``source.read_many``, joined with ``finish``'s bytes, written with ``store.replace_durably``."""
    parts: list[bytes] = []
    sizes: list[int | None] = []
    for dir_key, names in groups:
        for data in source.read_many(dir_key, names, limit):
            sizes.append(None if data is None else len(data))
            if data is not None:
                parts.append(data)
    tail = finish(sizes)
    if tail is not None:
        parts.append(tail)
        store.replace_durably(key, b"".join(parts), mode)
    return sizes


def join_key(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def node_local_locking(path: str) -> str | None:
    """A warning if the filesystem holding ``path`` keeps record locks to one node."""
    best, entry = "", None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")) \
                    and len(fields[1]) >= len(best):
                best, entry = fields[1], fields
    if entry is None:
        return None
    local = NODE_LOCAL_LOCK_OPTIONS.get(entry[2], set()) & set(entry[3].split(","))
    if local:
        return f"{entry[2]} at {entry[1]} is mounted with {','.join(sorted(local))}: locks are local to this node"
    return None
ABANDONED_AFTER_SECONDS = 600  # a temporary of another node is removed once this old


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def temporary_name(name: str, pid: int | None = None) -> str:
    """``.zarrfs-tmp-<host><pid>-<token>-<name>``: says who writes it, so that a later
    mount on the same node can tell a dead writer's leftovers at once, and is
    recognisable beyond doubt (a user's own ``.zarrfs-tmp-notes`` is never touched)."""
    return f"{TEMPORARY_PREFIX}{_host_tag()}{os.getpid() if pid is None else pid:08x}-{secrets.token_hex(4)}-{name}"


TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r"([0-9a-f]{12})-[0-9a-f]{8}-(.+)", re.DOTALL)


def zarrfs_own(name: str) -> bool:
    """Whether a backing file name is one of zarrfs's own (never shown, never a user's)."""
    return name == LOCK_FILE or name.startswith(STAGED_PREFIX) or is_temporary(name)


def is_temporary(name: str) -> bool:
    """Whether a backing file name is a temporary zarrfs writes beside the file it replaces."""
    return TEMPORARY.fullmatch(name) is not None


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


DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_key(key: str) -> tuple[str, str]:
    """``(directory key, name)`` of a store key."""
    directory, _, name = key.rpartition("/")
    return directory, name


def _make_directory_like(parent_fd: int, name: str) -> None:
    st = os.fstat(parent_fd)
    try:
        os.mkdir(name, stat.S_IMODE(st.st_mode), dir_fd=parent_fd)
    except FileExistsError:
        return
    os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent_fd)  # whatever the umask took away
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(name, st.st_uid, st.st_gid, dir_fd=parent_fd, follow_symlinks=False)


def _take_ownership_of(fd: int, *candidates: Stat | None) -> None:
    for st in candidates:
        if st is None or stat.S_ISLNK(st.st_mode):
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            os.fchown(fd, st.st_uid, st.st_gid)
        return


# openat2(2) (Linux 5.6): resolve a path beneath a directory, never out of it.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "ppc64le": 437, "s390x": 437}.get(os.uname().machine)
_RESOLVE_NO_MAGICLINKS, _RESOLVE_BENEATH = 0x02, 0x08
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_beneath(root_fd: int, key: str, flags: int) -> int:
    """``os.open(key, flags)`` relative to the directory ``root_fd``, resolved beneath it:
    a symlink (or ``..``) that leads out of it fails with EXDEV, as with
    ``openat2(RESOLVE_BENEATH)``; where the kernel lacks openat2, every component is
    opened with O_NOFOLLOW instead."""
    if not key:
        return os.open(".", flags, dir_fd=root_fd)
    global _SYS_OPENAT2
    if _SYS_OPENAT2 is not None:
        how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, os.fsencode(key), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        error = ctypes.get_errno()
        if error != errno.ENOSYS:
            raise OSError(error, os.strerror(error), key)
        _SYS_OPENAT2 = None
    return _open_component_by_component(root_fd, key, flags)


def _open_component_by_component(root_fd: int, key: str, flags: int) -> int:
    *directories, name = key.split("/")
    fd = os.dup(root_fd)
    try:
        for part in directories:
            if part in ("", ".", ".."):
                raise OSError(errno.EXDEV, "path leads out of the store", key)
            parent, fd = fd, os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(parent)
        if name in (".", ".."):
            raise OSError(errno.EXDEV, "path leads out of the store", key)
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)
