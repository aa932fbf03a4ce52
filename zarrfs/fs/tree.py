"""The mounted tree: one model of what the mount shows, independent of FUSE.

Every view path maps to a node:

    Plain          a backing path (file, directory, symlink); a directory that
                   holds Zarr metadata is presented by its view (fs/views.py),
                   looked up on every use since metadata can arrive at any time
    MetadataFile   a metadata file made by the view
    KeyDir         a directory level of chunk keys (``c``, ``c/3`` under ``/`` keys)
    Chunk          one present inner chunk: a byte range of a shard, or a
                   MemFile of the write buffer (fs/overlay.py) until repacked
    Scratch        a file written beside chunks that is not a chunk (temporary
                   files, locks): lives in the write buffer
    ControlDir     the hidden ``.zarrfs`` directory, and StatusFile in it

Nodes are plain values (a path and what it means); everything they show is
looked up again, in the write buffer first and then in the backing store, so a
node never goes stale in a way that serves wrong bytes.
"""

from __future__ import annotations

import bisect
import errno
import math
import os
import stat
import time
from dataclasses import dataclass, replace
from typing import Callable

import crc32c
import numpy as np

from ..format.keys import parse_index
from ..format.shard_index import CHECKSUM_NBYTES, CorruptShard
from ..store.base import FileChanged, SharedFile, Stat, Store
from ..store.local import is_temporary, zarrfs_own
from .overlay import MemFile, Overlay, chunk_name, scratch_name
from .lru import LRU
from .shards import ChunkLocation, ChunksUnder, Shards, join, version
from .views import DirView, Views

LISTED_CHUNKS_KEPT = 1 << 17  # chunks of the rows of shards whose listings are kept (~20 MiB)
UNREACHABLE_LISTED = 1 << 16  # indices listed for a key directory that cannot be read
CONTROL_DIR = ".zarrfs"  # at the mount root: shadows a store's own .zarrfs there (documented)
STATUS_FILE = "status"
STATUS_PAGE = 4096


@dataclass(frozen=True, slots=True)
class Node:
    path: str  # view path relative to the mount root, "" for the root


@dataclass(frozen=True, slots=True)
class Plain(Node):
    pass


@dataclass(frozen=True, slots=True)
class MetadataFile(Node):
    dir: str
    name: str


@dataclass(frozen=True, slots=True)
class KeyDir(Node):
    array: str
    parts: tuple[str, ...]  # key components below the array directory


@dataclass(frozen=True, slots=True)
class Chunk(Node):
    array: str
    coords: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Scratch(Node):
    array: str


@dataclass(frozen=True, slots=True)
class Replaced(Node):
    """What a name meant before a rename replaced it: still open somewhere, nameless."""


@dataclass(frozen=True, slots=True)
class ControlDir(Node):
    pass


@dataclass(frozen=True, slots=True)
class StatusFile(Node):
    pass


@dataclass(frozen=True, slots=True)
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
    def of(cls, st: Stat) -> Attributes:
        return cls(st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size, st.st_blocks,
                   st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)

    def as_file(self, size: int, mode: int | None = None) -> Attributes:
        """A regular file of ``size`` bytes with these owners and times."""
        perms = stat.S_IMODE(self.mode if mode is None else mode)
        return Attributes(stat.S_IFREG | perms, 1, self.uid, self.gid, size, -(-size // 512),
                          self.atime_ns, self.mtime_ns, self.ctime_ns)  # not replace(): lookups are hot

    @classmethod
    def of_memfile(cls, f: MemFile) -> Attributes:
        """A buffered file's attributes; its links are its names (0 once unlinked, still open)."""
        size = len(f.data)
        return cls(f.mode, len(f.names), f.uid, f.gid, size, -(-size // 512), f.atime_ns, f.mtime_ns, f.ctime_ns)

    def as_directory(self) -> Attributes:
        return replace(self, mode=stat.S_IFDIR | stat.S_IMODE(self.mode), nlink=2, size=4096, blocks=8)


Entry = tuple  # (name, Node, Attributes | None): one directory entry


@dataclass(frozen=True, slots=True)
class ChunkRun:
    """The stored chunks one directory lists, computed at once from the indexes of its shards:
    a listing of thousands of chunks makes no node or Attributes per chunk (readdir fills one
    reply entry from these; ``entry(i)`` is the usual Entry)."""

    dir: str  # view path of the directory
    array: str
    names: list[bytes]
    coords: np.ndarray  # (n, ndim) chunk coordinates
    linear: list[int] | None  # each chunk's index in the chunk grid, C order (None: past int64)
    sizes: list[int]
    blocks: list[int]  # of 512 bytes, what du counts
    ends: list[int]  # shard by shard: where its chunks end
    shards: list[Attributes]  # shard by shard: its attributes, as a file of size 0

    def __len__(self) -> int:
        return len(self.names)

    def shard_of(self, i: int) -> tuple[Attributes, int]:
        """The attributes of chunk ``i``'s shard, and where that shard's chunks end."""
        shard = bisect.bisect_right(self.ends, i)
        return self.shards[shard], self.ends[shard]

    def node(self, i: int) -> Chunk:
        return Chunk(join(self.dir, os.fsdecode(self.names[i])), self.array, tuple(self.coords[i].tolist()))

    def entry(self, i: int) -> Entry:
        return os.fsdecode(self.names[i]), self.node(i), replace(self.shard_of(i)[0], size=self.sizes[i],
                                                                   blocks=self.blocks[i])


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory's entries: ``entries`` one by one, then the chunks of ``runs``."""

    entries: list[Entry]
    runs: list[ChunkRun] = ()

    def expanded(self) -> list[Entry]:
        return self.entries + [run.entry(i) for run in self.runs for i in range(len(run))]


class FileRange:
    """An open chunk or plain file: a byte range of one version of a backing file, read
    through a descriptor shared by every open file of that version (Store.share)."""

    def __init__(self, shared: SharedFile, offset: int, length: int, version: tuple):
        self.shared, self.offset, self.length, self.version = shared, offset, length, version

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.length - offset))
        return self.shared.pread(size, self.offset + offset) if size else b""

    def close(self) -> None:
        self.shared.release()


class Bytes:
    """An open file whose content zarrfs makes (view metadata, status)."""

    def __init__(self, data: bytes, version: tuple):
        self.data, self.version = data, version

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        pass


class FetchedChunk:
    """An open chunk of an object store, which keeps no old version for who has a file
    open: the chunk's bytes, fetched whole once. The daemon fetches them in a worker
    thread (``fetch``), so that many readers' requests wait on the server together."""

    def __init__(self, store: Store, location: ChunkLocation):
        self.store, self.location, self.version = store, location, location.version
        self.data: bytes | None = None

    def fetch_cached(self) -> None:
        """The bytes, if the store has them without a request (a whole small shard)."""
        where = self.location
        cached = getattr(self.store, "cached_range", None)
        if where.length and cached is not None:
            self.data = cached(where.shard_key, version(where.shard_stat), where.length, where.offset)

    def fetch(self) -> None:
        """Raises FileChanged if the shard was replaced since it was located."""
        if self.data is not None:
            return
        where = self.location
        self.data = self.store.pread_version(where.shard_key, version(where.shard_stat), where.length,
                                             where.offset) if where.length else b""

    def read(self, offset: int, size: int) -> bytes:
        if self.data is None:
            self.fetch()
        return self.data[offset : offset + size]

    def close(self) -> None:
        self.data = None


class MemContent:
    """An open file of the write buffer."""

    def __init__(self, memfile: MemFile, writable: bool = False, created: bool = False):
        self.memfile, self.writable = memfile, writable
        memfile.handles += 1
        if writable:
            memfile.open_for_writing(created)

    @property
    def version(self) -> tuple:
        return ("memory", id(self.memfile), self.memfile.generation)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.memfile.data[offset : offset + size])

    def close(self) -> None:
        self.memfile.handles -= 1
        if self.writable:
            self.memfile.close_for_writing()


class ViewTree:
    """What the mount shows (the v3 or the v2 view), computed from the backing store."""

    def __init__(self, store: Store, view: str = "v3", status_text: Callable[[], str] = lambda: ""):
        self.store = store
        self.views = Views(store, view)
        self.shards = Shards(store)
        self.overlay = Overlay()
        self.status_text = status_text
        # The stored chunks of the key directories of one row of shards, made at once and kept
        # while those shards' versions stay: find and ls -R list the directories of a row one
        # after another (see _row_of_runs).
        self._rows_of_runs: LRU[tuple] = LRU(LISTED_CHUNKS_KEPT, weight=lambda kept: sum(map(len, kept[2].values())))

    # -- navigation ---------------------------------------------------------

    def root(self) -> Node:
        return Plain("")

    def lookup(self, parent: Node, name: str) -> Node | None:
        """The child ``name`` of ``parent``, or None if there is none."""
        if isinstance(parent, Plain) and parent.path == "" and name == CONTROL_DIR:
            return ControlDir(CONTROL_DIR)
        if isinstance(parent, ControlDir):
            return StatusFile(join(parent.path, STATUS_FILE)) if name == STATUS_FILE else None
        if zarrfs_own(name):
            return None
        scratch_path = join(parent.path, name)
        if scratch_path in self.overlay.scratch:
            return Scratch(scratch_path, self._array_of(parent))
        if isinstance(parent, KeyDir):
            view = self._array_view(parent.array)
            return self._key_lookup(parent.array, view, parent.parts + (name,)) if view else None
        view = self.views.of(parent.path)
        if view is None:
            return self._backing_child(parent.path, name)
        if name in view.metadata:
            return MetadataFile(join(parent.path, name), parent.path, name)
        if name in view.hidden:
            return None
        if view.keys and view.keys.decode_prefix((name,), view.array.ndim) is not None:
            return self._key_lookup(parent.path, view, (name,))
        if self._is_key(view, name):
            return None  # a backing shard key the view names otherwise (v3 "c" in the v2 view)
        return self._backing_child(parent.path, name)

    def resolve(self, path: str) -> Node | None:
        """The node at a view path, looked up component by component from the root."""
        node = self.root()
        for name in path.split("/") if path else []:
            node = self.lookup(node, name)
            if node is None:
                return None
        return node

    def children(self, node: Node) -> list[Entry]:
        """The entries of directory ``node``: ``(name, node, attributes or None)``."""
        return self.listing(node).expanded()

    def listing(self, node: Node) -> Listing:
        """The entries of directory ``node``, its stored chunks in runs (one per shard).

        Attributes are given where the listing knows them anyway (chunks: from
        the index just read), which spares a lookup per chunk; on an object store,
        every entry's (asked here, in the caller's worker thread, not one by one
        later on the daemon's loop).
        """
        listing = self._children(node)
        if self.store.capabilities.cheap_calls:
            return listing
        return Listing([self._with_attributes(entry) for entry in listing.entries], listing.runs)

    def _with_attributes(self, entry: Entry) -> Entry:
        name, node, attributes = entry
        if attributes is None:
            try:
                attributes = self.attributes(node)
            except (OSError, CorruptShard):  # gone since, or EIO: asked again (and answered so) when listed
                pass
        return name, node, attributes

    def _children(self, node: Node) -> Listing:
        if isinstance(node, ControlDir):
            return Listing([(STATUS_FILE, StatusFile(join(node.path, STATUS_FILE)), None)])
        scratch = [(n, Scratch(join(node.path, n), self._array_of(node)), Attributes.of_memfile(f))
                   for n, f in self.overlay.scratch_in(node.path).items()]
        if isinstance(node, KeyDir):
            view = self._array_view(node.array)
            keys = self._key_children(node.array, view, node.parts) if view else Listing([])
            return Listing(keys.entries + scratch, keys.runs)
        view = self.views.of(node.path)
        names = [n for n in self.store.listdir(node.path)
                 if not zarrfs_own(n) and not (n == CONTROL_DIR and node.path == "")]
        if view is None:
            return Listing([(n, Plain(join(node.path, n)), None) for n in names] + scratch)
        entries = [(n, Plain(join(node.path, n)), None)
                   for n in names if n not in view.hidden and n not in view.metadata and not self._is_key(view, n)]
        entries += [(n, MetadataFile(join(node.path, n), node.path, n), None) for n in view.metadata]
        keys = self._key_children(node.path, view, ()) if view.array is not None else Listing([])
        return Listing(entries + keys.entries + scratch, keys.runs)

    def _array_of(self, node: Node) -> str:
        """The array directory a node lies in ("" when it is not in an array's namespace)."""
        if isinstance(node, Plain):
            view = self.views.of(node.path)
            return node.path if view is not None and view.array is not None else ""
        return getattr(node, "array", "")

    @staticmethod
    def _is_key(view: DirView, name: str) -> bool:
        """Whether ``name`` lies in the array's chunk key namespace (backing or view)."""
        if view.array is None:
            return False
        ndim = view.array.ndim
        return any(k.decode_prefix((name,), ndim) is not None for k in (view.keys, view.array.key_encoding))

    def _backing_child(self, dir_key: str, name: str) -> Node | None:
        key = join(dir_key, name)
        try:  # (a writer's temporary beside chunks is looked up, created, renamed: one lstat serves)
            self.store.recent_stat(key, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Plain(key)

    # -- the chunk key namespace of an array --------------------------------
    # View names (parts, view.keys) map to chunk coordinates; backing shard
    # keys use the array's own encoding (view.array.key_encoding).

    def _key_lookup(self, array_key: str, view: DirView, parts: tuple[str, ...]) -> Node | None:
        array = view.array
        coords = view.keys.decode_prefix(parts, array.ndim)
        if coords is None:
            return None
        path = join(array_key, *parts)
        if len(parts) == view.keys.depth(array.ndim):
            if not array.in_grid(coords):
                return None
            name = chunk_name(array_key, coords)
            if self.overlay.has(name):
                present = self.overlay.get(name) is not None
            else:
                present = self.shards.locate(array_key, array, coords) is not None
            return Chunk(path, array_key, coords) if present else None
        if any(i >= n for i, n in zip(coords, array.chunk_grid)):
            return None
        if (path in self.overlay.directories or self._written_under(array_key, coords)
                or (path not in self.overlay.removed_directories
                    and (self._stored_under(array_key, view, coords) or self._made_in_store(path)))):
            return KeyDir(path, array_key, parts)
        return None

    def _made_in_store(self, key: str) -> bool:
        """A directory made in the store at a key directory's path before the array's
        metadata came (``cp -r`` copies in any order): it holds no shards, only what
        zarrfs staged there, or directories made so, or nothing: no shard file at any depth.
        (A shard directory of the same name is another thing: the key directory ``c/1`` of
        chunk row 1 is not the shards' row ``c/1``; nor is one whose first shard is being
        written, holding only that shard's temporary.)"""
        try:
            entries = self.store.scan(key)
        except OSError:
            return False
        return all(not is_temporary(name) and (zarrfs_own(name) or parse_index(name) is None
                                               or (is_dir and self._made_in_store(join(key, name))))
                   for name, is_dir in entries)

    def _stored_under(self, array_key: str, view: DirView, coords: tuple[int, ...]) -> bool:
        """Whether the store holds a chunk under a key directory. Not merely a shard whose
        region covers it: ``cp -r`` of a large array into the mount makes each key
        directory with mkdir, which must not meet one the view showed as soon as a
        neighbouring row's shard was repacked (EEXIST, and cp skips its chunks).

        On an object store, "yes" may come from listings up to a minute old and from
        indexes read before (shards whose versions are named by every read, so a
        change shows when read), asking first the shards whose index is known; "no" is
        asked again of fresh listings."""
        tries = (False,) if self.store.capabilities.cheap_calls else (True, False)
        return any(self._stored_under_as_known(array_key, view, coords, known) for known in tries)

    def _stored_under_as_known(self, array_key: str, view: DirView, coords: tuple[int, ...], known: bool) -> bool:
        if not self._is_backing_dir(self._shard_dir(array_key, view, coords), known):
            return False
        if not coords:
            return True
        array = view.array
        shards = self._shards_below(array_key, view, array.shard_of(coords), known)
        if known:
            shards.sort(key=lambda shard: not self.shards.index_known(array_key, array, shard))
        return any(len(self._stored_in(array_key, array, shard, coords)) for shard in shards)

    def _stored_indices(self, array_key: str, view: DirView, coords: tuple[int, ...]) -> set[int]:
        """Indices along the next axis under the chunk-coordinate prefix ``coords`` at which
        the store holds a chunk (every index a corrupt shard may hold: its chunks are EIO)."""
        array = view.array
        shards = self._shards_below(array_key, view, array.shard_of(coords))
        self.shards.prefetch(array_key, array, shards)
        return self.shards.indices_under(array_key, array, shards, coords)

    def _stored_in(self, array_key: str, array, shard: tuple[int, ...], coords: tuple[int, ...]) -> np.ndarray:
        """Coordinates of the chunks ``shard`` holds under the chunk-coordinate prefix ``coords``."""
        present = self.shards.present_chunks(array_key, array, shard)
        return present[np.all(present[:, : len(coords)] == np.array(coords, dtype=np.int64), axis=1)]

    def _is_backing_dir(self, key: str, known: bool = False) -> bool:
        """(``known``: a "yes" may come from an older listing, ObjectStore.versioned_stat.)"""
        try:
            st = self.shards.known_stat(key) if known else self.store.recent_stat(key)
            return stat.S_ISDIR(st.st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:  # there but unreachable (a symlink out of the store): its chunks are EIO
            return True

    def _written_under(self, array_key: str, prefix: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Coordinates of chunks in the write buffer under a coordinate prefix."""
        return [c for c, f in self.overlay.chunks_of(array_key).items()
                if f is not None and c[: len(prefix)] == prefix]

    def _key_children(self, array_key: str, view: DirView, parts: tuple[str, ...]) -> Listing:
        array = view.array
        depth = view.keys.depth(array.ndim)
        if depth == 1:  # every key is a file name in the array directory
            return self._chunk_entries(array_key, view, self._shards_below(array_key, view), array_key)
        if view.keys.name == "default" and not parts:
            return Listing(self._listed_dirs(array_key, view, [("c",)]))
        coords = view.keys.decode_prefix(parts, array.ndim) if parts else ()
        axis = len(coords)
        if len(parts) + 1 == depth:
            shard_prefix = array.shard_of(coords)
            shard_indices = self._listed_indices(self._shard_dir(array_key, view, coords), array.shard_grid[axis])
            shards = [shard_prefix + (s,) for s in shard_indices]
            return self._chunk_entries(array_key, view, shards, join(array_key, *parts), leaf_of=coords)
        indices = self._stored_indices(array_key, view, coords)
        indices |= {c[axis] for c in self._written_under(array_key, coords)}
        here = join(array_key, *parts)
        made = {os.path.basename(d) for d in self.overlay.directories if os.path.dirname(d) == here}
        made |= {name for name in self._store_names(here) if self._made_in_store(join(here, name))}
        holding = {str(i) for i in indices}
        names = sorted(holding | made, key=lambda n: (len(n), n))
        return Listing(self._listed_dirs(array_key, view, [parts + (n,) for n in names], holding))

    def _listed_dirs(self, array_key, view, children: list[tuple[str, ...]], holding=frozenset()) -> list[Entry]:
        """Key directories ``children`` that show. ``holding``: names of those under which the
        store or the write buffer holds a chunk, which show unless removed through the mount
        (no need to look each one up: listing a row of a million chunks would ask every shard)."""
        removed = self.overlay.removed_directories
        nodes = (KeyDir(path, array_key, parts)
                 if parts[-1] in holding and (path := join(array_key, *parts)) not in removed
                 else self._key_lookup(array_key, view, parts) for parts in children)
        return [(node.parts[-1], node, None) for node in nodes if node is not None]

    def _chunk_entries(self, array_key, view, shards, dir_path: str, leaf_of: tuple[int, ...] = ()) -> Listing:
        """The present chunks of ``shards`` (those under ``leaf_of``), listed in ``dir_path``
        with their attributes: the listing has read the indexes already. Chunks of the write
        buffer are entries of their own; the stored ones, one run."""
        array = view.array
        entries, buffered = [], []  # (the write buffer's chunks hide stored ones: written or deleted)
        for coords, memfile in self.overlay.chunks_of(array_key).items():
            if not array.in_grid(coords) or coords[: len(leaf_of)] != leaf_of:
                continue
            buffered.append(coords)
            if memfile is not None:
                parts = view.keys.components(coords)
                entries.append((parts[-1], Chunk(join(array_key, *parts), array_key, coords),
                                Attributes.of_memfile(memfile)))
        self.shards.prefetch(array_key, array, shards)
        if leaf_of and not buffered:
            runs = self._row_of_runs(array_key, view, shards, leaf_of)
            if runs is not None:
                return Listing(entries, [runs[leaf_of[-1]]] if leaf_of[-1] in runs else [])
        buffered = np.array(buffered, dtype=np.int64).reshape(len(buffered), array.ndim)
        stored, corrupt = self.shards.chunks_under(array_key, array, shards, leaf_of)
        for listing in corrupt:  # listed (so that cp -r fails) without attributes: looking them up is EIO
            coords = listing.coords[_unbuffered(listing.coords, buffered)]
            names = view.keys.last_components(coords)
            entries += [(os.fsdecode(name), Chunk(join(dir_path, os.fsdecode(name)), array_key, tuple(c)), None)
                        for name, c in zip(names, coords.tolist())]
        keep = _unbuffered(stored.coords, buffered)
        shard = np.repeat(np.arange(len(stored.counts)), stored.counts)[keep]
        run = self._chunk_run(array_key, view, dir_path, stored, keep, shard, _shard_attributes(stored))
        return Listing(entries, [run] if run is not None else [])

    def _row_of_runs(self, array_key, view, shards, leaf_of: tuple[int, ...]) -> dict[int, ChunkRun] | None:
        """The stored chunks of each key directory beside ``leaf_of`` that ``shards`` (a row
        of shards) hold, by its last coordinate: made at once (one numpy step over the row's
        indexes) and kept while the shards' versions stay. None when a shard is corrupt, or
        when the row could hold more chunks than are kept (each directory is listed alone)."""
        array = view.array
        head, axis = leaf_of[:-1], len(leaf_of) - 1
        if len(shards) * math.prod(array.chunks_per_shard[axis:]) > LISTED_CHUNKS_KEPT:
            return None
        try:
            versions = [self.shards.version_of(array_key, array, shard) for shard in shards]
        except CorruptShard:
            return None
        key = (array_key, head, array.shard_of(leaf_of)[-1])
        cached = self._rows_of_runs.get(key)
        if cached is not None and cached[0] is view and cached[1] == (shards, versions):
            return cached[2]
        stored, corrupt = self.shards.chunks_under(array_key, array, shards, head)
        if corrupt:
            return None
        order = np.argsort(stored.coords[:, axis], kind="stable")  # by key directory, each by shard
        shard = np.repeat(np.arange(len(stored.counts)), stored.counts)[order]
        rows, starts = np.unique(stored.coords[order, axis], return_index=True)
        bounds = starts.tolist() + [len(order)]
        attributes = _shard_attributes(stored)
        runs = {}
        for row, start, stop in zip(rows.tolist(), bounds, bounds[1:]):
            parts = view.keys.components(head + (row,) + (0,) * (array.ndim - axis - 1))[:-1]
            runs[row] = self._chunk_run(array_key, view, join(array_key, *parts), stored, order[start:stop],
                                        shard[start:stop], attributes)
        self._rows_of_runs.put(key, (view, (shards, versions), runs))
        return runs

    @staticmethod
    def _chunk_run(array_key, view, dir_path, stored: ChunksUnder, which, shard: np.ndarray,
                   attributes: list[Attributes]) -> ChunkRun | None:
        """The run of the ``which`` stored chunks (a mask or indices, kept in shard order; ``shard``:
        each one's shard, an index into ``stored.stats`` and ``attributes``)."""
        coords = stored.coords[which]
        if not len(coords):
            return None
        sizes = np.maximum(stored.nbytes[which] - (CHECKSUM_NBYTES if view.strip_crc else 0), 0)
        ends = np.cumsum(np.bincount(shard, minlength=len(stored.counts))).tolist()
        return ChunkRun(dir_path, array_key, view.keys.last_components(coords), coords,
                        grid_indices(coords, view.array.chunk_grid), sizes.tolist(), (-(-sizes // 512)).tolist(),
                        ends, attributes)

    def _shards_below(self, array_key: str, view: DirView, prefix: tuple[int, ...] = (),
                      known: bool = False) -> list[tuple[int, ...]]:
        """Shard coordinates of every shard file of the array under a shard-coordinate
        prefix, wherever the backing keys put them (a v3 ``c/5`` is the v2 view's ``5``).
        ``known``: from listings up to a minute old (ObjectStore.versioned_listdir), for a
        caller that only takes a "yes" from them."""
        array = view.array
        encoding = array.key_encoding
        listdir = self._known_listdir if known else self.store.listdir
        if encoding.depth(array.ndim) == 1:  # every shard is a file in the array directory
            decoded = (encoding.decode_prefix((n,), array.ndim) for n in listdir(array_key))
            return [c for c in decoded if c is not None and c[: len(prefix)] == prefix
                    and all(i < n for i, n in zip(c, array.shard_grid))]
        shards = [prefix]
        for axis in range(len(prefix), array.ndim):  # one directory level per axis under "c"
            shards = [prefix + (i,) for prefix in shards for i in self._listed_indices(
                join(array_key, *encoding.prefix_components(prefix)), array.shard_grid[axis], listdir)]
        return shards

    def _known_listdir(self, key: str) -> list[str]:
        versioned = getattr(self.store, "versioned_listdir", None)
        return versioned(key) if versioned is not None else self.store.listdir(key)

    def _store_names(self, key: str) -> list[str]:
        try:
            return self.store.listdir(key)
        except OSError:
            return []

    def _listed_indices(self, key: str, bound: int, listdir=None) -> list[int]:
        try:
            listed = (listdir or self.store.listdir)(key)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:  # unreachable (a symlink out of the store): every shard may be there, and is EIO
            if bound > UNREACHABLE_LISTED:
                raise
            return list(range(bound))
        return sorted(i for i in map(parse_index, listed) if i is not None and i < bound)

    def _shard_dir(self, array_key: str, view: DirView, coords: tuple[int, ...]) -> str:
        """The backing directory of the shards under a chunk-coordinate prefix."""
        array = view.array
        return join(array_key, *array.key_encoding.prefix_components(array.shard_of(coords)))

    # -- attributes and content --------------------------------------------

    def attributes(self, node: Node) -> Attributes:
        if isinstance(node, Replaced):
            raise FileNotFoundError(errno.ENOENT, f"{node.path} was replaced")
        return self._attributes(node)

    def _attributes(self, node: Node) -> Attributes:
        """Raises OSError (e.g. ENOENT when the node has gone) or CorruptShard."""
        if isinstance(node, Plain):
            return Attributes.of(self.store.lstat(node.path))
        if isinstance(node, MetadataFile):
            data, source = self._metadata_or_gone(node)
            return Attributes.of(self.store.recent_stat(join(node.dir, source))).as_file(len(data))
        if isinstance(node, KeyDir):
            return Attributes.of(self.store.recent_stat(node.array)).as_directory()
        if isinstance(node, (Chunk, Scratch)) and self._memfile(node) is not None:
            return Attributes.of_memfile(self._memfile(node))
        if isinstance(node, Scratch):
            raise OSError(errno.ENOENT, node.path)
        if isinstance(node, Chunk):
            view, location = self._locate_or_gone(node)
            size = location.length - (CHECKSUM_NBYTES if view.strip_crc else 0)
            return Attributes.of(location.shard_stat).as_file(max(size, 0))
        if isinstance(node, ControlDir):
            return Attributes.of(self.store.stat("")).as_directory()
        if isinstance(node, StatusFile):
            # Its mtime is now, so that a kernel that caches its pages drops them.
            root = Attributes.of(self.store.stat(""))
            return replace(root.as_file(len(self._status_bytes()), mode=0o444), mtime_ns=time.time_ns())
        raise TypeError(node)

    def open(self, node: Node) -> FileRange | Bytes | MemContent:
        """Content to read ``node`` from."""
        memfile = self._memfile(node)
        if memfile is not None:
            return MemContent(memfile)
        if isinstance(node, Scratch):
            raise OSError(errno.ENOENT, node.path)
        if isinstance(node, Chunk):
            return self._open_chunk(node)
        if isinstance(node, MetadataFile):
            data, _ = self._metadata_or_gone(node)
            return Bytes(data, (hash(data),))
        if isinstance(node, StatusFile):
            return Bytes(self._status_bytes(), ())
        if isinstance(node, Plain):
            shared = self.store.share(node.path)
            return FileRange(shared, 0, 2**63 - 1, shared.version)
        raise OSError(errno.EISDIR, node.path)

    def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes of ``node`` without an open file (a kernel that sends no OPEN)."""
        if isinstance(node, Chunk) and self._memfile(node) is None:
            view = self._array_view(node.array)
            if view is not None and not view.strip_crc:
                return self._chunk_bytes(node, offset, size)[0]
        content = self.open(node)
        try:
            return content.read(offset, size)
        finally:
            content.close()

    def _chunk_bytes(self, node: Chunk, offset: int, size: int) -> tuple[bytes, ChunkLocation]:
        """``size`` bytes at ``offset`` of the chunk's stored bytes as its shard holds them
        now, and where they are."""
        for _ in range(3):
            _, location = self._locate_or_gone(node)
            size = max(0, min(size, location.length - offset))
            try:
                data = self.store.pread_version(location.shard_key, version(location.shard_stat), size,
                                                location.offset + offset) if size else b""
                return data, location
            except FileChanged:  # replaced since we last looked: look again
                self.store.forget_recent(location.shard_key)
        raise OSError(errno.EAGAIN, f"shard {location.shard_key} keeps changing")

    def _open_chunk(self, node: Chunk) -> FileRange | Bytes:
        view = self._array_view(node.array)
        if view is not None and view.strip_crc:
            return self._verified_without_crc(node)
        if not self.store.capabilities.cheap_calls:
            content = FetchedChunk(self.store, self._locate_or_gone(node)[1])
            content.fetch_cached()
            return content
        for _ in range(3):
            view, location = self._locate_or_gone(node)
            shared = self.store.share(location.shard_key, version(location.shard_stat))  # the reader keeps it
            if shared.version == version(location.shard_stat):
                return FileRange(shared, location.offset, location.length, location.version)
            shared.release()  # replaced since we last looked: look again
            self.store.forget_recent(location.shard_key)
        raise OSError(errno.EAGAIN, f"shard {location.shard_key} keeps changing")

    def _verified_without_crc(self, node: Chunk) -> Bytes:
        """The v2 view serves chunks without their trailing crc32c, once it matches."""
        data, location = self._chunk_bytes(node, 0, 2**63 - 1)
        body, stored = data[:-CHECKSUM_NBYTES], data[-CHECKSUM_NBYTES:]
        if len(data) < CHECKSUM_NBYTES or crc32c.crc32c(body).to_bytes(CHECKSUM_NBYTES, "little") != stored:
            raise CorruptShard(f"{node.path}: chunk crc32c mismatch")
        return Bytes(body, location.version)

    def _status_bytes(self) -> bytes:
        """The status, padded with spaces to whole pages: its counters change between the
        kernel's look at the size and its read, and a size that stays put keeps the
        JSON whole (a kernel reading without OPEN cannot be told to ignore the size)."""
        text = self.status_text().encode()
        return text.ljust(-(-len(text) // STATUS_PAGE) * STATUS_PAGE)

    def readlink(self, node: Node) -> str:
        if not isinstance(node, Plain):
            raise OSError(errno.EINVAL, node.path)
        return self.store.readlink(node.path)

    def forget_clean(self, memfile: MemFile) -> None:
        """A buffered chunk nobody holds open whose bytes are in its shard needs no memory."""
        # (a file with several names keeps them all: they are hard links of one file)
        if memfile.handles == 0 and len(memfile.names) == 1:
            for name in [n for n in memfile.names if n[0] == "chunk" and memfile.in_shard(n)]:
                self.overlay.forget(name)

    def _memfile(self, node: Node) -> MemFile | None:
        if isinstance(node, Chunk):
            return self.overlay.get(chunk_name(node.array, node.coords))
        if isinstance(node, Scratch):
            return self.overlay.get(scratch_name(node.path))
        return None

    def link_inode(self, node: Node) -> int | None:
        """The inode number all names of a hard-linked buffered file share, if ``node`` is one."""
        memfile = self._memfile(node)
        return memfile.inode if memfile is not None and len(memfile.names) > 1 else None

    def set_link_inode(self, node: Node, inode: int) -> None:
        memfile = self._memfile(node)
        if memfile is not None:
            memfile.inode = inode

    def chunk_grid(self, array_key: str) -> tuple[int, ...] | None:
        """Chunks per axis of the array at ``array_key``, if it is one the view presents."""
        view = self._array_view(array_key)
        return view.array.chunk_grid if view is not None else None

    def chunk_at(self, array_key: str, coords: tuple[int, ...]) -> Chunk | None:
        """The node of the chunk at ``coords``, named as the view names it now."""
        view = self._array_view(array_key)
        if view is None:
            return None
        return Chunk(join(array_key, *view.keys.components(coords)), array_key, coords)

    def _array_view(self, array_key: str) -> DirView | None:
        view = self.views.of(array_key)
        return view if view is not None and view.array is not None else None

    def _metadata_or_gone(self, node: MetadataFile) -> tuple[bytes, str]:
        """The file's bytes and the name of the backing metadata file they come from."""
        view = self.views.of(node.dir)
        if view is None or node.name not in view.metadata:
            raise OSError(errno.ENOENT, f"{node.path} is gone")
        return view.metadata[node.name], min(view.hidden)

    def _locate_or_gone(self, node: Chunk):
        view = self._array_view(node.array)
        if view is None:
            raise OSError(errno.ENOENT, f"{node.array} is no longer an array zarrfs presents")
        deleted = self.overlay.has(chunk_name(node.array, node.coords))
        location = None if deleted else self.shards.locate(node.array, view.array, node.coords)
        if location is None:
            raise OSError(errno.ENOENT, f"{node.path} is no longer present")
        return view, location


def grid_indices(coords: np.ndarray, grid: tuple[int, ...]) -> list[int] | None:
    """The C-order index in ``grid`` of each of ``coords`` (n, ndim); None for a grid of more
    chunks than int64 counts."""
    if math.prod(grid) >= 1 << 62:
        return None
    if not grid:  # a 0-d array's one chunk
        return [0] * len(coords)
    return np.ravel_multi_index(tuple(coords.T), grid).tolist()


def _shard_attributes(stored: ChunksUnder) -> list[Attributes]:
    """Each shard's attributes, as those of a file (of size 0): its chunks'."""
    return [Attributes.of(st).as_file(0) for st in stored.stats]


def _unbuffered(coords: np.ndarray, buffered: np.ndarray) -> np.ndarray:
    """Which of ``coords`` (n, ndim) are not among ``buffered`` (m, ndim)."""
    if not len(buffered) or not len(coords):
        return np.ones(len(coords), dtype=bool)
    return ~(coords[:, None, :] == buffered[None, :, :]).all(axis=2).any(axis=1)
