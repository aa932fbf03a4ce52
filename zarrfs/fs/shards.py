"""Reading sharded arrays from the backing store: metadata, indexes, chunk locations.

Indexes are read on demand (one read of the index range) and kept in an LRU
keyed by the shard's key *and* its version (inode, size and mtime; an ETag), so
a shard that another program rewrites is read again as soon as we see its new
attributes.
A corrupt shard is cached too: it is logged once per version, not per read.
"""

from __future__ import annotations

import errno
import logging
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..format.metadata import ArrayLayout
from ..format.shard_index import CorruptShard, IndexFormat, ShardIndex
from ..store.base import FileChanged, Stat, Store, file_version as version
from .lru import LRU

log = logging.getLogger("zarrfs")

SHARD_KEYS_KEPT = 1 << 16  # past it, the memo of shard keys starts again
LOCATIONS_KEPT = 4096  # chunk locations remembered between the requests about one chunk
PREFETCH_AT_ONCE = 16  # index requests of one listing waiting on an object store together


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


@dataclass(frozen=True)
class ChunkLocation:
    shard_key: str
    shard_stat: Stat
    offset: int
    length: int

    @property
    def version(self) -> tuple:
        return (version(self.shard_stat), self.offset, self.length)


@dataclass(frozen=True)
class ShardListing:
    coords: np.ndarray  # (n, ndim) global chunk coordinates
    nbytes: np.ndarray  # (n,) stored size of each chunk
    shard_stat: Stat | None
    corrupt: bool = False  # every chunk it may hold is listed; reading them is EIO


@dataclass(frozen=True)
class ChunksUnder:
    """The chunks several healthy shards hold under one coordinate prefix, shard after shard."""

    coords: np.ndarray  # (n, ndim) global chunk coordinates
    nbytes: np.ndarray  # (n,) stored size of each chunk
    counts: list[int]  # how many of them each shard holds
    stats: list[Stat]  # each shard's attributes, in the same order


class Shards:
    """Locates inner chunks in shards, reading and caching shard indexes."""

    def __init__(self, store: Store, cache_bytes: int = 64 << 20):
        self.store = store
        self._indexes: LRU[ShardIndex | CorruptShard] = LRU(cache_bytes, weight=_cache_weight)
        self._located: LRU[tuple[ArrayLayout, ChunkLocation]] = LRU(LOCATIONS_KEPT)
        self._keys: dict[tuple, str] = {}  # shard keys made before
        self._unusable: set[str] = set()  # shard keys that cannot be reached, logged once each
        self._pool: ThreadPoolExecutor | None = None  # index reads of a listing, on object stores
        # A shard's bytes are read only at the version its stat names, and a read of another
        # version fails (FileChanged: look again), so an object store may answer from an
        # older listing than other stats get (ObjectStore.versioned_stat).
        self.known_stat = getattr(store, "versioned_stat", store.recent_stat)

    @property
    def cache(self) -> LRU:
        return self._indexes

    def shard_key(self, array_key: str, array: ArrayLayout, shard_coords: tuple[int, ...]) -> str:
        # (asked for every shard of a row at every listing of one of its key directories)
        cache_key = (array_key, array.key_encoding, shard_coords)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) >= SHARD_KEYS_KEPT:
                self._keys.clear()
            key = self._keys[cache_key] = join(array_key, array.key_encoding.encode(shard_coords))
        return key

    def stat_shard(self, shard_key: str) -> Stat | None:
        """The shard's attributes, or None when there is no shard (all chunks absent).
        Something else at a shard key (a directory, a FIFO, a symlink) is returned too:
        reading its index fails, and its chunks are EIO, not absent (SPEC §7)."""
        try:
            return self.known_stat(shard_key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:  # e.g. a path through a symlink out of the store
            if shard_key not in self._unusable:
                self._unusable.add(shard_key)
                log.error("shard %s is corrupt: it cannot be reached (%s); its chunks read as EIO",
                          shard_key, error.strerror)
            raise CorruptShard(f"{shard_key} cannot be reached ({error.strerror})") from None

    def index_known(self, array_key: str, array: ArrayLayout, shard_coords: tuple[int, ...]) -> bool:
        """Whether the shard's (outermost) index is cached at the version known now."""
        shard_key = self.shard_key(array_key, array, shard_coords)
        try:
            st = self.stat_shard(shard_key)
        except CorruptShard:
            return False
        return st is not None and self._indexes.get((shard_key, version(st), 0, st.st_size)) is not None

    def locate(self, array_key: str, array: ArrayLayout, coords: tuple[int, ...]) -> ChunkLocation | None:
        """Where the chunk's bytes are, or None if it is absent. Raises CorruptShard."""
        known = self._located.get((array_key, coords))
        if known is not None and known[0] is array:  # a lookup, then its getattr, open or read
            st = self.stat_shard(known[1].shard_key)
            if st is not None and version(st) == version(known[1].shard_stat):
                return known[1]
        shard_key = self.shard_key(array_key, array, array.shard_of(coords))
        for _ in range(3):
            st = self.stat_shard(shard_key)
            if st is None:
                return None
            try:
                location = self._locate_in(shard_key, st, array, coords)
                if location is not None:
                    self._located.put((array_key, coords), (array, location))
                return location
            except FileChanged:
                self.store.forget_recent(shard_key)
                continue
        raise OSError(errno.EAGAIN, f"shard {shard_key} keeps changing")

    def _locate_in(self, shard_key, st, array, coords) -> ChunkLocation | None:
        region = (0, st.st_size)
        for depth, local in enumerate(array.local_coords(coords)):
            index = self.index(shard_key, st, array.levels[depth], region)
            region = index.chunk_range(local)
            if region is None:
                return None
        return ChunkLocation(shard_key, st, *region)

    def present_chunks(self, array_key: str, array: ArrayLayout, shard_coords: tuple[int, ...]) -> np.ndarray:
        """Global coordinates (n, ndim) of the chunks a shard holds, within the grid."""
        return self.shard_listing(array_key, array, shard_coords).coords

    def chunks_under(self, array_key: str, array: ArrayLayout, shards: list[tuple[int, ...]],
                     prefix: tuple[int, ...]) -> tuple[ChunksUnder, list[ShardListing]]:
        """What ``shard_listing`` says of each of ``shards`` under ``prefix``: the healthy
        shards' chunks together, and each corrupt shard's listing. For an array with one level
        of sharding, the index slabs of all of them in one numpy step (a directory of chunk
        keys lists one row of each shard of a row of shards)."""
        slabs, listings = [], []
        for shard_coords in shards:
            slab = self._slab(array_key, array, shard_coords, prefix) if len(array.levels) == 1 else None
            if slab is None:  # absent, corrupt, changing, nested: one by one
                listings.append(self.shard_listing(array_key, array, shard_coords, prefix))
            else:
                slabs.append(slab)
        healthy = [listing for listing in listings if listing.shard_stat is not None and not listing.corrupt]
        return _together(array, prefix, slabs, healthy), [listing for listing in listings if listing.corrupt]

    def indices_under(self, array_key: str, array: ArrayLayout, shards: list[tuple[int, ...]],
                      prefix: tuple[int, ...]) -> set[int]:
        """The indices along the axis after ``prefix`` at which ``shards`` hold a chunk under
        it (every index a corrupt shard may hold): the key directories of a key directory,
        from each shard's index slab without listing its chunks."""
        axis, found = len(prefix), set()
        for shard_coords in shards:
            slab = self._slab(array_key, array, shard_coords, prefix) if len(array.levels) == 1 else None
            if slab is None:
                found.update(self.shard_listing(array_key, array, shard_coords, prefix).coords[:, axis].tolist())
                continue
            # (only chunks within the grid on the later axes too: a shrinking resize leaves the
            # dropped ones in their shards, and a lookup does not count them)
            within = tuple(slice(0, max(0, n - s * per)) for s, per, n in zip(
                shard_coords[axis + 1:], array.chunks_per_shard[axis + 1:], array.chunk_grid[axis + 1:]))
            listed = slab[2][(slice(None),) + within]
            listed = listed.reshape(listed.shape[0], -1).any(axis=1)
            indices = np.flatnonzero(listed) + shard_coords[axis] * array.chunks_per_shard[axis]
            found.update(indices[indices < array.chunk_grid[axis]].tolist())
        return found

    def version_of(self, array_key: str, array: ArrayLayout, shard_coords: tuple[int, ...]) -> tuple | None:
        """The version of the shard as known now (None: no shard). Raises CorruptShard."""
        st = self.stat_shard(self.shard_key(array_key, array, shard_coords))
        return None if st is None else version(st)

    def _slab(self, array_key, array, shard_coords, prefix) -> tuple | None:
        """``(shard coords, stat, listed, sizes)`` of the index slab under ``prefix`` of a
        shard whose index is at hand; None when ``shard_listing`` must say (no shard, a corrupt
        one, one replaced since its stat, a prefix outside it)."""
        local_prefix = tuple(p - s * n for p, s, n in zip(prefix, shard_coords, array.chunks_per_shard))
        if not all(0 <= i < n for i, n in zip(local_prefix, array.chunks_per_shard)):
            return None
        shard_key = self.shard_key(array_key, array, shard_coords)
        try:
            st = self.stat_shard(shard_key)
            if st is None:
                return None
            index = self.index(shard_key, st, array.levels[0], (0, st.st_size))
        except (CorruptShard, FileChanged):
            return None
        return (shard_coords, st, *index.slab(local_prefix))

    def shard_listing(self, array_key: str, array: ArrayLayout, shard_coords: tuple[int, ...],
                      prefix: tuple[int, ...] = ()) -> ShardListing:
        """The chunks a shard holds (within the grid) under the chunk-coordinate prefix
        ``prefix`` (all of them if it is empty), with their sizes, in C order.

        A chunk of a corrupt shard is listed whenever it may be there (size 0),
        so that reading it fails loudly (EIO) instead of looking absent.
        """
        shard_key = self.shard_key(array_key, array, shard_coords)
        corrupt = False
        for _ in range(3):
            try:
                st = self.stat_shard(shard_key)
            except CorruptShard:
                st, (local, nbytes), corrupt = None, _corrupt_listing(array.chunks_per_shard), True
                break
            if st is None:
                return ShardListing(np.empty((0, array.ndim), dtype=np.int64), np.empty(0, dtype=np.int64), None)
            try:
                local, nbytes = self._present_below(shard_key, st, array, 0, (0, st.st_size))
                break
            except FileChanged:
                self.store.forget_recent(shard_key)
            except CorruptShard:
                (local, nbytes), corrupt = _corrupt_listing(array.chunks_per_shard), True
                break
        else:
            raise OSError(errno.EAGAIN, f"shard {shard_key} keeps changing")
        coords = local + np.array(shard_coords, dtype=np.int64) * array.chunks_per_shard
        keep = np.all(coords < np.array(array.chunk_grid, dtype=np.int64), axis=1)
        if prefix:
            keep &= np.all(coords[:, : len(prefix)] == np.array(prefix, dtype=np.int64), axis=1)
        return ShardListing(coords[keep], nbytes[keep], st, corrupt)

    def _present_below(self, shard_key, st, array, depth, region) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates and sizes of the innermost chunks below ``region``."""
        if not array.is_sharded:  # the file is the one chunk
            return np.zeros((1, array.ndim), dtype=np.int64), np.array([st.st_size], dtype=np.int64)
        index = self.index(shard_key, st, array.levels[depth], region)
        present = index.present().astype(np.int64)
        if depth == len(array.levels) - 1:
            return present, index.present_nbytes()
        below = np.array(array.chunks_below(depth), dtype=np.int64)
        coords, sizes = [np.empty((0, array.ndim), dtype=np.int64)], [np.empty(0, dtype=np.int64)]
        for local in present:
            try:
                inner, nbytes = self._present_below(shard_key, st, array, depth + 1, index.chunk_range(tuple(local)))
            except CorruptShard:
                inner, nbytes = _corrupt_listing(tuple(below))
            coords.append(local * below + inner)
            sizes.append(nbytes)
        return np.concatenate(coords), np.concatenate(sizes)

    def prefetch(self, array_key: str, array: ArrayLayout, shards: list[tuple[int, ...]]) -> None:
        """On an object store, read the outermost indexes of ``shards`` that are not cached
        yet concurrently (one request each, PREFETCH_AT_ONCE at a time), so that listing a
        directory of N shards waits for about one request, not N in a row."""
        if self.store.capabilities.cheap_calls or not array.is_sharded:
            return
        wanted = []
        for coords in shards:
            shard_key = self.shard_key(array_key, array, coords)
            try:
                st = self.stat_shard(shard_key)
            except CorruptShard:
                continue
            if st is not None and st.is_file and self._indexes.get((shard_key, version(st), 0, st.st_size)) is None:
                wanted.append((shard_key, st))
        if len(wanted) < 2:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PREFETCH_AT_ONCE, thread_name_prefix="zarrfs-index")
        fmt = array.levels[0]
        read = lambda w: self._read_index_if_there(w[0], w[1], fmt, (0, w[1].st_size))  # noqa: E731
        with self.store.waiting():  # the reads are the pool's: let others go on meanwhile
            indexes = list(self._pool.map(read, wanted))
        for (shard_key, st), index in zip(wanted, indexes):
            if index is not None:
                self._indexes.put((shard_key, version(st), 0, st.st_size), index)

    def _read_index_if_there(self, shard_key, st, fmt: IndexFormat, region) -> ShardIndex | CorruptShard | None:
        try:
            return self._read_index(shard_key, st, fmt, region)
        except FileChanged:
            return None  # replaced since the listing: read when wanted

    def index(self, shard_key: str, st: Stat, fmt: IndexFormat, region: tuple[int, int]) -> ShardIndex:
        """The decoded index of the shard occupying ``region`` of the file. Raises CorruptShard."""
        cache_key = (shard_key, version(st)) + region
        cached = self._indexes.get(cache_key)
        if cached is None:
            cached = self._read_index(shard_key, st, fmt, region)
            self._indexes.put(cache_key, cached)
        if isinstance(cached, CorruptShard):
            raise cached
        return cached

    def _read_index(self, shard_key, st, fmt: IndexFormat, region) -> ShardIndex | CorruptShard:
        base, nbytes = region
        where = f"shard {shard_key}" + (f" (nested shard at byte {base})" if base or nbytes != st.st_size else "")
        try:
            if not stat.S_ISREG(st.st_mode):
                raise CorruptShard("not a regular file")
            offset = fmt.index_offset(nbytes)
            raw = self.store.pread_version(shard_key, version(st), fmt.nbytes, base + offset)
            index = fmt.decode(raw, nbytes, base)
        except FileNotFoundError:
            raise FileChanged(shard_key) from None  # deleted since the stat: look again
        except OSError as error:  # a symlink, or a path out of the store: never followed
            error = CorruptShard(f"cannot be read ({error.strerror})")
            log.error("%s is corrupt: %s; its chunks read as EIO", where, error)
            return error
        except CorruptShard as error:
            log.error("%s is corrupt: %s; its chunks read as EIO", where, error)
            return error
        if index.invalid_count():
            log.error("%s: %d index entries point outside the payload; those chunks read as EIO",
                      where, index.invalid_count())
        return index

def _cache_weight(entry) -> int:
    return entry.nbytes if isinstance(entry, ShardIndex) else 256


def _together(array: ArrayLayout, prefix: tuple[int, ...], slabs: list[tuple],
              listings: list[ShardListing]) -> ChunksUnder:
    """The chunks of index slabs (``Shards._slab``, all under ``prefix``), found with one
    ``nonzero`` over them stacked, then those of whole listings."""
    coords, nbytes, counts, stats = [np.empty((0, array.ndim), dtype=np.int64)], [np.empty(0, dtype=np.int64)], [], []
    if slabs:
        listed = np.stack([slab[2] for slab in slabs])  # (shards, the axes after the prefix...)
        found = np.nonzero(listed)
        origins = np.array([slab[0] for slab in slabs], dtype=np.int64) * array.chunks_per_shard
        at = np.empty((len(found[0]), array.ndim), dtype=np.int64)
        at[:, : len(prefix)] = prefix
        for axis, local in enumerate(found[1:], len(prefix)):
            at[:, axis] = origins[found[0], axis] + local
        inside = np.all(at < np.array(array.chunk_grid, dtype=np.int64), axis=1)
        coords.append(at[inside])
        nbytes.append(np.stack([slab[3] for slab in slabs])[listed][inside].astype(np.int64))
        counts += np.bincount(found[0][inside], minlength=len(slabs)).tolist()
        stats += [slab[1] for slab in slabs]
    for listing in listings:
        coords.append(listing.coords)
        nbytes.append(listing.nbytes)
        counts.append(len(listing.coords))
        stats.append(listing.shard_stat)
    return ChunksUnder(np.concatenate(coords), np.concatenate(nbytes), counts, stats)


def _corrupt_listing(chunks_per_shard: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk a corrupt shard may hold, with size 0."""
    local = _all_local(chunks_per_shard)
    return local, np.zeros(len(local), dtype=np.int64)


def _all_local(chunks_per_shard: tuple[int, ...]) -> np.ndarray:
    if not chunks_per_shard:  # a 0-d array: one chunk with no coordinates
        return np.zeros((1, 0), dtype=np.int64)
    grid = np.indices(chunks_per_shard).reshape(len(chunks_per_shard), -1).T
    return grid.astype(np.int64)
