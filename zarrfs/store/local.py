"""A local POSIX directory as the backing store.

Keys are store-relative paths with ``/`` separators (``""`` is the root), so
that log lines and ``zarrfs check`` name shards the way users see them.
"""

from __future__ import annotations

import os


class LocalStore:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)

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
