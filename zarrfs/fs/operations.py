"""pyfuse3 handlers: translate kernel requests to the ViewTree model and back.

Each handler is a few lines. Errors become ``FUSEError(errno)`` here and only
here (see ``_kernel_errors``): OSError keeps its errno, a corrupt shard is EIO,
and anything unexpected is logged and answered with EIO, so no input can take
the daemon down.

Caveats, honestly:
- Disk I/O runs inline on the trio loop. Reads of indexes and chunks are small
  ``pread``s that the page cache answers in microseconds, and a thread hop
  would cost more than the read (see docs/architecture.md); a hung backing
  filesystem therefore stalls the whole mount, as it would stall ``ls``.
- The mount is read-only for now: writes are refused by the kernel (``ro``).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os

import pyfuse3

from ..format.shard_index import CorruptShard
from .inodes import InodeTable
from .tree import Attributes, Node, StatusFile, ViewTree

log = logging.getLogger("zarrfs")


def _kernel_errors(handler):
    """Map every failure of a handler to an errno for the kernel."""

    @functools.wraps(handler)
    async def wrapped(self, *args):
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except CorruptShard:
            raise pyfuse3.FUSEError(errno.EIO) from None  # logged once where it was found
        except OSError as error:
            raise pyfuse3.FUSEError(error.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s%r", handler.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapped


class Operations(pyfuse3.Operations):
    def __init__(self, tree: ViewTree, timeout: float):
        super().__init__()
        self.tree = tree
        self.timeout = timeout  # entry and attribute cache time, seconds
        self.inodes = InodeTable(tree.root())
        self._handles: dict[int, object] = {}
        self._next_handle = itertools.count(1)

    # -- names and attributes ----------------------------------------------

    @_kernel_errors
    async def lookup(self, parent_inode, name, ctx=None):
        node = self.tree.lookup(self._node(parent_inode), os.fsdecode(name))
        if node is None:
            return self._negative_entry()
        entry = self._entry(node, self.tree.attributes(node))
        self.inodes.remember(node)
        return entry

    @_kernel_errors
    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        return self._entry(node, self.tree.attributes(node))

    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    @_kernel_errors
    async def readlink(self, inode, ctx):
        return os.fsencode(self.tree.readlink(self._node(inode)))

    @_kernel_errors
    async def statfs(self, ctx):
        backing = self.tree.store.statvfs()
        stats = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(stats, field, getattr(backing, field))
        return stats

    # -- directories --------------------------------------------------------

    @_kernel_errors
    async def opendir(self, inode, ctx):
        listing = self.tree.children(self._node(inode))
        return self._new_handle(listing)

    @_kernel_errors
    async def readdir(self, fh, start_id, token):
        listing = self._handles[fh]
        for position in range(start_id, len(listing)):
            name, node, attributes = listing[position]
            try:
                attributes = attributes or self.tree.attributes(node)
            except FileNotFoundError:
                continue  # gone since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(node, attributes), position + 1):
                return
            self.inodes.remember(node)

    async def releasedir(self, fh):
        self._handles.pop(fh, None)

    # -- files --------------------------------------------------------------

    @_kernel_errors
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        content = self.tree.open(node)
        info = pyfuse3.FileInfo(fh=self._new_handle(content))
        # The kernel may keep cached pages only if the bytes are those it cached.
        info.keep_cache = self.inodes.swap_version(inode, content.version) == content.version
        info.direct_io = isinstance(node, StatusFile)  # its size changes with every read
        return info

    @_kernel_errors
    async def read(self, fh, offset, size):
        return self._handles[fh].read(offset, size)

    async def release(self, fh):
        content = self._handles.pop(fh, None)
        if content is not None:
            content.close()

    # -- helpers ------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.inodes.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _new_handle(self, content) -> int:
        handle = next(self._next_handle)
        self._handles[handle] = content
        return handle

    def _entry(self, node: Node, attributes: Attributes) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = self.inodes.inode_of(node)
        entry.st_mode = attributes.mode
        entry.st_nlink = attributes.nlink
        entry.st_uid = attributes.uid
        entry.st_gid = attributes.gid
        entry.st_size = attributes.size
        entry.st_blocks = attributes.blocks
        entry.st_blksize = 4096
        entry.st_atime_ns = attributes.atime_ns
        entry.st_mtime_ns = attributes.mtime_ns
        entry.st_ctime_ns = attributes.ctime_ns
        entry.entry_timeout = self.timeout
        entry.attr_timeout = self.timeout
        return entry

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        """A cached "no such file": readers probe absent chunks a lot."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = 0
        entry.entry_timeout = self.timeout
        return entry

    def open_handles(self) -> int:
        return len(self._handles)
