"""The repacker: dirty chunks of the write buffer become complete new shards.

A flush of one shard:
1. takes a snapshot of the shard's chunks in the write buffer (in the trio thread),
2. in a worker thread, under an advisory lock on the shard (other mounts of the
   same store, other nodes), reads the shard as it is *now*, replaces the
   written chunks, drops deleted ones and those outside the array, and writes
   the complete new shard beside the old one: ``fsync``, ``rename``, ``fsync``
   of the directory (``Store.replace_durably``); a shard left without
   chunks is deleted,
3. marks what it wrote as clean, and forgets buffered chunks nobody holds open.

A failure keeps everything dirty and is retried; fsync and close report it.
When it happens is decided here: on fsync, after ``--flush-after`` seconds of
quiet, when dirty data passes ``--max-dirty``, and for everything at unmount. Past
half of ``--max-dirty`` the oldest shards are repacked in the background, so that a
large write goes on while its earlier shards are written (as the kernel starts
writeback at ``dirty_background_ratio``, before writers block at ``dirty_ratio``).
"""

from __future__ import annotations

import errno
import logging
import random
import time

import crc32c
import numpy as np
import trio

from ..format.metadata import ArrayLayout
from ..format.shard_codec import read_chunks, write_shard
from ..format.shard_index import CHECKSUM_NBYTES, CorruptShard
from ..store.base import ABSENT, Conflict
from .overlay import MemFile, chunk_name, is_below, moved_path
from .shards import join

log = logging.getLogger("zarrfs")

RETRY_SECONDS = 5.0
BACKGROUND_DIRTY = 0.5  # of --max-dirty: past it the oldest shards are repacked without waiting for quiet
MERGE_TRIES = 6  # a shard changed by another writer between our read and our write: merge again
MERGE_BACKOFF_SECONDS = 0.05  # doubled after each conflict, with jitter
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
        self._in_flight: dict[ShardId, int] = {}  # flushes between their snapshot and commit
        self._trimmed: set[ShardId] = set()  # to repack without chunks a shrink left outside the grid
        self._threads = trio.CapacityLimiter(2)
        self._dirty_bytes_cache = (-1.0, 0)
        self._written_since_count = 0
        self._clock_offset = 0.0  # trio's clock minus time.monotonic(), as last seen

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
            self.dirty[(array_key, view.array.shard_of(coords))] = self._now()

    def _now(self) -> float:
        """trio's clock, also in a worker thread (on an object store, a create runs in one)."""
        try:
            now = trio.current_time()
        except RuntimeError:  # not in the loop's thread
            return time.monotonic() + self._clock_offset
        self._clock_offset = now - time.monotonic()
        return now

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
        memfile.settle()
        self.changed(memfile)
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

    def repack_soon(self, shard_id: ShardId) -> None:
        """Repack this shard even with nothing buffered for it (a shrink left chunks outside)."""
        self._trimmed.add(shard_id)
        self.dirty[shard_id] = trio.current_time() - self.flush_after

    async def quiesce(self, directory: str) -> None:
        """Return once no flush of an array at or below ``directory`` is under way. The
        caller must not await before acting on it (a directory rename): no flush can
        start in between, as trio switches tasks only at awaits."""
        while any(is_below(array_key, directory) for array_key, _ in self._in_flight):
            await trio.sleep(0.01)

    def move_tree(self, old: str, new: str) -> None:
        """A directory was renamed: its arrays' dirty shards follow it."""
        self._trimmed = {(moved_path(a, old, new) if is_below(a, old) else a, s) for a, s in self._trimmed}
        for table in (self.dirty, self.failures, self._locks):
            for array_key, shard in [k for k in table if is_below(k[0], old)]:
                table[(moved_path(array_key, old, new), shard)] = table.pop((array_key, shard))

    def drop_tree(self, directory: str) -> None:
        """Arrays below ``directory`` are gone (an empty directory replaced by a rename)."""
        for table in (self.dirty, self.failures):
            for shard_id in [k for k in table if is_below(k[0], directory)]:
                del table[shard_id]
        self._trimmed = {k for k in self._trimmed if not is_below(k[0], directory)}

    def drop_orphans(self) -> None:
        """Forget dirty shards of arrays that are gone (their metadata was removed
        outside the mount): nothing can store them, and the exit must not wait forever."""
        for array_key in {a for a, _ in self.dirty if self.tree._array_view(a) is None}:
            lost = [c for c, f in self.overlay.chunks_of(array_key).items() if f is not None]
            log.critical("%s is no longer an array (its metadata was removed outside the mount): "
                         "%d buffered chunks cannot be stored and are dropped", array_key, len(lost))
            for coords in list(self.overlay.chunks_of(array_key)):
                self.overlay.forget(chunk_name(array_key, coords))
            for shard_id in [s for s in self.dirty if s[0] == array_key]:
                self.dirty.pop(shard_id)
                self.failures.pop(shard_id, None)

    async def wait_for_room(self) -> None:
        """Writers wait while dirty data is over ``--max-dirty``: flush the oldest shards.
        (A flush drops shards with nothing settled to store from ``dirty``: they come
        back when their files are closed, so this ends.)"""
        while self.dirty and self.dirty_bytes() > self.max_dirty:
            oldest = min(self.dirty, key=self.dirty.get)
            try:
                await self.flush_shard(*oldest)
            finally:
                self._dirty_bytes_cache = (-1.0, 0)

    async def run(self) -> None:
        """Background task: flush shards quiet for ``--flush-after`` s, and the oldest ones
        while dirty data is past ``BACKGROUND_DIRTY`` of ``--max-dirty``; retry failures."""
        while True:
            await trio.sleep(min(1.0, max(self.flush_after / 4, 0.05)))
            now = trio.current_time()
            for shard_id, changed_at in list(self.dirty.items()):
                if now - changed_at >= self.flush_after and not self._failed_lately(shard_id, now):
                    await self._flush_in_background(shard_id)
            while True:
                now = trio.current_time()
                ready = [s for s in self.dirty if not self._failed_lately(s, now)]
                if not ready or self.dirty_bytes() <= self.max_dirty * BACKGROUND_DIRTY:
                    break
                await self._flush_in_background(min(ready, key=self.dirty.get))
                self._dirty_bytes_cache = (-1.0, 0)

    def _failed_lately(self, shard_id: ShardId, now: float) -> bool:
        failed = self.failures.get(shard_id)
        return failed is not None and now - failed[0] < RETRY_SECONDS

    async def _flush_in_background(self, shard_id: ShardId) -> None:
        try:
            await self.flush_shard(*shard_id)
        except OSError:
            pass  # logged, kept dirty, retried
        except Exception:  # noqa: BLE001 - the background flusher must never die
            log.exception("flusher: internal error (kept dirty, retried)")

    async def flush_shard(self, array_key: str, shard: tuple[int, ...]) -> None:
        shard_id = (array_key, shard)
        async with self._locks.setdefault(shard_id, trio.Lock()):
            self._in_flight[shard_id] = self._in_flight.get(shard_id, 0) + 1
            try:
                await self._flush_locked(shard_id)
            except OSError:
                raise
            except Exception as error:  # a bug, or input nobody foresaw: keep the data, retry
                log.exception("flush of %s shard %s failed", array_key, shard)
                raise self._failed(shard_id, OSError(errno.EIO, f"internal error: {error!r}")) from None
            finally:
                self._in_flight[shard_id] -= 1
                if not self._in_flight[shard_id]:
                    del self._in_flight[shard_id]

    async def _flush_locked(self, shard_id: ShardId) -> None:
        array_key, shard = shard_id
        view = self.tree._array_view(array_key)
        if view is None:
            raise self._failed(shard_id, OSError(errno.EIO, f"{array_key} is no longer an array"))
        layout = view.array
        snapshot = self._snapshot(array_key, layout, shard)
        if not snapshot and shard_id not in self._trimmed:
            # only files still open and never closed: they come back when closed
            self.dirty.pop(shard_id, None)
            return
        replacements = {c: (data if data is None else self._stored_bytes(data, view.strip_crc))
                        for c, (_, data, _) in snapshot.items()}
        staged = self.overlay.staged.get(array_key, {})
        adopted = [staged[c] for c in snapshot if c in staged]  # superseded once the shard is stored
        try:
            await trio.to_thread.run_sync(self._repack, array_key, min(view.hidden), layout, shard,
                                          replacements, adopted, limiter=self._threads)
        except OSError as error:
            raise self._failed(shard_id, error) from None
        self.flushes_done += 1
        self._trimmed.discard(shard_id)
        # (the key directories above chunks removed through the mount were kept at their
        # unlink: Writer._keep_directories_above; a shrink's trim keeps none)
        self._commit(array_key, layout, shard, snapshot)

    def _snapshot(self, array_key: str, layout: ArrayLayout, shard: tuple[int, ...]) -> dict:
        """What to store of the shard's buffered chunks: coords -> (memfile, content, generation);
        a deleted chunk's memfile and content are None. Chunks whose settled content is in
        the shard already, or that have none yet (created, not closed), are left out."""
        snapshot = {}
        for coords, memfile in self.overlay.chunks_of(array_key).items():
            if layout.shard_of(coords) != shard:
                continue
            if memfile is None:
                snapshot[coords] = (None, None, None)
                continue
            flushable = memfile.flushable()
            if flushable is not None and flushable[1] != memfile.flushed.get(chunk_name(array_key, coords)):
                snapshot[coords] = (memfile, *flushable)
        return snapshot

    @staticmethod
    def _stored_bytes(data: bytes, add_crc: bool) -> bytes:
        return data + crc32c.crc32c(data).to_bytes(CHECKSUM_NBYTES, "little") if add_crc else data

    def _failed(self, shard_id: ShardId, error: OSError) -> OSError:
        self.failures[shard_id] = (trio.current_time(), error)
        self.flushes_failed += 1
        self.last_error = f"{shard_id[0]} shard {shard_id[1]}: {error}"
        log.error("flush of %s shard %s failed (kept in memory, will retry): %s", shard_id[0], shard_id[1], error)
        return error

    def _commit(self, array_key: str, layout: ArrayLayout, shard: tuple[int, ...], snapshot: dict) -> None:
        """What the flush wrote is clean; buffered chunks nobody holds are forgotten."""
        staged = self.overlay.staged.get(array_key, {})
        for coords, (memfile, _, generation) in snapshot.items():
            staged.pop(coords, None)
            name = chunk_name(array_key, coords)
            current = self.overlay.get(name)
            if memfile is None:
                if self.overlay.has(name) and current is None:
                    self.overlay.forget(name)
                continue
            if name in memfile.names:  # (renamed away meanwhile: its new name's shard is not this one)
                memfile.flushed[name] = max(memfile.flushed.get(name, -1), generation)
            if current is memfile and memfile.generation == generation and memfile.handles == 0 \
                    and len(memfile.names) == 1:  # (hard links keep their names)
                self.overlay.forget(name)
        if not self._snapshot(array_key, layout, shard):
            self.dirty.pop((array_key, shard), None)
            self.failures.pop((array_key, shard), None)

    # -- the repack itself (a worker thread) ----------------------------------

    def _repack(self, array_key, metadata_name, layout: ArrayLayout, shard, replacements: dict,
                adopted: list[str]) -> bool:
        """Returns whether the shard was removed (it holds no chunk any more)."""
        store = self.tree.store
        shard_key = self.tree.shards.shard_key(array_key, layout, shard)
        with store.locked(array_key, shard_key):
            removed = self._merge_until_stored(array_key, metadata_name, layout, shard, shard_key, replacements)
            store.remove_staged(adopted)  # their chunks are in the durable shard now
        return removed

    def _merge_until_stored(self, array_key, metadata_name, layout: ArrayLayout, shard, shard_key: str,
                            replacements: dict) -> bool:
        """Each write of the shard is conditional on the version its merge read: another
        writer (another node's mount, without locks on an object store) may have written
        it in between, and a plain overwrite would lose that writer's chunks. On conflict:
        read again, merge again, after a growing, jittered pause; EIO after MERGE_TRIES."""
        pause = MERGE_BACKOFF_SECONDS
        for _ in range(MERGE_TRIES - 1):
            try:
                return self._store_shard(array_key, metadata_name, layout, shard, shard_key, replacements)
            except Conflict:
                log.info("%s changed while it was repacked; merging again", shard_key)
                time.sleep(pause * (1 + random.random()))  # a worker thread
                pause *= 2
        try:
            return self._store_shard(array_key, metadata_name, layout, shard, shard_key, replacements)
        except Conflict:
            raise OSError(errno.EIO, f"{shard_key} kept changing under {MERGE_TRIES} merges") from None

    def _store_shard(self, array_key, metadata_name, layout: ArrayLayout, shard, shard_key: str,
                     replacements: dict) -> bool:
        store = self.tree.store
        if not layout.is_sharded:  # an unsharded array (v2 view): each chunk is its own file
            if not layout.in_grid(shard) or (shard in replacements and replacements[shard] is None):
                store.remove_durably(shard_key, up_to=array_key)
                return True
            if shard in replacements:
                store.replace_durably(shard_key, replacements[shard], like=join(array_key, metadata_name))
            return False
        chunks, version = self._current_chunks(shard_key, layout)
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
            if version is not ABSENT:
                store.remove_durably(shard_key, up_to=array_key, expected=version)
            return True
        store.replace_durably(shard_key, encoded, like=join(array_key, metadata_name), expected=version)
        return False

    def _current_chunks(self, shard_key: str, layout: ArrayLayout) -> tuple[dict, object]:
        """The chunks of the shard as stored now, and the version they are of."""
        try:
            current, version = self.tree.store.read_versioned(shard_key)
        except FileNotFoundError:
            return {}, ABSENT
        try:
            return (read_chunks(layout, current) if current else {}), version
        except CorruptShard as error:
            raise OSError(errno.EIO, f"cannot merge into corrupt shard {shard_key}: {error}") from None
