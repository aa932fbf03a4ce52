"""What every backing store gives the layers above it (the seam of SPEC §11).

Two backends implement it: ``LocalStore`` (a POSIX directory: store/local.py) and
``ObjectStore`` (an S3-compatible bucket: store/object.py). Nothing above ``store/``
touches the backing store but through these methods, and nothing above it knows
which backend it has, except through ``Capabilities``.

Keys are store-relative paths with ``/`` separators (``""`` is the root).

Versions are opaque: equal versions mean equal bytes. A local file's version is
(inode, size, mtime); an object's is its ETag. Ranged reads name the version
they expect and raise ``FileChanged`` when the key now holds another one, so a
reader never gets a mix of two versions of a shard.

Writes of whole files (shards, metadata) are ``replace_durably``: the key holds
the old bytes or the new ones, never a mix, and the new ones are durable once it
returns. With ``expected`` it is conditional: it raises ``Conflict`` unless the
key still holds that version (``ABSENT`` for a key that must not exist), so a
repack merges into exactly the shard it read (an object store's If-Match; the
local backend checks under the shard's lock).
"""

from __future__ import annotations

import errno
import stat as stat_module
from dataclasses import dataclass
from typing import Hashable, Iterator, Protocol


ABSENT = ("absent",)  # the version of a key that does not exist, for conditional writes


class FileChanged(Exception):
    """The key no longer holds the version the caller read from (it was replaced): look again."""


class Conflict(OSError):
    """A conditional write found another version than the one it was based on."""

    def __init__(self, key: str):
        super().__init__(errno.EAGAIN, "changed by somebody else since it was read", key)


class TooLarge(OSError):
    """A file larger than the caller allows (metadata has a size limit)."""


@dataclass(frozen=True, slots=True)
class Stat:
    """A key's attributes, with the field names of ``os.stat_result`` that zarrfs uses,
    and its opaque ``version``."""

    st_mode: int
    st_size: int
    st_mtime_ns: int
    version: Hashable
    st_uid: int = 0
    st_gid: int = 0
    st_nlink: int = 1
    st_ino: int = 0
    st_atime_ns: int = 0
    st_ctime_ns: int = 0

    @property
    def st_blocks(self) -> int:  # 512-byte blocks, what du counts
        return -(-self.st_size // 512)

    @property
    def is_file(self) -> bool:
        return stat_module.S_ISREG(self.st_mode)

    @property
    def is_directory(self) -> bool:
        return stat_module.S_ISDIR(self.st_mode)


def file_version(st: Stat) -> Hashable:
    return st.version


@dataclass(frozen=True)
class Capabilities:
    """What a backend can promise; the layers above choose how to work from this."""

    hard_links: bool  # link() makes a second name of one file (else: a copy)
    symlinks: bool
    owners_and_modes: bool  # chmod/chown are kept (else: accepted and not kept)
    cheap_calls: bool  # calls take microseconds (a local disk): may run on the event loop
    conditional_writes: bool  # replace_durably(expected=...) is honoured


class SharedFile(Protocol):
    """One version of a file, open for reading by every open file of that version."""

    version: Hashable

    def pread(self, size: int, offset: int) -> bytes: ...

    def stat(self) -> Stat: ...

    def release(self) -> None: ...


class PlainFile(Protocol):
    """A plain file (outside any array) open for writing through the mount."""

    def pread(self, size: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> int: ...

    def truncate(self, size: int) -> None: ...

    def stat(self) -> Stat: ...

    def set_attributes(self, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None) -> None: ...

    def fsync(self) -> None: ...

    def close(self) -> None: ...


class Store(Protocol):
    capabilities: Capabilities
    name: str  # what log lines and reports call the store (a path or an s3:// URL)

    # -- reading -------------------------------------------------------------
    def stat(self, key: str) -> Stat: ...
    def lstat(self, key: str) -> Stat: ...
    def recent_stat(self, key: str, follow_symlinks: bool = True) -> Stat: ...
    def forget_recent(self, key: str) -> None: ...
    def generation(self) -> int | None: ...
    def listdir(self, key: str) -> list[str]: ...
    def scan(self, key: str) -> list[tuple[str, bool]]: ...  # (name, is a directory), by name
    def read(self, key: str, limit: int | None = None) -> bytes: ...
    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Hashable]: ...
    def pread_version(self, key: str, version: Hashable, size: int, offset: int) -> bytes: ...
    def share(self, key: str, version: Hashable | None = None) -> SharedFile: ...
    def readlink(self, key: str) -> str: ...
    def files_below(self, key: str) -> Iterator[tuple[str, ...]]: ...
    # whole files of one directory, None for a missing one (many small chunk files: zarrfs pack)
    def read_many(self, dir_key: str, names, limit: int | None = None) -> list[bytes | None]: ...

    # -- whole files, durably -------------------------------------------------
    def replace_durably(self, key: str, data: bytes, mode: int = 0o644, like: str | None = None,
                        expected: Hashable | None = None, owner: tuple[int, int] | None = None) -> None: ...
    def remove_durably(self, key: str, up_to: str, expected: Hashable | None = None) -> None: ...

    # -- the namespace, for plain files and directories ------------------------
    def create(self, key: str, flags: int, mode: int) -> PlainFile: ...
    def mkdir(self, key: str, mode: int) -> None: ...
    def rmdir(self, key: str) -> None: ...
    def unlink(self, key: str) -> None: ...
    def symlink(self, target: str, key: str) -> None: ...
    def rename(self, old: str, new: str) -> None: ...
    def link(self, old: str, new: str) -> None: ...
    def truncate(self, key: str, size: int) -> None: ...
    def set_attributes(self, key: str, mode=None, uid=None, gid=None, times_ns=None) -> None: ...
    def chown_to(self, key: str, uid: int, gid: int) -> None: ...
    def statvfs(self): ...

    # -- coordination between writers -----------------------------------------
    def locked(self, array_key: str, target: str, wait: bool = True): ...
    def locking_problem(self) -> str | None: ...
    def clean_after_crash(self, metadata_names=("zarr.json", ".zarray")) -> tuple[int, dict]: ...
    def stage_chunk_files(self, array_key: str, is_chunk_key) -> list[tuple[str, tuple[str, ...]]]: ...
    def remove_staged(self, keys: list[str]) -> None: ...
    def remove_lock_file(self, array_key: str) -> None: ...
