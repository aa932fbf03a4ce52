"""The repacker: dirty chunks of the write buffer become complete new shards.

A flush of one shard:
1. takes a snapshot of the shard's chunks in the write buffer (in the trio thread),
2. in a worker thread, under an advisory lock on the shard (other mounts of the
   same store, other nodes), reads the shard as it is *now*, replaces the
   written chunks, drops deleted ones and those outside the array, and writes
   the complete new shard beside the old one: ``fsync``, ``rename``, ``fsync``
   of the directory (``LocalStore.replace_durably``); a shard left without
   chunks is deleted,
3. marks what it wrote as clean, and forgets buffered chunks nobody holds open.

A failure keeps everything dirty and is retried; fsync and close report it.
When it happens is decided here: on fsync, after ``--flush-after`` seconds of
quiet, when dirty data passes ``--max-dirty``, and for everything at unmount.
"""

from __future__ import annotations

import errno
import logging

import crc32c
import numpy as np
import trio

from ..format.metadata import ArrayLayout
from ..format.shard_codec import read_chunks, write_shard
from ..format.shard_index import CHECKSUM_NBYTES, CorruptShard
from .overlay import MemFile, chunk_name
from .shards import join

log = logging.getLogger("zarrfs")

RETRY_SECONDS = 5.0
ShardId = tuple  # (array_key, shard_coords)


class Flusher:
    def __init__(self, tree, flush_after: float = 5.0, max_dirty: int = 256 << 20):
        self.tree = tree
        self.overlay = tree.overlay
        self.flush_after = flush_after
        self.max_dirty = max_dirty
        self.dirty: dict[ShardId, float] = {}  # shard -> time of its last change
        self.failures: dict[ShardId, tuple[float, OSError]] = {}
        self.flushes_done = 0
        self.flushes_failed = 0
        self.last_error: str | None = None
        self._locks: dict[ShardId, trio.Lock] = {}
        self._threads = trio.CapacityLimiter(2)
        self._dirty_bytes_cache = (-1.0, 0)
        self._written_since_count = 0

    # -- what changed --------------------------------------------------------

    def changed(self, memfile: MemFile, nbytes: int = 0) -> None:
        """Every chunk name of ``memfile`` has new content (``nbytes`` more of it)."""
        self._written_since_count += nbytes
        for name in memfile.names:
            if name[0] == "chunk":
                self.chunk_changed(name[1], name[2])

    def chunk_changed(self, array_key: str, coords: tuple[int, ...]) -> None:
        view = self.tree._array_view(array_key)
        if view is not None:
            self.dirty[(array_key, view.array.shard_of(coords))] = trio.current_time()

    def dirty_bytes(self) -> int:
        """At least the bytes of chunks not yet in shards. Writers ask on every write
        and a count walks the whole write buffer, so the last count plus what was
        written since serves until it could pass the limit, or for 0.25 s."""
        when, count = self._dirty_bytes_cache
        now = trio.current_time()
        estimate = count + self._written_since_count
        if now - when > 0.25 or estimate > self.max_dirty:
            estimate = self.overlay.dirty_bytes()
            self._dirty_bytes_cache = (now, estimate)
            self._written_since_count = 0
        return estimate

    # -- flushing ------------------------------------------------------------

    async def flush_memfile(self, memfile: MemFile) -> None:
        """Make every chunk name of ``memfile`` durable (fsync)."""
        for name in list(memfile.names):
            if name[0] == "chunk":
                await self.flush_array(name[1], only=name[2])

    async def flush_array(self, array_key: str, only: tuple[int, ...] | None = None) -> None:
        view = self.tree._array_view(array_key)
        shards = [s for (a, s) in list(self.dirty) if a == array_key]
        if only is not None and view is not None:
            shards = [s for s in shards if s == view.array.shard_of(only)]
        for shard in shards:
            await self.flush_shard(array_key, shard)

    async def flush_all(self) -> None:
        """Flush every dirty shard; raises the first failure after trying them all."""
        first_error = None
        for array_key, shard in list(self.dirty):
            try:
                await self.flush_shard(array_key, shard)
            except OSError as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    async def wait_for_room(self) -> None:
        """Writers wait while dirty data is over ``--max-dirty``: flush the oldest shards."""
        while self.dirty and self.dirty_bytes() > self.max_dirty:
            oldest = min(self.dirty, key=self.dirty.get)
            await self.flush_shard(*oldest)
            self._dirty_bytes_cache = (-1.0, 0)

    async def run(self) -> None:
        """Background task: flush shards quiet for ``--flush-after`` s; retry failures."""
        while True:
            await trio.sleep(min(1.0, max(self.flush_after / 4, 0.05)))
            now = trio.current_time()
            for shard_id, changed_at in list(self.dirty.items()):
                failed = self.failures.get(shard_id)
                if now - changed_at < self.flush_after or (failed and now - failed[0] < RETRY_SECONDS):
                    continue
                try:
                    await self.flush_shard(*shard_id)
                except OSError:
                    pass  # logged, kept dirty, retried

    async def flush_shard(self, array_key: str, shard: tuple[int, ...]) -> None:
        shard_id = (array_key, shard)
        async with self._locks.setdefault(shard_id, trio.Lock()):
            view = self.tree._array_view(array_key)
            if view is None:
                raise self._failed(shard_id, OSError(errno.EIO, f"{array_key} is no longer an array"))
            layout = view.array
            snapshot = {c: (f, f.generation if f else None) for c, f in self.overlay.chunks_of(array_key).items()
                        if layout.shard_of(c) == shard}
            replacements = {c: (self._stored_bytes(f, view.strip_crc) if f else None) for c, (f, _) in snapshot.items()}
            try:
                with self.tree.store.changing():
                    await trio.to_thread.run_sync(
                        self._repack, array_key, min(view.hidden), layout, shard, replacements,
                        limiter=self._threads)
            except OSError as error:
                raise self._failed(shard_id, error) from None
            self.flushes_done += 1
            self._commit(array_key, layout, shard, snapshot)

    @staticmethod
    def _stored_bytes(memfile: MemFile, add_crc: bool) -> bytes:
        data = bytes(memfile.data)
        return data + crc32c.crc32c(data).to_bytes(CHECKSUM_NBYTES, "little") if add_crc else data

    def _failed(self, shard_id: ShardId, error: OSError) -> OSError:
        self.failures[shard_id] = (trio.current_time(), error)
        self.flushes_failed += 1
        self.last_error = f"{shard_id[0]} shard {shard_id[1]}: {error}"
        log.error("flush of %s shard %s failed (kept in memory, will retry): %s", shard_id[0], shard_id[1], error)
        return error

    def _commit(self, array_key: str, layout: ArrayLayout, shard: tuple[int, ...], snapshot: dict) -> None:
        """What the flush wrote is clean; buffered chunks nobody holds are forgotten."""
        for coords, (memfile, generation) in snapshot.items():
            name = chunk_name(array_key, coords)
            current = self.overlay.get(name)
            if memfile is None:
                if self.overlay.has(name) and current is None:
                    self.overlay.forget(name)
                continue
            memfile.flushed_generation = max(memfile.flushed_generation, generation)
            if current is memfile and memfile.generation == generation and memfile.handles == 0:
                self.overlay.forget(name)
        still_dirty = any(layout.shard_of(c) == shard and (f is None or f.generation != f.flushed_generation)
                          for c, f in self.overlay.chunks_of(array_key).items())
        if not still_dirty:
            self.dirty.pop((array_key, shard), None)
            self.failures.pop((array_key, shard), None)

    # -- the repack itself (a worker thread) ----------------------------------

    def _repack(self, array_key, metadata_name, layout: ArrayLayout, shard, replacements: dict) -> None:
        store = self.tree.store
        shard_key = self.tree.shards.shard_key(array_key, layout, shard)
        with store.locked(join(array_key, metadata_name), shard_key):
            if not layout.is_sharded:  # an unsharded array (v2 view): each chunk is its own file
                if not layout.in_grid(shard) or (shard in replacements and replacements[shard] is None):
                    store.remove_durably(shard_key, up_to=array_key)
                elif shard in replacements:
                    store.replace_durably(shard_key, replacements[shard], like=join(array_key, metadata_name))
                return
            chunks = self._current_chunks(shard_key, layout)
            origin = np.array(shard) * layout.chunks_per_shard
            for coords, data in replacements.items():
                local = tuple(int(i) for i in np.array(coords) - origin)
                if data is None:
                    chunks.pop(local, None)
                else:
                    chunks[local] = data
            chunks = {local: data for local, data in chunks.items()
                      if layout.in_grid(tuple(int(i) for i in origin + local))}
            encoded = write_shard(layout, chunks)
            if encoded is None:
                store.remove_durably(shard_key, up_to=array_key)
            else:
                store.replace_durably(shard_key, encoded, like=join(array_key, metadata_name))

    def _current_chunks(self, shard_key: str, layout: ArrayLayout) -> dict:
        try:
            current = self.tree.store.read(shard_key)
        except FileNotFoundError:
            return {}
        try:
            return read_chunks(layout, current) if current else {}
        except CorruptShard as error:
            raise OSError(errno.EIO, f"cannot merge into corrupt shard {shard_key}: {error}") from None
