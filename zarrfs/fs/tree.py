"""The mounted tree: one model of what the mount shows, independent of FUSE.

Every view path maps to a node:

    Plain          a backing path shown as it is (file, directory, symlink)
    ArrayDir       a backing directory holding a sharded array
    ArrayMetadata  its zarr.json, rewritten as the unsharded equivalent
    KeyDir         a directory level of chunk keys (``c``, ``c/3`` under ``/`` keys)
    Chunk          one present inner chunk, a byte range of a shard
    ControlDir     the hidden ``.zarrfs`` directory, and StatusFile in it

Nodes are plain values (a path and what it means); everything they show is
looked up again from the backing store on use, so a node never goes stale in a
way that serves wrong bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, replace
from typing import Callable

from ..format.keys import parse_index
from ..format.metadata import ShardedArray
from ..format.shard_index import CorruptShard
from ..store.local import LocalStore
from .shards import METADATA_NAME, Arrays, Shards, join, version

RESERVED_PREFIX = ".zarrfs"  # our control directory and scratch files: never listed
CONTROL_DIR = ".zarrfs"
STATUS_FILE = "status"


@dataclass(frozen=True)
class Node:
    path: str  # view path relative to the mount root, "" for the root


@dataclass(frozen=True)
class Plain(Node):
    pass


@dataclass(frozen=True)
class ArrayDir(Node):
    pass


@dataclass(frozen=True)
class ArrayMetadata(Node):
    array: str


@dataclass(frozen=True)
class KeyDir(Node):
    array: str
    parts: tuple[str, ...]  # key components below the array directory


@dataclass(frozen=True)
class Chunk(Node):
    array: str
    coords: tuple[int, ...]


@dataclass(frozen=True)
class ControlDir(Node):
    pass


@dataclass(frozen=True)
class StatusFile(Node):
    pass


@dataclass(frozen=True)
class Attributes:
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int  # 512-byte blocks, what du counts
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Attributes:
        return cls(st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size, st.st_blocks,
                   st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)

    def as_file(self, size: int, mode: int | None = None) -> Attributes:
        """A regular file of ``size`` bytes with these owners and times."""
        perms = stat.S_IMODE(self.mode if mode is None else mode)
        return replace(self, mode=stat.S_IFREG | perms, nlink=1, size=size, blocks=-(-size // 512))

    def as_directory(self) -> Attributes:
        return replace(self, mode=stat.S_IFDIR | stat.S_IMODE(self.mode), nlink=2, size=4096, blocks=8)


class FileRange:
    """An open chunk or plain file: a byte range of a backing file."""

    def __init__(self, fd: int, offset: int, length: int, version: tuple):
        self.fd, self.offset, self.length, self.version = fd, offset, length, version

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.length - offset))
        return os.pread(self.fd, size, self.offset + offset) if size else b""

    def close(self) -> None:
        os.close(self.fd)


class Bytes:
    """An open file whose content zarrfs makes (view metadata, status)."""

    def __init__(self, data: bytes, version: tuple):
        self.data, self.version = data, version

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        pass


class ViewTree:
    """What the mount shows (the v3 view), computed from the backing store."""

    def __init__(self, store: LocalStore, status_text: Callable[[], str] = lambda: ""):
        self.store = store
        self.arrays = Arrays(store)
        self.shards = Shards(store)
        self.status_text = status_text

    # -- navigation ---------------------------------------------------------

    def root(self) -> Node:
        return self._backing_node("")

    def lookup(self, parent: Node, name: str) -> Node | None:
        """The child ``name`` of ``parent``, or None if there is none."""
        if isinstance(parent, (Plain, ArrayDir)) and parent.path == "" and name == CONTROL_DIR:
            return ControlDir(CONTROL_DIR)
        if isinstance(parent, ControlDir):
            return StatusFile(join(parent.path, STATUS_FILE)) if name == STATUS_FILE else None
        if name.startswith(RESERVED_PREFIX):
            return None
        if isinstance(parent, KeyDir):
            array = self.arrays.sharded(parent.array)
            return self._key_lookup(parent.array, array, parent.parts + (name,)) if array else None
        array = self.arrays.sharded(parent.path) if isinstance(parent, ArrayDir) else None
        if array is None:
            return self._backing_child(parent.path, name)
        if name == METADATA_NAME:
            return ArrayMetadata(join(parent.path, name), parent.path)
        if array.key_encoding.decode_prefix((name,), array.ndim) is not None:
            return self._key_lookup(parent.path, array, (name,))
        return self._backing_child(parent.path, name)

    def children(self, node: Node) -> list[tuple[str, Node]]:
        """The entries of directory ``node``, as ``(name, node)`` pairs."""
        if isinstance(node, ControlDir):
            return [(STATUS_FILE, StatusFile(join(node.path, STATUS_FILE)))]
        if isinstance(node, KeyDir):
            array = self.arrays.sharded(node.array)
            return self._key_children(node.array, array, node.parts) if array else []
        array = self.arrays.sharded(node.path) if isinstance(node, ArrayDir) else None
        names = [n for n in self.store.listdir(node.path) if not n.startswith(RESERVED_PREFIX)]
        if array is None:
            return [(n, self._backing_node(join(node.path, n))) for n in names]
        in_namespace = lambda n: array.key_encoding.decode_prefix((n,), array.ndim) is not None
        entries = [(n, self._backing_node(join(node.path, n)))
                   for n in names if n != METADATA_NAME and not in_namespace(n)]
        entries.append((METADATA_NAME, ArrayMetadata(join(node.path, METADATA_NAME), node.path)))
        return entries + self._key_children(node.path, array, ())

    def _backing_child(self, dir_key: str, name: str) -> Node | None:
        key = join(dir_key, name)
        try:
            self.store.lstat(key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._backing_node(key)

    def _backing_node(self, key: str) -> Node:
        return ArrayDir(key) if self.arrays.sharded(key) else Plain(key)

    # -- the chunk key namespace of a sharded array ------------------------

    def _key_lookup(self, array_key: str, array: ShardedArray, parts: tuple[str, ...]) -> Node | None:
        encoding = array.key_encoding
        coords = encoding.decode_prefix(parts, array.ndim)
        if coords is None:
            return None
        path = join(array_key, *parts)
        if len(parts) == encoding.depth(array.ndim):
            if array.in_grid(coords) and self.shards.locate(array_key, array, coords):
                return Chunk(path, array_key, coords)
            return None
        if any(i >= n for i, n in zip(coords, array.chunk_grid)):
            return None
        if not os.path.isdir(self.store.path(self._shard_dir(array_key, array, coords))):
            return None
        return KeyDir(path, array_key, parts)

    def _key_children(self, array_key: str, array: ShardedArray, parts: tuple[str, ...]) -> list[tuple[str, Node]]:
        encoding = array.key_encoding
        depth = encoding.depth(array.ndim)
        if depth == 1:  # every key is a file name in the array directory
            return self._chunk_entries(array_key, array, self._flat_shards(array_key, array))
        if encoding.name == "default" and not parts:
            return self._listed_dirs(array_key, array, [("c",)])
        coords = encoding.decode_prefix(parts, array.ndim) if parts else ()
        axis = len(coords)
        shard_prefix = array.shard_of(coords)
        try:
            listed = self.store.listdir(self._shard_dir(array_key, array, coords))
        except (FileNotFoundError, NotADirectoryError):
            return []
        shard_indices = sorted(s for s in map(parse_index, listed) if s is not None and s < array.shard_grid[axis])
        if len(parts) + 1 == depth:
            shards = [shard_prefix + (s,) for s in shard_indices]
            return self._chunk_entries(array_key, array, shards, leaf_of=coords)
        per_shard = array.chunks_per_shard[axis]
        children = [parts + (str(i),)
                    for s in shard_indices
                    for i in range(s * per_shard, min((s + 1) * per_shard, array.chunk_grid[axis]))]
        return self._listed_dirs(array_key, array, children)

    def _listed_dirs(self, array_key, array, children: list[tuple[str, ...]]) -> list[tuple[str, Node]]:
        nodes = (self._key_lookup(array_key, array, parts) for parts in children)
        return [(node.parts[-1], node) for node in nodes if node is not None]

    def _chunk_entries(self, array_key, array, shards, leaf_of: tuple[int, ...] | None = None):
        """Entries for the present chunks of ``shards`` (those under ``leaf_of``, if given)."""
        entries = []
        for shard_coords in shards:
            for coords in self.shards.present_chunks(array_key, array, shard_coords):
                coords = tuple(int(i) for i in coords)
                if leaf_of is not None and coords[: len(leaf_of)] != leaf_of:
                    continue
                parts = array.key_encoding.components(coords)
                entries.append((parts[-1], Chunk(join(array_key, *parts), array_key, coords)))
        return entries

    def _flat_shards(self, array_key: str, array: ShardedArray) -> list[tuple[int, ...]]:
        """Shard coordinates of every shard file of a ``.``-separated (or 0-d) array."""
        decoded = (array.key_encoding.decode_prefix((n,), array.ndim) for n in self.store.listdir(array_key))
        return [c for c in decoded if c is not None and all(i < n for i, n in zip(c, array.shard_grid))]

    def _shard_dir(self, array_key: str, array: ShardedArray, coords: tuple[int, ...]) -> str:
        """The backing directory of the shards under a chunk-coordinate prefix."""
        return join(array_key, *array.key_encoding.prefix_components(array.shard_of(coords)))

    # -- attributes and content --------------------------------------------

    def attributes(self, node: Node) -> Attributes:
        """Raises OSError (e.g. ENOENT when the node has gone) or CorruptShard."""
        if isinstance(node, Plain):
            return Attributes.of(self.store.lstat(node.path))
        if isinstance(node, ArrayDir):
            return Attributes.of(self.store.stat(node.path))
        if isinstance(node, ArrayMetadata):
            array = self._array_or_gone(node.array)
            return Attributes.of(self.arrays.metadata_stat(node.array)).as_file(len(array.view_bytes()))
        if isinstance(node, KeyDir):
            return Attributes.of(self.store.stat(node.array)).as_directory()
        if isinstance(node, Chunk):
            location = self._locate_or_gone(node)
            return Attributes.of(location.shard_stat).as_file(location.length)
        if isinstance(node, ControlDir):
            return Attributes.of(self.store.stat("")).as_directory()
        if isinstance(node, StatusFile):
            root = Attributes.of(self.store.stat(""))
            return root.as_file(len(self.status_text().encode()), mode=0o444)
        raise TypeError(node)

    def listing_attributes(self, node: Node) -> Attributes:
        """Attributes for a directory listing: a chunk of a corrupt shard shows as
        an empty file (its reads fail with EIO) rather than hiding the entry."""
        try:
            return self.attributes(node)
        except CorruptShard:
            array = self._array_or_gone(node.array)
            shard_key = self.shards.shard_key(node.array, array, array.shard_of(node.coords))
            return Attributes.of(self.store.stat(shard_key)).as_file(0)

    def open(self, node: Node) -> FileRange | Bytes:
        if isinstance(node, Chunk):
            return self._open_chunk(node)
        if isinstance(node, ArrayMetadata):
            array = self._array_or_gone(node.array)
            return Bytes(array.view_bytes(), version(self.arrays.metadata_stat(node.array)))
        if isinstance(node, StatusFile):
            return Bytes(self.status_text().encode(), ())
        if isinstance(node, Plain):
            fd = self.store.open(node.path)
            st = os.fstat(fd)
            return FileRange(fd, 0, 2**63 - 1, version(st))
        raise OSError(errno.EISDIR, node.path)

    def _open_chunk(self, node: Chunk) -> FileRange:
        for _ in range(3):
            location = self._locate_or_gone(node)
            fd = self.store.open(location.shard_key)
            if version(os.fstat(fd)) == version(location.shard_stat):
                return FileRange(fd, location.offset, location.length, location.version)
            os.close(fd)  # replaced between our index read and the open: look again
        raise OSError(errno.EAGAIN, f"shard {location.shard_key} keeps changing")

    def readlink(self, node: Node) -> str:
        if not isinstance(node, Plain):
            raise OSError(errno.EINVAL, node.path)
        return self.store.readlink(node.path)

    def _array_or_gone(self, array_key: str) -> ShardedArray:
        array = self.arrays.sharded(array_key)
        if array is None:
            raise OSError(errno.ENOENT, f"{array_key} is no longer a sharded array")
        return array

    def _locate_or_gone(self, node: Chunk):
        array = self._array_or_gone(node.array)
        location = self.shards.locate(node.array, array, node.coords)
        if location is None:
            raise OSError(errno.ENOENT, f"{node.path} is no longer present")
        return location
