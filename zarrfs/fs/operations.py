"""pyfuse3 handlers: translate kernel requests to the ViewTree model and back.

Each handler is a few lines. Errors become ``FUSEError(errno)`` here and only
here (see ``_kernel_errors``): OSError keeps its errno, a corrupt shard is EIO,
and anything unexpected is logged and answered with EIO, so no input can take
the daemon down.

Caveats, honestly:
- Disk I/O of reads runs inline on the trio loop. Reads of indexes and chunks
  are small ``pread``s that the page cache answers in microseconds, and a
  thread hop would cost more than the read (see docs/architecture.md); a hung
  backing filesystem therefore stalls the whole mount, as it would stall
  ``ls``. Repacks (large writes and fsyncs) run in worker threads.
- Inode numbers are hashes of paths; after a rename the kernel keeps the
  source's inode for the new name, so ``rename`` re-points that inode.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import logging
import os
import stat
from dataclasses import replace

import pyfuse3
import trio

from ..format.shard_index import CorruptShard
from .inodes import InodeTable
from .overlay import is_below
from ..store.base import FileChanged
from .treelock import TreeLock
from .tree import Attributes, Chunk, FetchedChunk, FileRange, MemContent, MetadataFile, Node, Plain, Replaced, Scratch, StatusFile, ViewTree
from .writes import PlainWriter, Writer

log = logging.getLogger("zarrfs")
FETCHES_AT_ONCE = 32  # object store requests for open chunks waiting on the server together
TREE_CALLS_AT_ONCE = 16  # lookups, attributes, listings waiting on an object store together

INVALIDATE_WAIT = 1.0  # seconds a request waits for the kernel to drop cached names
READDIR_WINDOW = 128  # chunks whose inode numbers readdir computes at once (about what a reply holds)


def _kernel_errors(handler):
    """Map every failure of a handler to an errno for the kernel (and count the requests)."""

    @functools.wraps(handler)
    async def wrapped(self, *args):
        self.requests[handler.__name__] += 1
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


def _changes_names(handler):
    """Names may have come or gone: listings made before are checked again as they are read."""

    @functools.wraps(handler)
    async def wrapped(self, *args):
        try:
            return await handler(self, *args)
        finally:
            self.changes += 1

    return wrapped


class Operations(pyfuse3.Operations):
    def __init__(self, tree: ViewTree, timeout: float, writer: Writer | None = None,
                 tree_lock: TreeLock | None = None):
        """``tree_lock``: run tree code in worker threads under this lock (an object store,
        whose calls wait on the network: fs/treelock.py); None: on the loop."""
        super().__init__()
        self.tree_lock = tree_lock
        self._tree_calls = trio.CapacityLimiter(TREE_CALLS_AT_ONCE)
        self.tree = tree
        self.timeout = timeout  # entry and attribute cache time, seconds
        self.writer = writer  # None: a read-only mount
        self.flusher = writer.flusher if writer else None
        self.inodes = InodeTable(tree)
        if writer is not None:
            writer.metadata.changed = self._resolve_again
            writer.metadata.dropped = self._forget_cached_names
        self._handles: dict[int, object] = {}
        self.changes = 0  # changes through the mount so far (names may have come or gone)
        self._open_by_inode: dict[int, set[int]] = {}  # inode -> its open file handles
        self._next_handle = itertools.count(1)
        self._fetches = trio.CapacityLimiter(FETCHES_AT_ONCE)  # requests for chunks of an object store
        self.requests: collections.Counter[str] = collections.Counter()  # by handler, for the status file
        features = getattr(pyfuse3, "FEATURES", frozenset())  # zarrfs's pyfuse3 build: patches/
        # Files opened only to read need no FLUSH at close (a round trip per file).
        self.noflush = "noflush" in features
        # A read-only mount needs no OPEN or RELEASE either: reads name the inode. Not on
        # an object store: there an open file is one version fetched at open, which reads
        # by inode (one request each, of whatever version is stored then) could not keep.
        self.without_open = (writer is None and "read_without_open" in features
                             and tree.store.capabilities.cheap_calls)

    # -- names and attributes ----------------------------------------------

    async def _in_tree(self, call, *args):
        """``call(*args)``: on the loop, or on an object store in a worker thread holding
        the tree lock, so that its waits on the network stop no other request."""
        if self.tree_lock is None:
            return call(*args)
        return await self.tree_lock.call(call, *args, limiter=self._tree_calls)

    async def _changing_tree(self, call, *args):
        """A change (create, mkdir): as ``_in_tree``, but on an object store always in a worker thread."""
        if self.tree_lock is None:
            return call(*args)
        return await trio.to_thread.run_sync(self.tree_lock.run, call, *args, limiter=self._tree_calls)

    @_kernel_errors
    async def lookup(self, parent_inode, name, ctx=None):
        node = await self._in_tree(self.tree.lookup, self._node(parent_inode), os.fsdecode(name))
        if node is None:
            return self._negative_entry()
        attributes = await self._in_tree(self.tree.attributes, node)
        return self._entry(node, attributes, self.inodes.remember(node))

    @_kernel_errors
    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        try:
            attributes = await self._in_tree(self.tree.attributes, node)
        except FileNotFoundError:
            try:
                attributes = self._attributes_of_open_file(inode)  # unlinked but still open, as on ext4
            except FileNotFoundError:
                node = self._meaning_now(inode, node)
                attributes = self.tree.attributes(node)
        return self._entry(node, attributes, inode)

    def _meaning_now(self, inode: int, node: Node) -> Node:
        """What the path of a node that is gone means now: a name can change kind under
        the kernel's inode (a scratch ``.zgroup`` applied as metadata becomes the
        view's file, a pending ``.zattrs`` too). Raises FileNotFoundError if nothing."""
        fresh = None if isinstance(node, Replaced) else self.tree.resolve(node.path)
        if fresh is None or fresh == node:
            raise FileNotFoundError(errno.ENOENT, f"{node.path} is gone")
        self.inodes.replace(inode, fresh)
        return fresh

    def _attributes_of_open_file(self, inode: int) -> Attributes:
        for fh in self._open_by_inode.get(inode, ()):
            content = self._handles[fh].content
            if isinstance(content, MemContent):
                return Attributes.of_memfile(content.memfile)
            if isinstance(content, FileRange):  # a chunk's range of its shard, or a whole plain file
                st = content.shared.stat()
                return replace(Attributes.of(st).as_file(min(content.length, st.st_size - content.offset)), nlink=0)
            if isinstance(content, PlainWriter):  # a plain file open for writing: its own attributes
                return Attributes.of(content.file.stat())
        raise OSError(errno.ENOENT, "no such file")

    @_kernel_errors
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
        node, changes = self._node(inode), self.changes
        listing = await self._in_tree(self.tree.listing, node)
        return self._new_handle(DirHandle(node, listing, changes))

    @_kernel_errors
    async def readdir(self, fh, start_id, token):
        handle = self._handles[fh]
        listing = handle.listing
        # A name that went since opendir (a rename, unlink or rmdir in between: the kernel
        # serialises them only with readdir itself) must not be replied: readdirplus would
        # give the kernel an entry of a name that is gone (lstat finds it, open is ENOENT).
        checked = handle.changes != self.changes
        for position in range(start_id, len(listing.entries)):
            name, node, attributes = listing.entries[position]
            if checked:
                try:
                    now = self.tree.lookup(handle.node, name)
                except (OSError, CorruptShard):
                    now = node  # (answered as listed: EIO when asked)
                if now is None:
                    continue
                if now != node:
                    node, attributes = now, None
            inode = self.inodes.inode_of(node)
            try:
                entry = self._entry(node, attributes or self.tree.attributes(node), inode)
            except FileNotFoundError:
                continue  # gone since opendir
            except CorruptShard:  # listed, so that cp -r fails; not cached, so that stat is EIO too
                entry = self._entry(node, Attributes(stat.S_IFREG | 0o444, 1, 0, 0, 0, 0, 0, 0, 0), inode)
                entry.entry_timeout = entry.attr_timeout = 0
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, position + 1):
                return
            self.inodes.remember(node, inode)
        position = len(listing.entries)
        for run in listing.runs:
            if start_id < position + len(run) and not self._reply_chunks(token, run, position, start_id,
                                                                         checked and handle.node):
                return
            position += len(run)

    def _reply_chunks(self, token, run, position: int, start_id: int, directory: Node | None = None) -> bool:
        """The stored chunks of a directory (a tree.ChunkRun at listing ``position``): one entry
        per shard, filled in turn for its chunks (readdir_reply copies it), inode numbers a
        window at a time; a chunk whose number is an exception goes the usual way. False once
        the reply is full. ``directory``: names changed since the listing; a chunk the write
        buffer took since (written, unlinked, renamed) is looked up again in it."""
        names, sizes, blocks = run.names, run.sizes, run.blocks
        buffered = self.tree.overlay.chunks_of(run.array) if directory is not None else {}
        entry, shard_end = None, 0
        for window in range(max(start_id - position, 0), len(run), READDIR_WINDOW):
            stop = min(window + READDIR_WINDOW, len(run))
            numbers = self.inodes.chunk_numbers(run.array, run.dir, names[window:stop],
                                                run.linear and run.linear[window:stop])
            for i, number in enumerate(numbers, window):
                if buffered and tuple(run.coords[i].tolist()) in buffered:
                    if not self._reply_again(token, directory, os.fsdecode(names[i]), position + i + 1):
                        return False
                    entry, shard_end = None, 0  # (the shard's entry is made again)
                    continue
                if i >= shard_end:  # the next shard's owner, mode and times
                    attributes, shard_end = run.shard_of(i)
                    entry = self._entry_of(attributes, self.timeout)
                node = None if number is not None else run.node(i)
                entry.st_ino = number or self.inodes.inode_of(node)
                entry.st_size, entry.st_blocks = sizes[i], blocks[i]
                if not pyfuse3.readdir_reply(token, names[i], entry, position + i + 1):
                    return False
                if node is not None:
                    self.inodes.remember(node, entry.st_ino)
        return True

    def _reply_again(self, token, directory: Node, name: str, next_id: int) -> bool:
        """The entry of ``name`` as a lookup finds it now (none if it is gone). False once the reply is full."""
        try:
            node = self.tree.lookup(directory, name)
            if node is None:
                return True
            entry = self._entry(node, self.tree.attributes(node))
        except (OSError, CorruptShard):
            return True  # (gone, or EIO when asked)
        if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, next_id):
            return False
        self.inodes.remember(node, entry.st_ino)
        return True

    @_kernel_errors
    async def releasedir(self, fh):
        self._handles.pop(fh, None)

    # -- files --------------------------------------------------------------

    @_kernel_errors
    async def open(self, inode, flags, ctx):
        if self.without_open:
            # The kernel stops sending OPEN and RELEASE, keeps cached pages (it drops
            # them when a file's size or mtime changes) and sends reads by inode.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._node(inode)
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        try:
            return await self._opened(inode, node, flags, writable)
        except FileNotFoundError:
            node = self._meaning_now(inode, node)
            return await self._opened(inode, node, flags, writable)

    async def _opened(self, inode: int, node: Node, flags: int, writable: bool) -> pyfuse3.FileInfo:
        if not writable:
            return self._file_info(inode, node, await self._readable(node), writable)
        return self._file_info(inode, node, self._writer().open(node, flags), writable)

    async def _readable(self, node: Node):
        """The tree's open file of ``node``; an object store's chunk is fetched in a worker
        thread, looking again if its shard was replaced since it was located."""
        for _ in range(3):
            content = await self._in_tree(self.tree.open, node)
            if not isinstance(content, FetchedChunk) or content.data is not None:
                return content
            try:
                await trio.to_thread.run_sync(content.fetch, limiter=self._fetches)
                return content
            except FileChanged:
                self.tree.store.forget_recent(content.location.shard_key)
        raise OSError(errno.EAGAIN, f"{node.path}: its shard keeps changing")

    def _file_info(self, inode: int, node: Node, content, writable: bool = True) -> pyfuse3.FileInfo:
        info = pyfuse3.FileInfo(fh=self._new_handle(FileHandle(inode, node, content, writable)))
        self._open_by_inode.setdefault(inode, set()).add(info.fh)
        # The kernel may keep cached pages only if the bytes are those it cached.
        info.keep_cache = self.inodes.swap_version(inode, content.version) == content.version
        if self.noflush:
            info.noflush = not writable
        # Sizes of these change behind the kernel's back (status; metadata the view rewrites).
        info.direct_io = isinstance(node, (StatusFile, MetadataFile)) or (
            os.path.basename(node.path) in self._metadata_names())
        return info

    def _metadata_names(self):
        return self.writer.metadata.names if self.writer else ()

    @_kernel_errors
    async def read(self, fh, offset, size):
        if self.without_open:
            return self.tree.read(self._node(fh), offset, size)  # fh is the inode
        return self._handles[fh].content.read(offset, size)

    @_kernel_errors
    async def write(self, fh, offset, data):
        await self.flusher.wait_for_room()
        await self.writer.spill_pending(self.flusher.max_dirty)
        return self.writer.write(self._handles[fh].content, offset, data)

    @_kernel_errors
    async def flush(self, fh):
        """close(): apply metadata files, and report a failed repack of this file's shard."""
        if self.writer is None:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel then stops asking: one round trip less per close
        handle = self._handles[fh]
        if handle.writable:
            self.changes += 1  # (metadata applied: names may come or go)
            await self.writer.closed(handle.node, handle.content)
            self._raise_flush_failure(handle.content)  # readers are not told of writers' troubles

    @_kernel_errors
    async def release(self, fh):
        handle = self._handles.pop(fh, None)
        if isinstance(handle, FileHandle):
            handles = self._open_by_inode.get(handle.inode, set())
            handles.discard(fh)
            if not handles:
                self._open_by_inode.pop(handle.inode, None)
        if handle is not None:
            handle.content.close()
            if isinstance(handle.content, MemContent):
                self.tree.forget_clean(handle.content.memfile)

    @_kernel_errors
    async def fsync(self, fh, datasync):
        content = self._handles[fh].content
        if isinstance(content, MemContent):
            await self.flusher.flush_memfile(content.memfile)
            await self.writer.fsynced(content.memfile)
        elif isinstance(content, PlainWriter):
            await trio.to_thread.run_sync(content.file.fsync)  # may take seconds on NFS or Lustre, or a PUT

    @_kernel_errors
    async def fsyncdir(self, fh, datasync):
        """tensorstore renames onto a chunk key, then fsyncs the directory."""
        if self.flusher is None:
            return
        array = self.tree._array_of(self._handles[fh].node)
        await (self.flusher.flush_array(array) if array else self.flusher.flush_all())

    def _raise_flush_failure(self, content) -> None:
        if self.flusher is None or not isinstance(content, MemContent):
            return
        for name in content.memfile.names:
            view = self.tree._array_view(name[1]) if name[0] == "chunk" else None
            failure = view and self.flusher.failures.get((name[1], view.array.shard_of(name[2])))
            if failure:
                raise pyfuse3.FUSEError(failure[1].errno or errno.EIO)

    # -- changing names -------------------------------------------------------

    @_changes_names
    @_kernel_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        node, content = await self._changing_tree(self._writer().create, self._node(parent_inode),
                                                  os.fsdecode(name), mode, flags, (ctx.uid, ctx.gid))
        entry = self._entry(node, await self._in_tree(self.tree.attributes, node))
        self.inodes.remember(node)
        return self._file_info(entry.st_ino, node, content), entry

    @_changes_names
    @_kernel_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        node = await self._changing_tree(self._writer().mkdir, self._node(parent_inode), os.fsdecode(name), mode,
                                         (ctx.uid, ctx.gid))
        return await self._remembered_entry(node)

    @_changes_names
    @_kernel_errors
    async def symlink(self, parent_inode, name, target, ctx):
        node = await self._changing_tree(self._writer().symlink, self._node(parent_inode), os.fsdecode(name),
                                         os.fsdecode(target), (ctx.uid, ctx.gid))
        return await self._remembered_entry(node)

    @_changes_names
    @_kernel_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        source = self._node(inode)
        node, shared = await self._writer().link(source, self._node(new_parent_inode), os.fsdecode(new_name))
        if not shared:
            try:
                return await self._remembered_entry(node)
            except FileNotFoundError:  # metadata the view does not show (an empty .zattrs)
                return self._entry(node, self.tree.attributes(source))
        attributes = self.tree.attributes(node)
        return self._entry(node, attributes, self.inodes.link(inode, source, node))  # one inode, two names

    @_changes_names
    @_kernel_errors
    async def unlink(self, parent_inode, name, ctx):
        parent, name = self._node(parent_inode), os.fsdecode(name)
        node = self.tree.lookup(parent, name)
        # (what the name meant, before the unlink changes what it computes)
        last = node is not None and self._only_name(node)
        inode = node and self.inodes.inode_of(node)
        memfile = node and self.tree._memfile(node)
        await self._writer().unlink(parent, name)
        if node is not None:
            self.inodes.unlinked(node, inode, last, inode in self._open_by_inode, memfile)
            if last:
                await self._unlinked_under_other_numbers(node, inode, memfile)

    async def _unlinked_under_other_numbers(self, node: Node, inode: int, memfile) -> None:
        """The file at ``node`` lost its last name, and descriptors may hold it under another
        number than the name computes now (a chunk opened before a resize, which numbers the
        array's chunks anew): those inodes mean the unlinked file too, and the kernel, which
        caches their attributes, is told to ask again (nlink 0)."""
        others = sorted({h.inode for h in self._handles.values()
                         if isinstance(h, FileHandle) and h.inode != inode and h.node == node})
        for other in others:
            self.inodes.unlinked(node, other, True, True, memfile)
        if others:
            await self._kernel_forgets([], others)

    def _only_name(self, node: Node) -> bool:
        """Whether ``node`` is its file's only name: a stored chunk, a buffered file with
        one name, a plain file with one link in the store."""
        if isinstance(node, Plain):
            st = self.tree.store.lstat(node.path)
            return stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        memfile = self.tree._memfile(node)
        return isinstance(node, (Chunk, Scratch)) and (memfile is None or len(memfile.names) == 1)

    @_changes_names
    @_kernel_errors
    async def rmdir(self, parent_inode, name, ctx):
        parent, name = self._node(parent_inode), os.fsdecode(name)
        node = self.tree.lookup(parent, name)
        inode = node and self.inodes.inode_of(node)  # (what the name meant, before it goes)
        await self._writer().rmdir(parent, name)
        if node is not None:
            self.inodes.removed_directory(node, inode)

    @_changes_names
    @_kernel_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        source = self.tree.lookup(old_parent, old)
        replaced = self.tree.lookup(new_parent, new)
        # the kernel's numbers, before the rename changes what the names compute
        inode = source and self.inodes.inode_of(source)
        replaced_inode = replaced and self.inodes.inode_of(replaced)
        replaced_file = replaced and self.tree._memfile(replaced)  # its other names, if hard-linked
        moved, directory = await self._writer().rename(old_parent, old, new_parent, new, flags)
        if replaced is not None and source is not None and replaced.path != source.path:
            self.inodes.replaced(replaced, replaced_inode, replaced_file)
        if source is not None:
            self.inodes.rename(source, moved, inode)
            if directory:
                self.inodes.move_tree(source.path, moved.path, self.tree.resolve)
            elif crosses_buffer(source, moved) and os.path.basename(moved.path) not in self._metadata_names():
                self._reopen_handles(inode, moved)

    def _reopen_handles(self, inode: int, moved: Node) -> None:
        """A file renamed into the write buffer (a plain file onto a chunk key) or out of
        it (a chunk onto a plain name) was copied: descriptors open on it follow the copy,
        as they follow an inode on ext4, so that what they write lands under the new name."""
        for fh in self._open_by_inode.get(inode, ()):
            handle = self._handles[fh]
            previous = handle.content
            if handle.writable:
                handle.content = self._writer().open(moved, os.O_RDWR)
            else:
                handle.content = self.tree.open(moved)
            handle.node = moved
            previous.close()

    @_kernel_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        writer = self._writer()
        handle = self._handles.get(fh) if fh is not None else None
        # ftruncate names its descriptor: act on the open file, whatever its name is now (or if it has none)
        open_file = handle.content if handle is not None and handle.writable else None
        if fields.update_size:
            writer.truncate_open(open_file, attr.st_size) if open_file else writer.truncate(node, attr.st_size)
        changes = dict(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        writer.set_open_attributes(open_file, **changes) if open_file else writer.set_attributes(node, **changes)
        try:  # (the kernel's number: an open file's node may be a name it no longer has)
            return self._entry(node, self.tree.attributes(node), inode)
        except FileNotFoundError:
            return self._entry(node, self._attributes_of_open_file(inode), inode)

    def _resolve_again(self, dir_key: str) -> None:
        """A directory became (or stopped being) an array: the kernel's inodes below it
        must mean what the tree says now (a plain ``c`` directory is now a KeyDir)."""
        self.inodes.resolve_again(dir_key, self.tree.resolve)

    async def _forget_cached_names(self, dir_key: str) -> None:
        """A shrinking resize dropped chunks of the array at ``dir_key``: the kernel would
        find their cached names until the entry timeout (lstat succeeds, an O_CREAT open
        does not create). Dropping the array directory's own entry drops every unused
        name cached below it; the names of dropped chunks still open (by any of their names)
        are dropped one by one (with the scratch files of dropped key directories), or the dropped key directory
        above them (else the directory's entry, looked up again, brings them back). The kernel
        takes the lock of the directory holding each entry, so this waits in a worker
        thread, and not long: a rename into that directory (metadata by rename) holds
        its lock until this very request ends. (An array at the mount root has no entry
        of its own: its unused dropped names stay cached until the entry timeout.)"""
        gone = [(path, inode) for path, inode in self._open_names_below(dir_key) if self.tree.resolve(path) is None]
        for path, inode in gone:  # (a file made at that name later is another file)
            self.inodes.replaced(Replaced(path), inode)
        dropped = {self._topmost_gone(path, dir_key) for path, _ in gone}
        entries = [e for e in map(self._kernel_entry, sorted(dropped) + ([dir_key] if dir_key else [])) if e]
        inodes = sorted({inode for _, inode in gone})
        await self._kernel_forgets(entries, inodes)

    @staticmethod
    async def _kernel_forgets(entries: list[tuple[int, str]], inodes: list[int]) -> None:
        """``forget_entries`` in a worker thread (the kernel takes the lock of the directory
        holding each entry, which the request being answered may hold), waiting at most
        INVALIDATE_WAIT for it."""
        with trio.move_on_after(INVALIDATE_WAIT):
            await trio.to_thread.run_sync(forget_entries, entries, inodes, abandon_on_cancel=True)

    def _open_names_below(self, dir_key: str) -> set[tuple[str, int]]:
        """``(path, inode)`` of the names below ``dir_key`` of open files: the name each was
        opened by, the name its inode means now (a directory above it may have been renamed
        since), and the other names of a hard-linked one (opened by any of them)."""
        found = set()
        for handle in self._handles.values():
            if isinstance(handle, FileHandle):
                now = self.inodes.node(handle.inode)
                for path in {handle.node.path, *([now.path] if now else []), *self.inodes.names_of(handle.inode)}:
                    if is_below(path, dir_key) and path != dir_key:
                        found.add((path, handle.inode))
        return found

    def _topmost_gone(self, path: str, dir_key: str) -> str:
        """The highest name above ``path`` (below ``dir_key``) that is gone too (a dropped
        key directory): its entry is the one to drop, with everything below it."""
        parent = path.rpartition("/")[0]
        while parent != dir_key and self.tree.resolve(parent) is None:
            path, parent = parent, parent.rpartition("/")[0]
        return path

    def _kernel_entry(self, path: str) -> tuple[int, str] | None:
        """``(parent inode, name)`` of a view path, as the kernel knows it."""
        parent_path, _, name = path.rpartition("/")
        parent = self.tree.resolve(parent_path)
        return None if parent is None else (self.inodes.inode_of(parent), name)

    def _writer(self) -> Writer:
        if self.writer is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.writer

    async def _remembered_entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attributes = await self._in_tree(self.tree.attributes, node)  # first: it raises if the node has gone
        return self._entry(node, attributes, self.inodes.remember(node))

    # -- helpers ------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.inodes.node(inode) or self._open_node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _open_node(self, inode: int) -> Node | None:
        """An open file's inode means its file for as long as it is open, also when no
        name computes it any more (a chunk of an array that ``rm -r`` removed)."""
        for fh in self._open_by_inode.get(inode, ()):
            return self._handles[fh].node
        return None

    def _new_handle(self, content) -> int:
        handle = next(self._next_handle)
        self._handles[handle] = content
        return handle

    def _entry(self, node: Node, attributes: Attributes, inode: int | None = None) -> pyfuse3.EntryAttributes:
        # The status changes all the time: the kernel asks for it afresh.
        entry = self._entry_of(attributes, 0 if isinstance(node, StatusFile) else self.timeout)
        entry.st_ino = self.inodes.inode_of(node) if inode is None else inode
        return entry

    @staticmethod
    def _entry_of(attributes: Attributes, timeout: float) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
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
        entry.entry_timeout = entry.attr_timeout = timeout
        return entry

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        """A cached "no such file": readers probe absent chunks a lot."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = 0
        entry.entry_timeout = self.timeout
        return entry

    def open_handles(self) -> int:
        return len(self._handles)

    def open_for_writing(self) -> int:
        return sum(1 for h in self._handles.values() if isinstance(h, FileHandle) and h.writable)


def forget_entries(entries: list[tuple[int, str]], inodes: list[int] = ()) -> None:
    """The kernel forgets these directory entries (and what is cached below them), and
    the attributes it caches of these inodes (open files that lost their names: nlink 0)."""
    for parent_inode, name in entries:
        try:
            pyfuse3.invalidate_entry(parent_inode, os.fsencode(name))
        except OSError:
            pass  # (ENOENT: the kernel holds no such entry)
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError:
            pass  # (ENOENT: the kernel forgot it meanwhile)


def crosses_buffer(source: Node, moved: Node) -> bool:
    """Whether a rename moved a file between the backing store and the write buffer."""
    files = (Plain, Chunk, Scratch)
    return isinstance(source, files) and isinstance(moved, files) and isinstance(source, Plain) != isinstance(moved, Plain)


class FileHandle:
    def __init__(self, inode: int, node: Node, content, writable: bool):
        self.inode, self.node, self.content, self.writable = inode, node, content, writable


class DirHandle:
    def __init__(self, node: Node, listing: list, changes: int = 0):
        """``changes``: ``Operations.changes`` before the listing was made."""
        self.node, self.listing, self.changes = node, listing, changes
