#!/usr/bin/env python3
"""The floor: what a pyfuse3 filesystem allows, with nothing to compute.

    python bench/floor.py SRC MOUNTPOINT        # foreground; unmount with fusermount3 -u

Serves the files of the directory tree SRC, with every name, inode number and attribute
taken once at start into memory (the walk is not timed by the bench: it waits for the
mount). A lookup or a READDIRPLUS entry is a dict lookup, `open` opens the backing file and
`read` is one `pread` of it, so what it costs over the plain directory is pyfuse3 and the
kernel's FUSE round trips, and nothing else. Same kernel cache timeouts as zarrfs's default
(60 s), the same cached "no such file", and the same keep_cache on open, so the two are
compared like for like.

Files and directories made through the mount (mkdir, create, write, rename, unlink) live in
memory and are gone at unmount: the floor of a writer such as zarr-python 2 (temporary file,
write, rename per chunk). SRC's own files cannot be written (EROFS).

It is a benchmark peer (issue 14's "what pyfuse3 allows" row), not part of zarrfs.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys
import time

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
        self.children: dict[bytes, int] = {}  # in listing order
        self.data: bytearray | None = None  # a file made through the mount: its bytes


def made_entry(inode: int, mode: int, ctx) -> Entry:
    """A file or directory made through the mount (in memory)."""
    entry = Entry.__new__(Entry)
    entry.path, entry.children = None, {}
    entry.data = None if stat.S_ISDIR(mode) else bytearray()
    attributes = entry.attributes = pyfuse3.EntryAttributes()
    attributes.st_mode, attributes.st_nlink = mode, 2 if stat.S_ISDIR(mode) else 1
    attributes.st_uid, attributes.st_gid = ctx.uid, ctx.gid
    attributes.st_atime_ns = attributes.st_mtime_ns = attributes.st_ctime_ns = time.time_ns()
    attributes.st_ino, attributes.st_blksize = inode, 4096
    attributes.entry_timeout = attributes.attr_timeout = TIMEOUT
    return entry


class Floor(pyfuse3.Operations):
    def __init__(self, source: str):
        super().__init__()
        self.entries: dict[int, Entry] = {}
        self._load(source)
        # An open file made here, a descriptor of one of SRC's, or a directory's listing.
        self._handles: dict[int, Entry | int | list] = {}
        self._next_handle = itertools.count(1)

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
            absent = pyfuse3.EntryAttributes()  # cached by the kernel, as zarrfs's are
            absent.st_ino, absent.entry_timeout = 0, TIMEOUT
            return absent
        return self.entries[inode].attributes

    async def getattr(self, inode, ctx=None):
        return self._entry(inode).attributes

    async def opendir(self, inode, ctx):
        directory = self._entry(inode)
        if not stat.S_ISDIR(directory.attributes.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._new_handle(list(directory.children.items()))  # its names as opendir found them

    async def readdir(self, fh, start_id, token):
        listed = self._handles[fh]
        for index in range(start_id, len(listed)):
            name, inode = listed[index]
            if not pyfuse3.readdir_reply(token, name, self.entries[inode].attributes, index + 1):
                return

    async def releasedir(self, fh):
        self._handles.pop(fh)

    async def open(self, inode, flags, ctx):
        entry = self._entry(inode)
        if entry.data is not None:
            if flags & os.O_TRUNC:
                self._resize(entry, 0)
            return pyfuse3.FileInfo(fh=self._new_handle(entry))
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError as error:
            raise pyfuse3.FUSEError(error.errno) from None
        return pyfuse3.FileInfo(fh=self._new_handle(fd), keep_cache=True)

    async def read(self, fh, offset, size):
        handle = self._handles[fh]
        if isinstance(handle, Entry):
            return bytes(handle.data[offset : offset + size])
        return os.pread(handle, size, offset)

    async def release(self, fh):
        handle = self._handles.pop(fh)
        if not isinstance(handle, Entry):
            os.close(handle)

    # -- what is made through the mount: in memory ------------------------------

    def _new_handle(self, handle: Entry | int) -> int:
        fh = next(self._next_handle)
        self._handles[fh] = handle
        return fh

    def _add(self, parent_inode: int, name: bytes, mode: int, ctx) -> Entry:
        parent = self._entry(parent_inode)
        if name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        inode = len(self.entries) + 1
        entry = self.entries[inode] = made_entry(inode, mode, ctx)
        parent.children[name] = inode
        return entry

    @staticmethod
    def _resize(entry: Entry, size: int) -> None:
        del entry.data[size:]
        entry.data.extend(bytes(size - len(entry.data)))
        entry.attributes.st_size, entry.attributes.st_blocks = size, (size + 511) // 512

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._add(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx).attributes

    async def create(self, parent_inode, name, mode, flags, ctx):
        entry = self._add(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=self._new_handle(entry)), entry.attributes

    async def write(self, fh, offset, data):
        entry = self._handles[fh]
        if offset + len(data) > len(entry.data):
            self._resize(entry, offset + len(data))
        entry.data[offset : offset + len(data)] = data
        return len(data)

    async def setattr(self, inode, attr, fields, fh, ctx):
        entry = self._entry(inode)
        if fields.update_size:
            if entry.data is None:
                raise pyfuse3.FUSEError(errno.EROFS)
            self._resize(entry, attr.st_size)
        return entry.attributes

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old, new = self._entry(parent_inode_old), self._entry(parent_inode_new)
        inode = old.children.get(name_old)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._unlink(new, name_new)
        self._unlink(old, name_old)
        new.children[name_new] = inode

    async def unlink(self, parent_inode, name, ctx):
        if not self._unlink(self._entry(parent_inode), name):
            raise pyfuse3.FUSEError(errno.ENOENT)

    @staticmethod
    def _unlink(parent: Entry, name: bytes) -> bool:
        return parent.children.pop(name, None) is not None

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
    pyfuse3.init(operations, mountpoint, {"fsname=floor", "subtype=floor", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
