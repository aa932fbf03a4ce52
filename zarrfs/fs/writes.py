"""Writes through the mount (SPEC §5): where each written name goes.

    a chunk key of an array         the write buffer (a MemFile), repacked into its shard
    a metadata name (zarr.json;     the write buffer until the last close or a rename
      .zarray/.zattrs/.zgroup)      onto the name, then applied (fs/metadata.py)
    any other name beside chunks    a scratch MemFile (temporary files, locks)
    anything else                   the backing directory, as it is

A rename or link moves a MemFile between names; open handles follow it. The
Writer changes the model only; the handlers in operations.py await flushes.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Callable

import trio

from .metadata import MetadataWriter, refuse
from .overlay import MemFile, chunk_name, scratch_name
from .shards import join
from ..store.base import PlainFile
from ..store.local import zarrfs_own
from .tree import CONTROL_DIR, Chunk, KeyDir, MemContent, MetadataFile, Node, Plain, Scratch, ViewTree

log = logging.getLogger("zarrfs")

# A file name that may be a chunk key of an array whose metadata has not arrived yet
# (``cp -r`` copies in directory order): "3", "0.1.2", "c.0.1", "c" (0-d). Such files
# outside arrays wait in the write buffer instead of costing the store an inode each.
CHUNK_LIKE = re.compile(r"c|(c\.)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class Target:
    """What a name in a directory means for a write."""

    kind: str  # "plain", "chunk", "scratch", "metadata", "pending" (chunk-like, outside arrays)
    path: str  # view path (== backing path for "plain")
    array: str = ""
    coords: tuple[int, ...] = ()

    @property
    def name(self) -> tuple:
        return chunk_name(self.array, self.coords) if self.kind == "chunk" else scratch_name(self.path)


class PlainWriter:
    """An open backing file (a plain file outside any array), as the store opened it."""

    def __init__(self, file: PlainFile):
        self.file = file
        self.version = ("plain", id(file), time.monotonic_ns())

    def read(self, offset: int, size: int) -> bytes:
        return self.file.pread(size, offset)

    def write(self, offset: int, data: bytes) -> int:
        return self.file.pwrite(data, offset)

    def truncate(self, size: int) -> None:
        self.file.truncate(size)

    def set_attributes(self, mode, uid, gid, atime_ns, mtime_ns) -> None:
        """fchmod, fchown, futimens (the file may have no name any more)."""
        self.file.set_attributes(mode, uid, gid, atime_ns, mtime_ns)

    def close(self) -> None:
        self.file.close()


class Writer:
    def __init__(self, tree: ViewTree, flusher, chunks_per_shard: int, max_scratch: int = 1 << 30):
        self.tree = tree
        self.overlay = tree.overlay
        self.flusher = flusher
        self.metadata = MetadataWriter(tree, flusher, chunks_per_shard)
        self._pending_estimate = 0  # bytes in pending files, at least (see spill_pending)
        self.max_scratch = max_scratch  # bytes of scratch files per user
        self._scratch_bytes: dict[int, int] = {}  # uid -> bytes in scratch files, at least
        self._over_scratch: set[int] = set()  # uids refused since their last accepted write

    # -- naming -------------------------------------------------------------

    def target(self, parent: Node, name: str, quiet: bool = False) -> Target:
        """What writing ``name`` in ``parent`` means. Raises OSError for names that cannot be written."""
        if zarrfs_own(name) or (name == CONTROL_DIR and parent.path == ""):
            raise OSError(errno.EPERM, f"{name}: a name zarrfs keeps for itself (docs/hpc-admin.md)")
        path = join(parent.path, name)
        if isinstance(parent, Plain) and name in self.metadata.names:
            return Target("metadata", path, parent.path)
        if isinstance(parent, KeyDir):
            return self._key_target(parent.array, parent.parts + (name,), path, quiet)
        view = self.tree.views.of(parent.path) if isinstance(parent, Plain) else None
        if view is None or view.array is None:
            if view is not None and name in view.hidden:
                raise OSError(errno.EPERM, f"{path}: the view shows other metadata here")
            if isinstance(parent, Plain) and CHUNK_LIKE.fullmatch(name) \
                    and self.tree._backing_child(parent.path, name) is None:
                return Target("pending", path)
            return Target("plain", path)
        if name in view.hidden:
            raise OSError(errno.EPERM, f"{path}: the view shows other metadata here")
        if self.tree._is_key(view, name):
            return self._key_target(parent.path, (name,), path, quiet)
        if self.tree._backing_child(parent.path, name) is not None:
            return Target("plain", path)  # a user's own file beside the chunks (README.txt)
        return Target("scratch", path, parent.path)

    def _key_target(self, array_key: str, parts: tuple[str, ...], path: str, quiet: bool = False) -> Target:
        view = self.tree._array_view(array_key)
        if view is None:
            raise OSError(errno.ENOENT, f"{array_key} is no longer an array")
        layout = view.array
        coords = view.keys.decode_prefix(parts, layout.ndim)
        if coords is None or len(parts) != view.keys.depth(layout.ndim):
            return Target("scratch", path, array_key)
        if not layout.in_grid(coords):
            if not quiet:
                log.warning("%s: chunk key outside the grid %s of %s; refused", path, layout.chunk_grid,
                            array_key)
            raise OSError(errno.EINVAL, f"{path} is outside the array's chunk grid")
        return Target("chunk", path, array_key, coords)

    def node_of(self, target: Target) -> Node:
        if target.kind == "chunk":
            return Chunk(target.path, target.array, target.coords)
        if target.kind == "plain":
            return Plain(target.path)
        return Scratch(target.path, target.array)

    # -- files --------------------------------------------------------------

    def create(self, parent: Node, name: str, mode: int, flags: int, owner: tuple[int, int] = (0, 0)):
        """A new (or, without O_EXCL, existing) file; returns its node and a writable handle."""
        target = self.target(parent, name)
        if target.kind == "plain":
            file = self.tree.store.create(target.path, flags | os.O_CREAT, mode)
            self.tree.store.chown_to(target.path, *owner)
            return self.node_of(target), PlainWriter(file)
        existing = self.tree.lookup(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise OSError(errno.EEXIST, target.path)
            return existing, self.open(existing, flags)
        memfile = MemFile(mode=stat.S_IFREG | stat.S_IMODE(mode), uid=owner[0], gid=owner[1])
        self._bind(target, memfile)
        return self.node_of(target), MemContent(memfile, writable=True, created=True)

    def open(self, node: Node, flags: int):
        """A writable handle on an existing file."""
        if isinstance(node, Plain) and os.path.basename(node.path) not in self.metadata.names:
            return PlainWriter(self.tree.store.create(node.path, flags & ~os.O_CREAT, 0))
        memfile = self._memfile_for(node)
        content = MemContent(memfile, writable=True)  # before O_TRUNC: what it held stays settled
        if flags & os.O_TRUNC and memfile.data:
            memfile.truncate(0)
            self.flusher.changed(memfile)
        return content

    def _memfile_for(self, node: Node) -> MemFile:
        """The MemFile behind ``node``, copying a chunk out of its shard on first write."""
        memfile = self.tree._memfile(node)
        if memfile is not None:
            return memfile
        if isinstance(node, Chunk):
            memfile = MemFile(bytearray(self.tree.read(node, 0, 2**31)))  # looks again if the shard changes
            name = chunk_name(node.array, node.coords)
            self.overlay.bind(name, memfile)
            memfile.flushed[name] = memfile.generation  # same bytes as the shard
            return memfile
        if isinstance(node, (MetadataFile, Scratch, Plain)) and os.path.basename(node.path) in self.metadata.names:
            # Written from what the view shows there now, which may be nothing: the kernel
            # keeps names of metadata that was applied (an empty .zattrs, not shown) or
            # unlinked (zarr-python 3.0's mode="w" unlinks, then writes anew).
            memfile = MemFile(bytearray(self._metadata_now(node.path)))
            self.overlay.bind(scratch_name(node.path), memfile)
            return memfile
        if isinstance(node, Scratch):  # gone: the caller looks again
            raise FileNotFoundError(errno.ENOENT, f"{node.path} is no longer a buffered file")
        raise OSError(errno.EPERM, node.path)

    def write(self, content, offset: int, data: bytes) -> int:
        if isinstance(content, MemContent) and not any(n[0] == "chunk" for n in content.memfile.names):
            self._check_scratch_room(content.memfile, offset + len(data))
        written = content.write(offset, data) if isinstance(content, PlainWriter) else content.memfile.write(offset, data)
        if isinstance(content, MemContent):
            self.flusher.changed(content.memfile, len(data))
            if content.memfile.pending:
                self._pending_estimate += len(data)
        return written

    def _check_scratch_room(self, memfile: MemFile, end: int) -> None:
        """Scratch files live in memory: each user's are bounded by ``--max-scratch``, so
        one user cannot take the daemon's memory from the others (SPEC §8). A running
        tally (that only grows) is counted exactly again whenever it reaches the limit."""
        grows = max(0, end - len(memfile.data))
        if not grows:
            return
        uid = memfile.uid
        tally = self._scratch_bytes.get(uid)
        if tally is None or tally + grows > self.max_scratch:
            tally = sum(len(f.data) for f in self.overlay.scratch.values() if f.uid == uid)
            if tally + grows > self.max_scratch:
                if uid not in self._over_scratch:  # once, not per refused write
                    log.warning("uid %d: scratch files would pass --max-scratch (%d MiB); writes refused",
                                uid, self.max_scratch >> 20)
                    self._over_scratch.add(uid)
                raise OSError(errno.EDQUOT, "scratch files of this user are over --max-scratch")
        self._over_scratch.discard(uid)
        self._scratch_bytes[uid] = tally + grows

    def truncate(self, node: Node, size: int) -> None:
        if isinstance(node, Plain):
            self.tree.store.truncate(node.path, size)
            return
        self.truncate_memfile(self._memfile_for(node), size)

    def truncate_open(self, content, size: int) -> None:
        """ftruncate of an open file, whatever its name is now (or if it has none)."""
        if isinstance(content, PlainWriter):
            content.truncate(size)
        else:
            self.truncate_memfile(content.memfile, size)

    def truncate_memfile(self, memfile: MemFile, size: int) -> None:
        memfile.truncate(size)
        self.flusher.changed(memfile)

    def set_attributes(self, node: Node, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None) -> None:
        """chmod, chown, utimes. A chunk's mode and times are those of its shard: accepted, not kept."""
        if isinstance(node, Plain):
            times = None
            if atime_ns is not None or mtime_ns is not None:
                st = self.tree.store.lstat(node.path)
                times = (atime_ns or st.st_atime_ns, mtime_ns or st.st_mtime_ns)
            self.tree.store.set_attributes(node.path, None if mode is None else stat.S_IMODE(mode), uid, gid, times)
            return
        memfile = self.tree._memfile(node)
        if memfile is not None:
            set_memfile_attributes(memfile, mode, uid, gid, atime_ns, mtime_ns)

    def set_open_attributes(self, content, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None) -> None:
        """The same for an open file, whatever its name is now (or if it has none)."""
        if isinstance(content, PlainWriter):
            content.set_attributes(mode, uid, gid, atime_ns, mtime_ns)
        else:
            set_memfile_attributes(content.memfile, mode, uid, gid, atime_ns, mtime_ns)

    # -- names --------------------------------------------------------------

    async def _off_loop(self, call, *args):
        """A store call of a namespace change: on an object store (a request that waits on
        the network) in a worker thread, so that every other request goes on meanwhile;
        on a local store right here. Only for calls that change no state of the daemon."""
        if self.tree.store.capabilities.cheap_calls:
            return call(*args)
        return await trio.to_thread.run_sync(call, *args)

    async def unlink(self, parent: Node, name: str) -> None:
        node = self.tree.lookup(parent, name)
        if node is None:
            if self._dropped_by_shrink(parent, name):
                return  # the kernel may still cache the name; the chunk is already gone
            raise OSError(errno.ENOENT, join(parent.path, name))
        if isinstance(node, KeyDir) or (isinstance(node, Plain) and stat.S_ISDIR(self.tree.store.lstat(node.path).st_mode)):
            raise OSError(errno.EISDIR, node.path)
        if isinstance(node, MetadataFile):
            await self.metadata.remove(node.dir, node.name)
        elif isinstance(node, Plain):
            await self._off_loop(self.tree.store.unlink, node.path)
        elif isinstance(node, Chunk):
            self._keep_directories_above(node)
            self.overlay.unbind(chunk_name(node.array, node.coords))
            self.flusher.chunk_changed(node.array, node.coords)
        else:
            self.overlay.forget(scratch_name(node.path))

    def _dropped_by_shrink(self, parent: Node, name: str) -> bool:
        """A chunk key outside the grid: a resize dropped it (zarr-python 2 deletes them after)."""
        try:
            self.target(parent, name, quiet=True)
        except OSError as error:
            return error.errno == errno.EINVAL
        return False

    def mkdir(self, parent: Node, name: str, mode: int, owner: tuple[int, int] = (0, 0)) -> Node:
        target = self.target(parent, name)
        if target.kind in ("plain", "pending"):  # directories outside arrays are the store's
            self.tree.store.mkdir(target.path, mode)
            self.tree.store.chown_to(target.path, *owner)
            return Plain(target.path)
        # The kernel asks to make only a name it holds absent. A key directory that shows
        # since it asked (a shard directory of the same name being written meanwhile, another
        # program's change) is made, not refused: EEXIST would leave the kernel's "absent" in
        # place while the writer goes on as if it existed (tensorstore: mkdir, open: ENOENT).
        existing = self.tree.lookup(parent, name)
        if existing is not None and not isinstance(existing, KeyDir):
            raise OSError(errno.EEXIST, target.path)
        if target.kind != "scratch":  # a chunk key or a metadata name cannot be a directory
            raise refuse(target.path, "a chunk key or metadata name cannot be a directory")
        self.overlay.directories.add(target.path)
        self.overlay.restore_directories(target.path)
        node = self.tree.lookup(parent, name)
        if not isinstance(node, KeyDir):
            self.overlay.directories.discard(target.path)
            raise refuse(target.path, f"only chunk key directories can be made inside array {target.array}")
        return node

    async def rmdir(self, parent: Node, name: str) -> None:
        node = self.tree.lookup(parent, name)
        if node is None:
            raise OSError(errno.ENOENT, join(parent.path, name))
        if isinstance(node, KeyDir):
            if self.tree.children(node):
                raise OSError(errno.ENOTEMPTY, node.path)
            self.overlay.directories.discard(node.path)
            self.overlay.removed_directories.add(node.path)
            return
        if isinstance(node, Plain):
            if self.tree.children(node):
                raise OSError(errno.ENOTEMPTY, node.path)
            await self.metadata.finalize(node.path)
            await self._off_loop(self.tree.store.rmdir, node.path)
            self.overlay.forget_removed_directories(node.path)
            return
        raise OSError(errno.ENOTDIR, node.path)

    async def rename(self, old_parent: Node, old: str, new_parent: Node, new: str, flags: int) -> tuple[Node, bool]:
        """Move a name; returns what the new name means now and whether a directory moved."""
        if flags & RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        source = self.tree.lookup(old_parent, old)
        if source is None:
            raise OSError(errno.ENOENT, join(old_parent.path, old))
        target = self.target(new_parent, new)
        existing = self.tree.lookup(new_parent, new)
        if existing is not None and flags & RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, target.path)
        # (a chunk-like name outside arrays is a plain file until metadata adopts it, as for link)
        if isinstance(source, Plain) and target.kind in ("plain", "pending"):
            if stat.S_ISDIR(self.tree.store.lstat(source.path).st_mode):
                if existing is not None and self.tree.children(existing):
                    raise OSError(errno.ENOTEMPTY, target.path)
                await self.flusher.quiesce(source.path)  # no await from here on: see quiesce
                await self.flusher.quiesce(target.path)
                if existing is not None:  # an empty directory replaced: what the buffer knew of it goes
                    self.overlay.drop_tree(target.path)
                    self.flusher.drop_tree(target.path)
                self.overlay.move_tree(source.path, target.path)
                self.flusher.move_tree(source.path, target.path)
                self.tree.views.move_tree(source.path, target.path)
                self.tree.store.rename(source.path, target.path)
                return self.node_of(target), True
            await self._off_loop(self.tree.store.rename, source.path, target.path)
            return self.node_of(target), False
        if isinstance(source, KeyDir) or (isinstance(source, Plain) and stat.S_ISDIR(self.tree.store.lstat(source.path).st_mode)):
            raise OSError(errno.EXDEV, "directories move only outside arrays")
        self._check_leaves_links(source, target)
        if isinstance(source, Plain):
            memfile = await self._off_loop(self._detach_plain, source)
        else:
            memfile = self._detach_buffered(source)
        await self._place(target, memfile)
        # (metadata the view does not show, an empty .zattrs: the kernel keeps the name,
        # and an open of it writes the metadata anew)
        return self.tree.lookup(new_parent, new) or self.node_of(target), False

    def _keep_directories_above(self, node: Chunk) -> None:
        """A chunk's name goes: the key directories above it stay, as directories stay when
        their files go (until rmdir), though the repack takes the store's last chunk under
        them away (a key directory shows while the store holds a chunk under it)."""
        path = os.path.dirname(node.path)
        while path and path != node.array:
            self.overlay.directories.add(path)
            path = os.path.dirname(path)

    def _check_leaves_links(self, source: Node, target: Target) -> None:
        """A file with several names cannot be renamed across the buffer line (out of the
        write buffer, or from the store into it): the new name would hold a copy, yet keep
        the inode number the kernel knows for all its names (and their cached pages).
        EXDEV, as between filesystems: ``mv`` copies then."""
        memfile = self.tree._memfile(source)
        if target.kind in ("plain", "metadata") and memfile is not None and len(memfile.names) > 1:
            raise OSError(errno.EXDEV, f"{source.path}: a hard-linked buffered file leaves the buffer only as a copy")
        if target.kind in ("chunk", "scratch") and isinstance(source, Plain):
            st = self.tree.store.lstat(source.path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                raise OSError(errno.EXDEV, f"{source.path}: a hard-linked file enters the buffer only as a copy")

    def _detach_plain(self, node: Plain) -> MemFile:
        """Take the backing file at ``node`` out of the store, as a MemFile (store calls only)."""
        memfile = MemFile(bytearray(self._content_of(node)), mode=self.tree.store.lstat(node.path).st_mode)
        self.tree.store.unlink(node.path)
        return memfile

    def _detach_buffered(self, node: Node) -> MemFile:
        """Take the buffered file (or stored chunk) at ``node`` away from its name."""
        memfile = self._memfile_for(node)
        name = memfile_name(node)
        if name[0] == "chunk":
            self._keep_directories_above(node)
            self.overlay.unbind(name)
            self.flusher.chunk_changed(name[1], name[2])
        else:
            self.overlay.forget(name)
        return memfile

    async def _place(self, target: Target, memfile: MemFile) -> None:
        if target.kind == "metadata":
            await self.metadata.apply(target.array, os.path.basename(target.path), bytes(memfile.data))
        elif target.kind == "plain":
            await self._off_loop(self._plain_file(target.path, memfile))
        else:
            self._bind(target, memfile)

    def _plain_file(self, path: str, memfile: MemFile) -> Callable[[], None]:
        """What writes a buffered file into the store as the plain file ``path``, with its own
        mode and owner (as rename(2) keeps them), whatever file it replaces there."""
        return functools.partial(self.tree.store.replace_durably, path, bytes(memfile.data),
                                 stat.S_IMODE(memfile.mode), owner=(memfile.uid, memfile.gid))

    def _bind(self, target: Target, memfile: MemFile) -> None:
        self.overlay.bind(target.name, memfile)
        memfile.pending = target.kind == "pending"
        if target.kind == "chunk":
            self.overlay.restore_directories(os.path.dirname(target.path))
            self.flusher.chunk_changed(target.array, target.coords)

    async def link(self, node: Node, new_parent: Node, new: str) -> tuple[Node, bool]:
        """A second name for ``node``; returns its node and whether both names share one file
        (else the new name holds a copy: a buffered file cannot be a backing file's link)."""
        target = self.target(new_parent, new)
        if self.tree.lookup(new_parent, new) is not None:
            raise OSError(errno.EEXIST, target.path)  # zarr-python 3's set_if_not_exists relies on it
        if isinstance(node, Plain) and target.kind in ("plain", "pending"):
            # (a chunk-like name outside arrays is a plain file until metadata adopts it)
            await self._off_loop(self.tree.store.link, node.path, target.path)
            return Plain(target.path), True
        if target.kind in ("plain", "metadata"):
            # zarr-python 3.1 writes a new node's zarr.json as a temporary file, then link()s it
            await self._place(target, self._copy_of(node))
            # (an empty .zattrs is applied, but the v2 view shows none: the link still succeeded)
            return self.tree.lookup(new_parent, new) or self.node_of(target), False
        if isinstance(node, Plain):
            self._bind(target, self._copy_of(node))
            return self.node_of(target), False
        self._bind(target, self._memfile_for(node))
        return self.node_of(target), True

    def _metadata_now(self, path: str) -> bytes:
        """What metadata file ``path`` holds now: the view's, a plain one's (a group's
        zarr.json in the v3 view, a .zattrs waiting for its .zarray), or nothing."""
        current = self.tree.resolve(path)
        try:
            if isinstance(current, MetadataFile):
                return self.tree.open(current).read(0, 2**31)
            if isinstance(current, Plain) and stat.S_ISREG(self.tree.store.lstat(path).st_mode):
                return self.tree.store.read(path)
        except FileNotFoundError:
            pass
        return b""

    def _copy_of(self, node: Node) -> MemFile:
        """A buffered copy of ``node``'s file, with its mode and owner (as cp -p would keep
        them; a link is a second name of the same file, so nothing of it may change)."""
        if isinstance(node, Plain):
            st = self.tree.store.lstat(node.path)
            return MemFile(bytearray(self._content_of(node)), mode=stat.S_IFREG | stat.S_IMODE(st.st_mode),
                           uid=st.st_uid, gid=st.st_gid)
        source = self._memfile_for(node)
        return MemFile(bytearray(source.data), mode=source.mode, uid=source.uid, gid=source.gid)

    def _content_of(self, node: Node) -> bytes:
        if isinstance(node, Plain):
            if not stat.S_ISREG(self.tree.store.lstat(node.path).st_mode):
                raise OSError(errno.EPERM, f"{node.path}: only regular files can be linked here")
            return self.tree.store.read(node.path)
        return bytes(self._memfile_for(node).data)

    def symlink(self, parent: Node, name: str, target_text: str, owner: tuple[int, int] = (0, 0)) -> Node:
        target = self.target(parent, name)
        if target.kind != "plain":
            raise OSError(errno.EPERM, f"{target.path}: symbolic links belong outside arrays")
        self.tree.store.symlink(target_text, target.path)
        self.tree.store.chown_to(target.path, *owner)
        return self.node_of(target)

    def persist_scratch(self) -> None:
        """At exit: files left in plain directories or directly in an array directory are a
        user's plain files (or chunks whose metadata never came); temporaries left in
        chunk key directories have no place in the store."""
        for path, memfile in list(self.overlay.scratch.items()):
            self.overlay.forget(scratch_name(path))
            if os.path.basename(path) in self.metadata.names:
                continue  # metadata still being written when the mount went away
            if not isinstance(self.tree.resolve(os.path.dirname(path)), Plain):
                log.warning("%s: a temporary file left among chunks is dropped", path)
                continue
            self._plain_file(path, memfile)()

    async def fsynced(self, memfile: MemFile) -> None:
        """fsync of a pending file: its content goes to disk as a plain file (and stays
        in the buffer, to become a chunk when its metadata arrives)."""
        for name in [n for n in memfile.names if n[0] == "scratch"] if memfile.pending else ():
            await trio.to_thread.run_sync(self._plain_file(name[1], memfile))

    async def spill_pending(self, limit: int) -> None:
        """Pending files past ``limit`` bytes go to disk as plain files, closed ones first:
        they are adopted from there if their metadata arrives."""
        if self._pending_estimate <= limit:
            return
        self._pending_estimate = self.overlay.pending_bytes()
        for path, memfile in list(self.overlay.scratch.items()):
            if self._pending_estimate <= limit // 2:
                return
            if memfile.pending and memfile.writers == 0 and self.overlay.get(scratch_name(path)) is memfile:
                generation = memfile.generation
                await trio.to_thread.run_sync(self._plain_file(path, memfile))
                if self.overlay.get(scratch_name(path)) is memfile and memfile.generation == generation:
                    self.overlay.forget(scratch_name(path))
                    self._pending_estimate -= len(memfile.data)

    async def closed(self, node: Node, content) -> None:
        """close() of a writable handle: its content may reach the store now; the last
        handle of a metadata file closed: apply what was written."""
        if not isinstance(content, MemContent):
            return
        memfile = content.memfile
        memfile.settle()
        if memfile.unflushed_names():  # (else it is in its shards already)
            self.flusher.changed(memfile)
        if memfile.handles == 1:
            if os.path.basename(node.path) in self.metadata.names and self.overlay.get(scratch_name(node.path)) is memfile:
                self.overlay.forget(scratch_name(node.path))
                await self.metadata.apply(os.path.dirname(node.path), os.path.basename(node.path), bytes(memfile.data))


def set_memfile_attributes(memfile: MemFile, mode, uid, gid, atime_ns, mtime_ns) -> None:
    if mode is not None:
        memfile.mode = stat.S_IFREG | stat.S_IMODE(mode)
    memfile.uid = memfile.uid if uid is None else uid
    memfile.gid = memfile.gid if gid is None else gid
    memfile.atime_ns = atime_ns or memfile.atime_ns
    memfile.mtime_ns = mtime_ns or memfile.mtime_ns


def memfile_name(node: Node) -> tuple:
    if isinstance(node, Chunk):
        return chunk_name(node.array, node.coords)
    return scratch_name(node.path)
