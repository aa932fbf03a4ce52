"""``zarrfs pack`` and ``zarrfs unpack``: converting whole stores offline (SPEC §12).

``pack SRC DST`` turns a per-chunk store into the sharded store the mount would
have made of it (``cp -r SRC MNT/``), at the speed of the disks:

1. **Plan.** One walk of SRC (``walk.StoreWalker``) finds every group and array.
   An unsharded array (v3, or v2 with an exact v3 equivalent) gets the metadata
   the mount gives arrays written into it (``format/metadata.shard_document``),
   and one task per destination shard that has chunks. Already sharded arrays,
   arrays without an exact equivalent and every other file are copied as they
   are. A file in an array's key namespace that is no key of its array stops
   the pack before anything is written. The plan is deterministic: the same
   SRC and arguments give the same tasks in the same order.
2. **Shards.** Each task writes one complete shard straight from the chunk files of
   one shard, encoded bytes as they are (never decoded): ``replace_durably_from_files``
   copies them into a temporary in the kernel (locally; ``read_many`` and one PUT for
   object stores), appends the index, fsyncs and renames; up to ``WRITERS`` shards at
   once, in writer threads (``_pipelined``). The tasks run here
   (``--jobs 1``), in a local process pool, on a Dask distributed scheduler, or
   a slice of them in one part of a batch job array (``--part I/N``: task ``k``
   belongs to part ``k mod N``).
3. **Metadata.** Array metadata is written once every object of the array
   exists in DST; group metadata (and the root's last, deepest first) only once
   every object of the whole store does. Each part checks after its own tasks,
   so the last part to finish writes what is left: a half-packed store never
   looks complete to a reader.

Resuming (the same command again, after kill -9 or a wall-time limit): a
destination shard is **complete** when it exists, its index decodes and
validates, and it lists exactly the chunks SRC has for it, each with the size
of its source file. Complete shards are not rewritten; anything else is. (A
shard at its final key was renamed there after its fsync, so an interrupted
write leaves only a temporary, which the next run removes.) Copied files are
complete when they exist with the source's size; metadata when it holds the
bytes it would be given.

``unpack SRC DST [--view v3|v2]`` writes what the mount shows, file by file,
through the daemon's own view model (``fs/tree.ViewTree``), without FUSE.

All I/O on SRC and DST goes through store methods (``read``, ``read_many``,
``replace_durably_from_files``, ``lstat``,
``listdir``/``files_below``, ``replace_durably``, ``symlink``, ``readlink``),
so ``s3://BUCKET/PREFIX`` sources and destinations work as local ones do.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import math
import os
import stat
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TextIO

from .format.metadata import ArrayLayout, MetadataError, json_bytes, parse_array_document, shard_document, \
    with_consolidated
from .format.shard_codec import encode_index, read_chunks, write_shard
from .format.shard_index import CorruptShard
from .format.v2 import NoV2Equivalent, v2_to_v3
from .fs.shards import join
from .store import is_object_store_url
from .store.local import zarrfs_own
from .walk import Progress, StoreError, StoreWalker, V2_GROUP, bounded_map, decode_key, open_store, \
    quiet_zarrfs_log

V3_METADATA, V2_ARRAY, V2_ATTRS = "zarr.json", ".zarray", ".zattrs"
METADATA_NAMES = frozenset({V3_METADATA, V2_ARRAY, V2_ATTRS, V2_GROUP})
COPY_BATCH = 64  # files copied as they are per task: a task costs more than a small file
BATCH_MAX = 8  # shard tasks sent to a pool process or Dask worker at once (``_batches``)
WRITERS = 4  # shards being written at once per process while the next is read (``_pipelined``)


class PackError(Exception):
    """Bad input: one line for the user, nothing written that looks complete."""


# -- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTask:
    """Write the destination shard at ``shard`` of the array at ``array``."""

    array: str
    target: str  # the array's sharded zarr.json (JSON text: cheap to ship, hashable for the cache)
    shard: tuple[int, ...]

    def outputs(self) -> list[str]:
        layout = _layout(self.target)
        return [join(self.array, layout.key_encoding.encode(self.shard))]


@dataclass(frozen=True)
class CopyTask:
    """Copy files (of arrays that stay as they are, or outside arrays) unchanged."""

    keys: tuple[str, ...]

    def outputs(self) -> list[str]:
        return list(self.keys)


@dataclass
class ArrayPlan:
    key: str
    source: str  # "v3", "v2", "v3 sharded", "v2 sharded" (the v2 sharding prototype)
    layout: ArrayLayout  # of the source
    target: dict | None = None  # sharded metadata; None when copied as it is
    target_json: str | None = None  # the same as tasks carry it (and the layout cache is keyed)
    problem: str | None = None  # why it is copied as it is
    chunk_files: int = 0
    shards: set[tuple[int, ...]] = field(default_factory=set)  # destination shards with chunks
    copied: list[str] = field(default_factory=list)  # its files copied as they are (not metadata)
    metadata: list[str] = field(default_factory=list)  # its metadata files, when copied as they are


@dataclass
class Plan:
    arrays: list[ArrayPlan] = field(default_factory=list)
    # dir key -> (v3 group document, its zarr.json bytes when SRC has them: kept as they are)
    groups: dict[str, tuple[dict, bytes | None]] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)  # plain files outside arrays
    files_before: int = 0
    errors: list[str] = field(default_factory=list)

    def tasks(self) -> list[ShardTask | CopyTask]:
        tasks: list[ShardTask | CopyTask] = []
        for array in self.arrays:
            if array.target is not None:
                tasks += [ShardTask(array.key, array.target_json, shard) for shard in sorted(array.shards)]
        copies = [key for array in self.arrays for key in array.copied] + self.copied
        tasks += [CopyTask(tuple(copies[i:i + COPY_BATCH])) for i in range(0, len(copies), COPY_BATCH)]
        return tasks

    def metadata(self) -> list[tuple[str, str, bytes | None]]:
        """``(owner dir, key, bytes or None to copy from SRC)`` of every metadata file, deepest
        directory first and the root's last, so that readers find complete arrays only."""
        packed = {a.key: a.target for a in self.arrays if a.target is not None}
        files = [(a.key, join(a.key, V3_METADATA), json_bytes(a.target)) for a in self.arrays if a.target]
        files += [(a.key, key, None) for a in self.arrays for key in a.metadata]
        for dir_key, (doc, data) in self.groups.items():
            # consolidated metadata says what the arrays' own zarr.json files say, as in the mount
            translated = with_consolidated(doc, lambda path, entry: packed.get(join(dir_key, path), entry))
            data = json_bytes(translated) if translated else data or json_bytes(doc)
            files.append((dir_key, join(dir_key, V3_METADATA), data))
        return sorted(files, key=lambda f: (-_depth(f[0]), f[1]))


def _depth(dir_key: str) -> int:
    return dir_key.count("/") + 1 if dir_key else 0


class _Planner(StoreWalker):
    """Walks SRC once and decides what becomes of every file."""

    def __init__(self, store, progress: Progress, shards: int, err: TextIO):
        super().__init__(store, progress, "zarrfs pack")
        self.chunks_per_shard = shards
        self.err = err
        self.plan = Plan()
        self._group_files: dict[str, frozenset[str]] = {}  # the files a group's zarr.json replaces

    def unlistable(self, dir_key: str, error: OSError) -> None:
        self.plan.errors.append(f"{dir_key or '.'}: cannot list: {error.strerror or error}")

    def bad_metadata(self, meta_key: str, error: Exception) -> None:
        # The mount shows such a directory as plain files; pack copies it the same way.
        print(f"zarrfs: {meta_key}: copied as it is: {error}", file=self.err)

    def group(self, dir_key: str) -> None:
        try:
            data = self.store.read(join(dir_key, V3_METADATA))
            self.plan.groups[dir_key] = json.loads(data), data
            self._group_files[dir_key] = frozenset({V3_METADATA})
        except FileNotFoundError:  # a v2 group (.zgroup): a v3 group, as the mount makes it
            doc = {"zarr_format": 3, "node_type": "group", "attributes": self._v2_attributes(dir_key)}
            self.plan.groups[dir_key] = doc, None
            self._group_files[dir_key] = frozenset({V2_GROUP, V2_ATTRS})

    def array(self, dir_key: str, zarr_format: int, layout: ArrayLayout) -> ArrayPlan:
        array = ArrayPlan(dir_key, f"v{zarr_format}" + (" sharded" if layout.is_sharded else ""), layout)
        if layout.is_sharded:
            array.problem = "already sharded"
        else:
            try:
                array.target = shard_document(self._unsharded_v3(dir_key, zarr_format, layout),
                                              self.chunks_per_shard)
                array.target_json = json.dumps(array.target, sort_keys=True)
            except (NoV2Equivalent, MetadataError, KeyError, TypeError, ValueError) as error:
                array.problem = f"no exact sharded equivalent ({error})"
        self.plan.arrays.append(array)
        return array

    def _unsharded_v3(self, dir_key: str, zarr_format: int, layout: ArrayLayout) -> dict:
        """The array's unsharded v3 metadata, as the mount derives it from what a writer wrote."""
        if zarr_format == 3:
            return layout.view_document
        # keys as the walk read them (a missing or null separator is ".")
        zarray = {**layout.view_document, "dimension_separator": layout.key_encoding.separator}
        return v2_to_v3(zarray, self._v2_attributes(dir_key))

    def _v2_attributes(self, dir_key: str) -> dict:
        try:
            attributes = json.loads(self.store.read(join(dir_key, V2_ATTRS)))
        except FileNotFoundError:
            return {}
        return attributes if isinstance(attributes, dict) else {}

    def other_file(self, dir_key: str, name: str) -> None:
        self.plan.files_before += 1
        if name not in self._group_files.get(dir_key, ()):
            self.plan.copied.append(join(dir_key, name))

    def array_file(self, array: ArrayPlan, dir_key: str, name: str) -> None:
        self.plan.files_before += 1
        key = join(dir_key, name)
        if name not in METADATA_NAMES:
            array.copied.append(key)
        elif array.target is None:
            array.metadata.append(key)

    def key_file(self, array: ArrayPlan, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...],
                 coords: tuple[int, ...] | None) -> None:
        self.plan.files_before += 1
        key = join(dir_key, *parts)
        if array.target is None:
            array.copied.append(key)
        elif coords is None:
            self.plan.errors.append(f"{key}: not a chunk key of the array {dir_key or '.'} "
                                    f"(shape {list(layout.shape)}, chunks {list(layout.chunk_shape)})")
        else:
            array.chunk_files += 1
            array.shards.add(_layout(array.target_json).shard_of(coords))


    # -- the chunk files of a packed array with "/" keys, a directory at a time -----------
    # Millions of chunk files: the walker's way (a generator level per key component, a key
    # decoded and a hook called per file) cost 19 µs a file, most of a pack of small chunks.
    # Here a directory of the last axis is one scan, its names checked in one loop; any
    # entry that is not at once a chunk of the grid goes the walker's way (and its error).

    def _array(self, dir_key: str, zarr_format: int, layout: ArrayLayout, entries: list[tuple[str, bool]]) -> None:
        keys = layout.key_encoding
        if keys.separator != "/" or layout.ndim == 0 or layout.is_sharded:
            return super()._array(dir_key, zarr_format, layout, entries)
        array = self.array(dir_key, zarr_format, layout)
        for name, is_dir in entries:
            if zarrfs_own(name):
                self._scratch(dir_key, name, is_dir)
            elif keys.decode_prefix((name,), layout.ndim) is None:  # metadata, strays
                if is_dir:
                    self.walk(join(dir_key, name))
                else:
                    self._count_file()
                    self.array_file(array, dir_key, name)
            elif is_dir and array.target is not None:
                self._key_directory(array, dir_key, layout, (name,))
            else:
                self._key_files(array, dir_key, layout, (name,), is_dir)

    def _key_files(self, array: ArrayPlan, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...],
                   is_dir: bool) -> None:
        """The walker's way (``StoreWalker._array``): file by file."""
        for file_parts in self._files_below(dir_key, parts, is_dir):
            self._count_file()
            coords = decode_key(layout.key_encoding, file_parts, layout.ndim)
            valid = coords is not None and all(i < n for i, n in zip(coords, layout.shard_grid))
            self.key_file(array, dir_key, layout, file_parts, coords if valid else None)

    def _key_directory(self, array: ArrayPlan, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...]) -> None:
        keys, ndim, grid = layout.key_encoding, layout.ndim, layout.shard_grid
        entries = self._scandir(join(dir_key, *parts))
        if entries is None:
            return
        prefix = keys.decode_prefix(parts, ndim)
        if len(parts) < keys.depth(ndim) - 1 or prefix is None or len(prefix) != ndim - 1 \
                or not all(i < n for i, n in zip(prefix, grid)):
            for name, is_dir in entries:  # not yet the last axis (or no valid prefix)
                if is_dir and prefix is not None and len(prefix) < ndim - 1:
                    self._key_directory(array, dir_key, layout, parts + (name,))
                else:
                    self._key_files(array, dir_key, layout, parts + (name,), is_dir)
            return
        last_grid, found = grid[-1], []
        for name, is_dir in entries:
            # parse_index inlined: canonical decimal (no sign, no leading zero), inside the grid
            if not is_dir and name.isdigit() and name.isascii() and (name[0] != "0" or len(name) == 1) \
                    and int(name) < last_grid:
                found.append(int(name))
            else:
                self._key_files(array, dir_key, layout, parts + (name,), is_dir)
        if not found:
            return
        self._seen += len(found)
        self.progress.update(f"{self.label}: scanning the store, {self._seen} files")
        self.plan.files_before += len(found)
        array.chunk_files += len(found)
        per_shard = _layout(array.target_json).chunks_per_shard
        outer = tuple(i // n for i, n in zip(prefix, per_shard))
        array.shards.update(outer + (last,) for last in {i // per_shard[-1] for i in found})


@functools.lru_cache(maxsize=256)
def _layout(target: str) -> ArrayLayout:
    return parse_array_document(json.loads(target))


def make_plan(src, shards: int, progress: Progress, err: TextIO) -> Plan:
    planner = _Planner(src, progress, shards, err)
    with quiet_zarrfs_log():
        planner.walk()
    progress.clear()
    if planner.plan.errors:
        raise PackError("\n".join(planner.plan.errors))
    return planner.plan


# -- the tasks (run here, in pool processes, or on Dask workers) --------------------------


@dataclass
class TaskResult:
    array: str | None  # the shard's array; None for copies
    objects: int = 0  # destination objects this task stands for
    written: int = 0  # of which written now (the others were complete already)
    chunks: int = 0
    bytes: int = 0  # source bytes read into written objects


@functools.lru_cache(maxsize=8)
def _store(url: str, endpoint_url: str | None = None):
    """One store object per URL and process: pool processes and Dask workers reuse it."""
    return open_store(url, endpoint_url=endpoint_url)


def run_task(src_url: str, dst_url: str, endpoint_url: str | None, task: ShardTask | CopyTask) -> TaskResult:
    """One task; module level, so that process pools and Dask can ship it by name."""
    return run_tasks(src_url, dst_url, endpoint_url, (task,))[0]


def run_tasks(src_url: str, dst_url: str, endpoint_url: str | None, tasks: Iterable) -> list[TaskResult]:
    """Several tasks, in order, each shard's write overlapped with reading the next one's
    chunks (see ``_pipelined``); returns once every shard is durable."""
    return list(_pipelined(_store(src_url, endpoint_url), _store(dst_url, endpoint_url), tasks))


def _pipelined(src, dst, tasks: Iterable) -> Iterator[TaskResult]:
    """Run ``tasks`` here, yielding each result (in order) once its objects are durable.
    This thread checks which shards DST has complete already; each other shard is written
    by one of ``WRITERS`` writer threads (see ``_prepare_shard``: between local stores, the
    kernel copies the chunk files into the shard, so the GIL is free nearly all the time;
    from or to an object store, GETs and one PUT), so that up to ``WRITERS`` shards are
    built at once, their fsyncs meet in one journal commit (a local disk) or their requests
    overlap (an object store). At most ``WRITERS`` shards are under way per process (and,
    from an object store, in memory)."""
    with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="zarrfs-pack-writer") as writer:
        pending: collections.deque[tuple[Future | None, TaskResult]] = collections.deque()
        try:
            for task in tasks:
                if isinstance(task, CopyTask):
                    result, write = _copy_files(src, dst, task.keys), None
                else:
                    result, write = _prepare_shard(src, dst, task)
                pending.append((None if write is None else writer.submit(write), result))
                while pending and (pending[0][0] is None or pending[0][0].done() or len(pending) > WRITERS):
                    future, done = pending.popleft()
                    if future is not None:
                        future.result()
                    yield done
            while pending:
                future, done = pending.popleft()
                if future is not None:
                    future.result()
                yield done
        finally:
            for future, _ in pending:
                if future is not None:
                    future.cancel()


def _prepare_shard(src, dst, task: ShardTask) -> tuple[TaskResult, Callable[[], None] | None]:
    """The result of a shard's task and what writes the shard (filling in the result's
    counts), None when DST has it complete already.

    The shard is made straight from the chunk files (``replace_durably_from_files``): in
    C order of the grid positions, the index appended once their sizes are known (a
    shard whose chunk files are all gone since the plan is not written). Between local
    stores the bytes never enter Python: each file is one open, fstat, copy_file_range
    and close, into the temporary that becomes the shard after its fsync."""
    layout = _layout(task.target)
    (key,) = task.outputs()
    result = TaskResult(task.array, objects=1)
    if _shard_complete(src, dst, task, layout, key):
        return result, None
    groups = _chunk_files(task, layout)
    if len(layout.levels) != 1 or layout.levels[0].location != "end":  # (not what pack writes)
        return result, functools.partial(_write_assembled, src, dst, key, layout, groups, result)
    fmt = layout.levels[0]
    positions = [local for _, locals_, _ in groups for local in locals_]

    def index(sizes: list[int | None]) -> bytes | None:
        present = [(local, size) for local, size in zip(positions, sizes) if size is not None]
        if not present:
            return None
        return encode_index(fmt, [local for local, _ in present], [size for _, size in present])

    def write() -> None:
        sizes = [size for size in dst.replace_durably_from_files(key, src, [(d, n) for d, _, n in groups], index)
                 if size is not None]
        if sizes:
            result.written, result.chunks, result.bytes = 1, len(sizes), sum(sizes)

    return result, write


def _write_assembled(src, dst, key: str, layout: ArrayLayout, groups: list, result: TaskResult) -> None:
    """A shard assembled in memory (any layout): its chunk files read, then one write."""
    chunks = {}
    for directory, locals_, names in groups:
        for local, data in zip(locals_, src.read_many(directory, names)):
            if data is not None:  # an absent chunk: the fill value
                chunks[local] = data
    data = write_shard(layout, chunks)
    if data is None:
        return
    dst.replace_durably(key, data)
    result.written, result.chunks = 1, len(chunks)
    result.bytes = sum(map(len, chunks.values()))


def _chunk_files(task: ShardTask, layout: ArrayLayout) -> list[tuple[str, list[tuple[int, ...]], list[str]]]:
    """``(source directory, local coords, file names)`` of every grid position of the shard,
    by directory (the same keys as ``_chunk_keys``): with the ``/`` separator one directory
    per coordinate prefix, whose names are the last coordinate, computed once per row."""
    first = [s * n for s, n in zip(task.shard, layout.chunks_per_shard)]
    ranges = [range(min(n, g - f)) for n, g, f in zip(layout.chunks_per_shard, layout.chunk_grid, first)]
    keys = layout.key_encoding
    groups = []
    if keys.separator == "/" and ranges:
        names = [str(first[-1] + i) for i in ranges[-1]]
        for outer in itertools.product(*ranges[:-1]):
            coords = tuple(f + i for f, i in zip(first, outer))
            directory = join(task.array, *keys.prefix_components(coords))
            groups.append((directory, [outer + (i,) for i in ranges[-1]], names))
        return groups
    by_directory: dict[str, tuple[list, list]] = {}
    for local, source_key in _chunk_keys(task, layout):
        directory, _, name = source_key.rpartition("/")
        entry = by_directory.setdefault(directory, ([], []))
        entry[0].append(local)
        entry[1].append(name)
    return [(directory, locals_, names) for directory, (locals_, names) in by_directory.items()]


def _chunk_keys(task: ShardTask, layout: ArrayLayout) -> Iterator[tuple[tuple[int, ...], str]]:
    """``(local coords, source key)`` of every grid position of the shard. A source chunk
    has the key the destination array names it by: the inner chunk is the source chunk."""
    first = [s * n for s, n in zip(task.shard, layout.chunks_per_shard)]
    ranges = [range(min(n, g - f)) for n, g, f in zip(layout.chunks_per_shard, layout.chunk_grid, first)]
    for local in itertools.product(*ranges):
        coords = tuple(f + i for f, i in zip(first, local))
        yield local, join(task.array, layout.key_encoding.encode(coords))


def _shard_complete(src, dst, task: ShardTask, layout: ArrayLayout, key: str) -> bool:
    """Whether DST holds a valid shard at ``key`` listing exactly the source chunks, each
    with its source file's size (reads the shard and stats the sources; writes nothing)."""
    try:
        shard = dst.read(key)
    except FileNotFoundError:
        return False
    try:
        stored = {local: len(data) for local, data in read_chunks(layout, shard).items()}
    except CorruptShard:
        return False
    for local, source_key in _chunk_keys(task, layout):
        try:
            size = src.lstat(source_key).st_size
        except FileNotFoundError:
            size = None
        if stored.pop(local, None) != size:
            return False
    return not stored


def _copy_files(src, dst, keys: Iterable[str]) -> TaskResult:
    result = TaskResult(None)
    for key in keys:
        result.objects += 1
        size = _copy_file(src, dst, key)
        if size is not None:
            result.written += 1
            result.bytes += size
    return result


def _copy_file(src, dst, key: str) -> int | None:
    """Copy one file (or symlink) unless DST has it already; bytes copied, None if it had."""
    st = src.lstat(key)
    if _exists(dst, key) and (stat.S_ISLNK(st.st_mode) or dst.lstat(key).st_size == st.st_size):
        return None
    if stat.S_ISLNK(st.st_mode):
        dst.symlink(src.readlink(key), key)
        return 0
    data = src.read(key)
    dst.replace_durably(key, data, stat.S_IMODE(st.st_mode) or 0o644)
    return len(data)


def _exists(store, key: str) -> bool:
    """Whether ``key`` exists (a missing store method: ``lstat`` that says no instead of raising)."""
    try:
        store.lstat(key)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


# -- running the tasks ----------------------------------------------------------------------


def parse_part(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N) as ``(I, N)``."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError(f"{text!r} is not I/N with 1 <= I <= N")
    return int(index), int(count)


def tasks_of_part(tasks: list, part: tuple[int, int] | None) -> list:
    """Part ``I/N`` takes every N-th task, starting at the I-th: the same SRC gives every
    part the same list, so the parts split it without talking to each other."""
    if part is None:
        return tasks
    index, count = part
    return tasks[index - 1::count]


def _batches(tasks: list, workers: int) -> list[tuple]:
    """Consecutive tasks sent to a worker together (``run_tasks``): a round trip to a pool
    process or through a Dask scheduler costs more than a small shard, and within a batch
    each shard's write overlaps the next one's reads. Still four batches or more per
    worker, so that the workers end together."""
    size = max(1, min(BATCH_MAX, len(tasks) // (4 * max(workers, 1))))
    return [tuple(tasks[i:i + size]) for i in range(0, len(tasks), size)]


def _run_local(stores: tuple, tasks: list, jobs: int) -> Iterator[TaskResult]:
    """``stores``: the first arguments of ``run_task``."""
    if jobs == 1 or len(tasks) < 2:
        yield from _pipelined(_store(stores[0], stores[2]), _store(stores[1], stores[2]), tasks)
        return
    # Processes, not threads: packing small chunks is Python work per chunk, and threads
    # would share one GIL. fork: the workers start at once and inherit the imports; but an
    # object store's client runs threads of its own, which a forked child would lack.
    import multiprocessing  # (imported here: a pack with --jobs 1 does without it)
    from concurrent.futures import ProcessPoolExecutor

    method = "spawn" if any(is_object_store_url(url) for url in stores[:2]) else "fork"
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method)) as pool:
        for results in bounded_map(pool, functools.partial(run_tasks, *stores), _batches(tasks, jobs), 2 * jobs):
            yield from results


def _run_dask(stores: tuple, tasks: list, address: str) -> Iterator[TaskResult]:
    """On an existing Dask distributed scheduler; at most a few batches per worker thread are
    submitted at a time, so that a million shards are never a million futures."""
    from distributed import Client, as_completed

    with Client(address, timeout=30) as client:
        threads = sum(client.nthreads().values())
        window = max(2, 2 * threads)
        pending = iter(_batches(tasks, threads))
        futures = as_completed([client.submit(run_tasks, *stores, batch, pure=False)
                                for batch in itertools.islice(pending, window)])
        for future in futures:
            yield from future.result()
            future.release()
            for batch in itertools.islice(pending, 1):
                futures.add(client.submit(run_tasks, *stores, batch, pure=False))


# -- the metadata, last ------------------------------------------------------------------


def write_metadata(src, dst, plan: Plan) -> tuple[int, int, bool]:
    """Write the metadata whose objects all exist in DST (see the module docstring).
    Returns ``(metadata files, of which written now, whether the store is complete)``."""
    missing_arrays = {a.key for a in plan.arrays if not all(_exists(dst, k) for k in _objects_of(a))}
    complete = not missing_arrays and all(_exists(dst, k) for k in plan.copied)
    array_keys = {a.key for a in plan.arrays}
    files = written = 0
    for owner, key, data in plan.metadata():
        if owner in missing_arrays or (owner not in array_keys and not complete):
            continue  # an array whose objects are not all there yet; groups wait for everything
        files += 1
        data = src.read(key) if data is None else data
        if _holds(dst, key, data):
            continue
        dst.replace_durably(key, data)
        written += 1
    return files, written, complete


def _objects_of(array: ArrayPlan) -> Iterator[str]:
    if array.target is not None:
        encode = _layout(array.target_json).key_encoding.encode
        yield from (join(array.key, encode(shard)) for shard in sorted(array.shards))
    yield from array.copied


def _holds(store, key: str, data: bytes) -> bool:
    try:
        return store.read(key) == data
    except FileNotFoundError:
        return False


# -- the destination ----------------------------------------------------------------------


def open_destination(url: str, src_url: str, endpoint_url: str | None):
    """DST, made if missing (a local directory). SRC and DST must not contain each other."""
    if "://" not in url:
        if os.path.exists(url) and not os.path.isdir(url):
            raise PackError(f"{url}: not a directory")
        here, there = os.path.realpath(url), os.path.realpath(src_url)
        if here == there or here.startswith(there + os.sep) or there.startswith(here + os.sep):
            raise PackError(f"{url}: SRC and DST must not contain each other")
        os.makedirs(url, exist_ok=True)
    return _store(url, endpoint_url)


def check_destination(dst, url: str, expected: set[str], metadata: dict[str, bytes | None]) -> None:
    """DST must be empty or a partial pack of the same SRC: every file in it is one this
    pack writes (or a temporary of one), and metadata already there is what it writes."""
    for parts in dst.files_below(""):
        key = join(*parts)
        if zarrfs_own(parts[-1]):  # a temporary of an interrupted run
            continue
        if key not in expected and key not in metadata:
            raise PackError(f"{url}: holds {key}, which packing SRC does not write: "
                            "DST must be empty or a partial pack of the same SRC")
        data = metadata.get(key)
        if data is not None and not _holds(dst, key, data):
            raise PackError(f"{url}: {key} differs from what packing SRC writes "
                            "(another SRC, or other --shards?): DST must be empty or a partial pack of the same SRC")


# -- pack ---------------------------------------------------------------------------------


@dataclass
class Totals:
    arrays: int = 0  # arrays packed (by this part)
    arrays_done: int = 0
    shards: int = 0
    shards_done: int = 0
    objects: int = 0  # shards and files copied as they are
    objects_done: int = 0
    written: int = 0
    chunks: int = 0  # packed into the shards written
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.bytes / elapsed
        left = self.objects - self.objects_done
        eta = elapsed / self.objects_done * left if self.objects_done else math.inf
        return (f"zarrfs pack: arrays {self.arrays_done}/{self.arrays}, shards {self.shards_done}/{self.shards}, "
                f"{_size(self.bytes)}, {_size(rate)}/s, ETA {_duration(eta)}")


def pack(src: str, dst: str, shards: int, jobs: int = 1, dask_address: str | None = None,
         endpoint_url: str | None = None,
         part: tuple[int, int] | None = None, dry_run: bool = False, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """Pack SRC into DST (see the module docstring). Raises PackError or StoreError on bad input."""
    started = time.monotonic()
    source = _store(src, endpoint_url)
    plan = make_plan(source, shards, Progress(err), err)
    for array in plan.arrays:
        if array.problem is not None and array.problem != "already sharded":
            print(f"zarrfs: {array.key or '.'}: copied as it is: {array.problem}", file=err)
    tasks = plan.tasks()
    if dry_run:
        print_plan(plan, tasks, out)
        return 0
    target = open_destination(dst, src, endpoint_url)
    outputs = {key for task in tasks for key in task.outputs()}
    check_destination(target, dst, outputs, {key: data for _, key, data in plan.metadata()})
    target.clean_after_crash(metadata_names=())  # temporaries of writers that died
    mine = tasks_of_part(tasks, part)
    totals = _run((src, dst, endpoint_url), plan, mine, jobs, dask_address, Progress(err))
    files, metadata_written, complete = write_metadata(source, target, plan)
    objects_after = len(outputs) + files
    print(summary(plan, totals, objects_after, metadata_written, complete, part, time.monotonic() - started),
          file=out)
    return 0


def _run(stores: tuple, plan: Plan, tasks: list, jobs: int, dask_address: str | None,
         progress: Progress) -> Totals:
    remaining: dict[str, int] = {}
    for task in tasks:
        if isinstance(task, ShardTask):
            remaining[task.array] = remaining.get(task.array, 0) + 1
    totals = Totals(arrays=len(remaining), shards=sum(remaining.values()),
                    objects=sum(len(t.outputs()) for t in tasks))
    results = _run_dask(stores, tasks, dask_address) if dask_address else _run_local(stores, tasks, jobs)
    for result in results:
        totals.objects_done += result.objects
        totals.written += result.written
        totals.chunks += result.chunks
        totals.bytes += result.bytes
        if result.array is not None:
            totals.shards_done += 1
            remaining[result.array] -= 1
            totals.arrays_done += remaining[result.array] == 0
        progress.update(totals.line())
    progress.clear()
    return totals


def summary(plan: Plan, totals: Totals, objects_after: int, metadata_written: int, complete: bool,
            part: tuple[int, int] | None, seconds: float) -> str:
    packed = sum(a.target is not None for a in plan.arrays)
    who = f"part {part[0]}/{part[1]}: " if part else ""
    state = "complete" if complete else "other parts still to finish"
    return (f"zarrfs pack: {who}{plan.files_before} files before, {objects_after} objects after "
            f"({plan.files_before - objects_after} inodes saved); {packed} arrays packed, "
            f"{len(plan.arrays) - packed} copied as they are, {len(plan.groups)} groups; "
            f"{totals.written} of {totals.objects} objects written now ({totals.objects - totals.written} "
            f"complete already), {metadata_written} metadata files; {totals.chunks} chunks, {_size(totals.bytes)} in "
            f"{_duration(seconds)} ({_size(totals.bytes / max(seconds, 1e-9))}/s); {state}")


def print_plan(plan: Plan, tasks: list, out: TextIO) -> None:
    for array in plan.arrays:
        name = array.key or "."
        if array.target is None:
            print(f"{name}: {array.source}, copied as it is ({array.problem}): "
                  f"{len(array.copied) + len(array.metadata)} files", file=out)
            continue
        layout = _layout(array.target_json)
        print(f"{name}: {array.source}, {array.chunk_files} chunk files of {list(layout.chunk_shape)} -> "
              f"{len(array.shards)} shards of {list(layout.chunks_per_shard)} chunks", file=out)
    for key in plan.copied:
        print(f"{key}: copied as it is", file=out)
    objects = sum(len(t.outputs()) for t in tasks) + len(plan.metadata())
    print(f"zarrfs pack: plan: {plan.files_before} files before, {objects} objects after "
          f"({plan.files_before - objects} inodes saved), {len(tasks)} tasks", file=out)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


# -- unpack ---------------------------------------------------------------------------------


def unpack(src: str, dst: str, view: str = "v3", endpoint_url: str | None = None, out: TextIO = sys.stdout,
           err: TextIO = sys.stderr) -> int:
    """Write what the mount shows of SRC (in ``view``) into DST as plain files."""
    from .fs.tree import KeyDir, Plain, ViewTree

    started = time.monotonic()
    tree = ViewTree(_store(src, endpoint_url), view)
    target = open_destination(dst, src, endpoint_url)
    if next(iter(target.files_below("")), None) is not None:
        raise PackError(f"{dst}: not empty")
    progress = Progress(err)
    files = nbytes = 0
    with quiet_zarrfs_log():
        pending = [tree.root()]
        while pending:
            for _, node, _ in sorted(tree.children(pending.pop()), key=lambda e: e[0], reverse=True):
                if isinstance(node, KeyDir) or (isinstance(node, Plain)
                                                and stat.S_ISDIR(tree.store.lstat(node.path).st_mode)):
                    pending.append(node)
                    continue
                nbytes += _unpack_file(tree, target, node)
                files += 1
                progress.update(f"zarrfs unpack: {files} files, {_size(nbytes)}")
    progress.clear()
    print(f"zarrfs unpack: {files} files, {_size(nbytes)} in {_duration(time.monotonic() - started)}", file=out)
    return 0


def _unpack_file(tree, target, node) -> int:
    attributes = tree.attributes(node)
    if stat.S_ISLNK(attributes.mode):
        target.symlink(tree.readlink(node), node.path)
        return 0
    data = tree.read(node, 0, attributes.size)
    target.replace_durably(node.path, data)
    return len(data)


__all__ = ["PackError", "StoreError", "pack", "parse_part", "unpack"]
