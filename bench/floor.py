#!/usr/bin/env python3
"""The floor: what a pyfuse3 filesystem allows, with nothing to compute.

    python bench/floor.py SRC MOUNTPOINT        # foreground; unmount with fusermount3 -u

Serves the files of the directory tree SRC read-only, with every name, inode number and
attribute taken once at start into memory (the walk is not timed by the bench: it waits for
the mount). A lookup or a READDIRPLUS entry is a dict lookup, `open` opens the backing file
and `read` is one `pread` of it, so what it costs over the plain directory is pyfuse3 and the
kernel's FUSE round trips, and nothing else. Same kernel cache timeouts as zarrfs's default
(60 s) and the same keep_cache on open, so the two are compared like for like.

It is a benchmark peer (issue 14's "what pyfuse3 allows" row), not part of zarrfs.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 60.0  # zarrfs's default --attr-timeout


class Entry:
    """One name of SRC: its attributes (with a floor inode number), and for a directory its
    children in listing order."""

    def __init__(self, path: str, inode: int, st: os.stat_result):
        self.path = path
        self.attributes = pyfuse3.EntryAttributes()
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
                      "st_mtime_ns", "st_ctime_ns"):
            setattr(self.attributes, field, getattr(st, field))
        self.attributes.st_ino = inode
        self.attributes.st_blksize = 4096
        self.attributes.st_blocks = (st.st_size + 511) // 512
        self.attributes.entry_timeout = self.attributes.attr_timeout = TIMEOUT
        self.children: dict[bytes, int] = {}
        self.names: list[bytes] = []


class Floor(pyfuse3.Operations):
    def __init__(self, source: str):
        super().__init__()
        self.entries: dict[int, Entry] = {}
        self._load(source)

    def _load(self, source: str) -> None:
        """Walk SRC once, depth first, numbering inodes from the root's 1."""
        self.entries[pyfuse3.ROOT_INODE] = Entry(source, pyfuse3.ROOT_INODE, os.lstat(source))
        pending = [pyfuse3.ROOT_INODE]
        while pending:
            directory = self.entries[pending.pop()]
            with os.scandir(directory.path) as listing:
                for item in sorted(listing, key=lambda e: e.name):
                    inode = len(self.entries) + 1
                    self.entries[inode] = Entry(item.path, inode, item.stat(follow_symlinks=False))
                    name = os.fsencode(item.name)
                    directory.children[name] = inode
                    directory.names.append(name)
                    if item.is_dir(follow_symlinks=False):
                        pending.append(inode)

    def _entry(self, inode: int) -> Entry:
        try:
            return self.entries[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def lookup(self, parent_inode, name, ctx=None):
        inode = self._entry(parent_inode).children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.entries[inode].attributes

    async def getattr(self, inode, ctx=None):
        return self._entry(inode).attributes

    async def opendir(self, inode, ctx):
        if not stat.S_ISDIR(self._entry(inode).attributes.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        directory = self.entries[fh]
        for index in range(start_id, len(directory.names)):
            name = directory.names[index]
            if not pyfuse3.readdir_reply(token, name, self.entries[directory.children[name]].attributes, index + 1):
                return

    async def releasedir(self, fh):
        pass

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(self._entry(inode).path, os.O_RDONLY)
        except OSError as error:
            raise pyfuse3.FUSEError(error.errno) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh, offset, size):
        return os.pread(fh, size, offset)

    async def release(self, fh):
        os.close(fh)

    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = 4096
        result.f_files = len(self.entries)
        result.f_namemax = 255
        return result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    source, mountpoint = argv[1], argv[2]
    operations = Floor(source)
    pyfuse3.init(operations, mountpoint, {"fsname=floor", "subtype=floor", "ro", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
