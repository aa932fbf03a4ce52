"""``zarrfs info STORE``: what a store holds and what mounting it changes.

Per array: shape, data type, inner chunk and shard shapes, how many shard files
and present inner chunks it has, its files in the backing store versus in the
v3 view, and whether the v2 view can show it (and if not, why). The totals say
how many files (inodes) the shards save.

It reads shard *indexes*, never chunk data, and reads them through the same
code the mount uses (``Shards``, ``Views``), so what it reports is what a mount
would show. Two phases:

1. walk the store once (``os.scandir``), finding every metadata directory and
   the shard (or chunk) files of each array by decoding their keys;
2. read the index of every shard, in batches: in a bounded thread pool when
   reads wait on the filesystem (on Lustre, GPFS or NFS each index read is a
   network round trip, so they are overlapped), in this thread when they do not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, TextIO

from .format.keys import ChunkKeyEncoding
from .format.metadata import ArrayLayout, MetadataError, parse_array_document, parse_v2_sharded
from .format.shard_index import CorruptShard
from .fs.shards import Shards, ShardChanged, join
from .fs.tree import RESERVED_PREFIX
from .fs.views import V2_ARRAY, V3_METADATA, Views
from .store.local import LocalStore

DEFAULT_JOBS = 16  # concurrent index reads: enough to hide network filesystem latency
# Shards per task handed to a worker thread: a handoff costs about as much as
# reading one small index from the page cache, so hand them over in batches.
BATCH = 64
# Threads are used when reading indexes is mostly waiting: wall time above this
# many times the CPU time (see _run_batches).
IO_BOUND = 2.0
V2_GROUP = ".zgroup"
# Per worker thread: an index is needed only by the task that reads it (and its
# nested levels), so a small cache is enough and memory stays bounded.
WORKER_CACHE_BYTES = 8 << 20


class StoreError(Exception):
    """STORE cannot be summarized at all (missing, not a directory)."""


@dataclass
class ArraySummary:
    path: str  # store-relative, "." for an array at the store root
    zarr_format: int  # of the backing metadata: 3, or 2 (plain or sharding prototype)
    sharded: bool
    shape: tuple[int, ...]
    dtype: str
    chunk_shape: tuple[int, ...]  # the inner (innermost) chunk shape: one file in the view
    shard_shape: tuple[int, ...] | None  # None when unsharded
    grid_chunks: int  # inner chunks the array's grid has, present or not
    shards: int = 0  # shard files in the backing store (0 when unsharded)
    chunks: int = 0  # present inner chunks: chunk files in the v3 view
    backing_files: int = 0  # files in the array's directory: metadata + shards (+ strays)
    view_files: int = 0  # files the v3 view shows there: metadata + chunks (+ strays)
    v2_problem: str | None = None  # why the v2 view cannot show it; None when it can
    corrupt_shards: list[tuple[str, str]] = field(default_factory=list)  # (store key, reason)

    @property
    def v2_translatable(self) -> bool:
        return self.v2_problem is None

    @property
    def files_saved(self) -> int:
        return self.view_files - self.backing_files

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["corrupt_shards"] = [{"key": key, "reason": reason} for key, reason in self.corrupt_shards]
        doc["v2_translatable"] = self.v2_translatable
        doc["files_saved"] = self.files_saved
        return doc


@dataclass
class StoreSummary:
    root: str
    arrays: list[ArraySummary] = field(default_factory=list)
    groups: int = 0
    other_files: int = 0  # files outside arrays (group metadata, READMEs): shown as they are
    scratch_files: int = 0  # ".zarrfs*" leftovers: in the store, never shown by the view
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is not summarized)

    def totals(self) -> dict:
        backing = sum(a.backing_files for a in self.arrays) + self.other_files + self.scratch_files
        view = sum(a.view_files for a in self.arrays) + self.other_files
        return {
            "arrays": len(self.arrays),
            "sharded_arrays": sum(a.sharded for a in self.arrays),
            "groups": self.groups,
            "shards": sum(a.shards for a in self.arrays),
            "chunks": sum(a.chunks for a in self.arrays),
            "corrupt_shards": sum(len(a.corrupt_shards) for a in self.arrays),
            "backing_files": backing,
            "view_files": view,
            "files_saved": view - backing,
        }

    def to_json(self) -> dict:
        return {
            "store": self.root,
            "arrays": [a.to_json() for a in self.arrays],
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "totals": self.totals(),
        }


# -- progress ---------------------------------------------------------------------------


class Progress:
    """One self-overwriting line on a terminal, shown only once work takes a while.

    Never writes to a pipe or file: a log or a ``--json`` consumer must not get
    carriage returns mixed into stderr.
    """

    def __init__(self, stream: TextIO, delay: float = 1.0, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.enabled = _is_tty(stream)
        self.interval, self.clock = interval, clock
        self._next = clock() + delay
        self._shown = False

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# -- phase 1: the walk ------------------------------------------------------------------


@dataclass
class _Shard:
    """One index read to do: a shard file of an array."""

    summary: ArraySummary
    array_key: str
    layout: ArrayLayout
    coords: tuple[int, ...]


class _Walker:
    """Walks the backing store once, summarizing every directory that holds metadata."""

    def __init__(self, store: LocalStore, progress: Progress):
        self.store = store
        self.progress = progress
        self.v2_views = Views(store, "v2")  # the mount's own v2 decision, with its reason
        self.result = StoreSummary(store.root)
        self.shards: list[_Shard] = []
        self._seen = 0

    def walk(self, dir_key: str) -> None:
        entries = self._scandir(dir_key)
        if entries is None:
            return
        kind, layout = self._node_of(dir_key, {e.name for e in entries})
        if layout is not None:
            self._array(dir_key, 3 if kind == V3_METADATA else 2, layout, entries)
            return
        if kind is not None:
            self.result.groups += 1
        self._plain(dir_key, entries)

    def _scandir(self, dir_key: str) -> list[os.DirEntry] | None:
        try:
            with os.scandir(self.store.path(dir_key)) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as error:
            self.result.skipped.append((dir_key or ".", f"cannot list: {error.strerror or error}"))
            return None

    def _count_file(self) -> None:
        self._seen += 1
        self.progress.update(f"zarrfs info: scanning the store, {self._seen} files")

    def _plain(self, dir_key: str, entries: list[os.DirEntry]) -> None:
        """A directory the view shows as it is (a group, or no Zarr node at all)."""
        for entry in entries:
            if entry.name.startswith(RESERVED_PREFIX):
                self._scratch(dir_key, entry)
            elif entry.is_dir(follow_symlinks=False):
                self.walk(join(dir_key, entry.name))
            else:
                self._count_file()
                self.result.other_files += 1

    def _scratch(self, dir_key: str, entry: os.DirEntry) -> None:
        """Files under a ``.zarrfs*`` name: zarrfs's own, never shown by the view."""
        for _ in self._files_below(dir_key, (entry.name,), entry.is_dir(follow_symlinks=False)):
            self._count_file()
            self.result.scratch_files += 1

    def _node_of(self, dir_key: str, names: set[str]) -> tuple[str | None, ArrayLayout | None]:
        """``(metadata file, array layout)``: layout None for a group, both None
        for a directory that is no Zarr node.

        zarr.json wins over .zarray, as in fs/views.py; metadata that does not
        parse makes the directory plain files there, so it is skipped here too.
        """
        for name in (V3_METADATA, V2_ARRAY):
            if name in names:
                meta_key = join(dir_key, name)
                try:
                    doc = json.loads(self.store.read(meta_key))
                    layout = parse_array_document(doc) if name == V3_METADATA else _v2_layout(doc)
                except (ValueError, UnicodeDecodeError, MetadataError, OSError) as error:
                    self.result.skipped.append((meta_key, f"shown as plain files: {error}"))
                    return None, None
                return name, layout
        return (V2_GROUP, None) if V2_GROUP in names else (None, None)

    def _array(self, dir_key: str, zarr_format: int, layout: ArrayLayout, entries: list[os.DirEntry]) -> None:
        doc = layout.view_document  # the zarr.json (unsharded) or the .zarray
        summary = ArraySummary(
            path=dir_key or ".",
            zarr_format=zarr_format,
            sharded=layout.is_sharded,
            shape=layout.shape,
            dtype=str(doc.get("data_type") if zarr_format == 3 else doc.get("dtype")),
            chunk_shape=layout.chunk_shape,
            shard_shape=layout.shard_shape if layout.is_sharded else None,
            grid_chunks=math.prod(layout.chunk_grid),
            v2_problem=self._v2_problem(dir_key) if zarr_format == 3 else None,
        )
        self.result.arrays.append(summary)
        keys = layout.key_encoding
        for entry in entries:
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.name.startswith(RESERVED_PREFIX):
                self._scratch(dir_key, entry)
                continue
            if keys.decode_prefix((entry.name,), layout.ndim) is None:
                # Not a chunk key: metadata, or a stray file the view shows as it is.
                if is_dir:
                    self.walk(join(dir_key, entry.name))
                else:
                    self._count_file()
                    summary.backing_files += 1
                    summary.view_files += 1
                continue
            for parts in self._files_below(dir_key, (entry.name,), is_dir):
                self._key_file(summary, dir_key, layout, parts)

    def _files_below(self, dir_key: str, parts: tuple[str, ...], is_dir: bool) -> Iterator[tuple[str, ...]]:
        """Key components of every file at or under ``dir_key/parts``."""
        if not is_dir:
            yield parts
            return
        for entry in self._scandir(join(dir_key, *parts)) or ():
            yield from self._files_below(dir_key, parts + (entry.name,), entry.is_dir(follow_symlinks=False))

    def _key_file(self, summary: ArraySummary, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...]) -> None:
        """A file in the array's chunk key namespace: a shard, a chunk, or one the view hides."""
        self._count_file()
        summary.backing_files += 1
        coords = _decode_key(layout.key_encoding, parts, layout.ndim)
        valid = coords is not None and all(i < n for i, n in zip(coords, layout.shard_grid))
        if not layout.is_sharded:
            # Shown as it is: every file is in the view, the valid ones are chunks.
            summary.view_files += 1
            summary.chunks += int(valid)
        elif valid:
            summary.shards += 1
            self.shards.append(_Shard(summary, dir_key, layout, coords))
        # else: a name in the key namespace that is no shard (outside the grid,
        # malformed): the view hides it, so it is a backing file only.

    def _v2_problem(self, dir_key: str) -> str | None:
        view = self.v2_views.of(dir_key)
        if view is None:  # cannot happen for metadata we just parsed, unless it changed
            return "its metadata cannot be read"
        return view.problem


def _decode_key(keys: ChunkKeyEncoding, parts: tuple[str, ...], ndim: int) -> tuple[int, ...] | None:
    if len(parts) != keys.depth(ndim):
        return None
    coords = keys.decode_prefix(parts, ndim)
    return coords if coords is not None and len(coords) == ndim else None


def _v2_layout(zarray: object) -> ArrayLayout:
    """The layout of a ``.zarray``: the sharding prototype, or a plain (unsharded) v2 array."""
    layout = parse_v2_sharded(zarray)
    if layout is not None:
        return layout
    if not isinstance(zarray, dict):
        raise MetadataError(".zarray is not a JSON object")
    shape, chunks = zarray.get("shape"), zarray.get("chunks")
    if not (_is_shape(shape) and _is_shape(chunks) and len(shape) == len(chunks) and 0 not in chunks):
        raise MetadataError(f"shape {shape!r} and chunks {chunks!r} do not fit together")
    separator = zarray.get("dimension_separator") or "."
    if separator not in (".", "/"):
        raise MetadataError(f"unknown dimension_separator {separator!r}")
    keys = ChunkKeyEncoding("v2", separator)
    return ArrayLayout(tuple(shape), tuple(chunks), tuple(chunks), (), keys, zarray)


def _is_shape(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)


# -- phase 2: the shard indexes ---------------------------------------------------------


def _inspect_shard(shards: Shards, task: _Shard) -> tuple[int, str | None]:
    """``(chunks the view lists, why the shard is corrupt or None)``."""
    key = shards.shard_key(task.array_key, task.layout, task.coords)
    try:
        st = shards.stat_shard(key)
        if st is None:
            return 0, None  # removed since the walk: no shard, no chunks
        problem = None
        try:
            # The outermost index, read once: present_chunks below finds it in the cache.
            index = shards.index(key, st, task.layout.levels[0], (0, st.st_size))
            if index.invalid_count():
                problem = f"{index.invalid_count()} index entries point outside the shard's payload"
        except CorruptShard as error:
            problem = str(error)
        except ShardChanged:
            pass  # rewritten under us; present_chunks reads the new version
        # A corrupt shard's chunks are all listed (they read as EIO), as in the view.
        return len(shards.present_chunks(task.array_key, task.layout, task.coords)), problem
    except OSError as error:
        return 0, f"cannot read: {error.strerror or error}"


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable, window: int) -> Iterator:
    """``fn(item)`` for each item, in completion order, with at most ``window`` in flight,
    so that millions of shards do not become millions of queued futures."""
    pending = set()
    for item in items:
        if len(pending) >= window:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
        pending.add(pool.submit(fn, item))
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from (f.result() for f in done)


def _run_batches(work: Callable, batches: list, jobs: int) -> Iterator:
    """``work(batch)`` for every batch, in some order, in threads only where they help.

    The first batch runs here, timed. If the thread spent most of it waiting
    (a network filesystem, cold caches), the rest go to ``jobs`` threads, which
    overlap those waits. If it was mostly CPU (indexes in the page cache), the
    rest run here too: threads would only contend for the GIL, which on a local
    disk doubles the CPU time of the same work.
    """
    if not batches:
        return
    wall, cpu = time.perf_counter(), time.thread_time()
    first = work(batches[0])
    waited = time.perf_counter() - wall > IO_BOUND * (time.thread_time() - cpu)
    yield first
    if jobs == 1 or not waited:
        yield from map(work, batches[1:])
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="zarrfs-info") as pool:
        yield from _bounded_map(pool, work, batches[1:], 2 * jobs)


def _read_indexes(store: LocalStore, tasks: list[_Shard], jobs: int, progress: Progress) -> None:
    # Shards and its LRU are not thread-safe: one per thread.
    local = threading.local()

    def work(batch: list[_Shard]) -> list[tuple[_Shard, int, str | None]]:
        if not hasattr(local, "shards"):
            local.shards = Shards(store, cache_bytes=WORKER_CACHE_BYTES)
        return [(task, *_inspect_shard(local.shards, task)) for task in batch]

    batches = [tasks[i : i + BATCH] for i in range(0, len(tasks), BATCH)]
    done = 0
    for results in _run_batches(work, batches, jobs):
        for task, chunks, problem in results:
            task.summary.chunks += chunks
            task.summary.view_files += chunks
            if problem is not None:
                key = join(task.array_key, task.layout.key_encoding.encode(task.coords))
                task.summary.corrupt_shards.append((key, problem))
        done += len(results)
        progress.update(f"zarrfs info: reading shard indexes, {done}/{len(tasks)}")
    for summary in {id(t.summary): t.summary for t in tasks}.values():
        summary.corrupt_shards.sort()


@contextlib.contextmanager
def _quiet_zarrfs_log():
    """Views and Shards log as the daemon would (a warning per array without a v2
    equivalent, an error per corrupt shard); the report says the same, so keep
    those lines off the user's terminal while we run."""
    logger = logging.getLogger("zarrfs")

    def drop(record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def summarize(root: str, jobs: int = DEFAULT_JOBS, progress: Progress | None = None) -> StoreSummary:
    """Summarize the store at ``root``. Raises StoreError when it is not a directory."""
    if not os.path.exists(root):
        raise StoreError(f"{root}: no such directory")
    if not os.path.isdir(root):
        raise StoreError(f"{root}: not a directory")
    progress = progress or Progress(sys.stderr)
    store = LocalStore(root)
    walker = _Walker(store, progress)
    try:
        with _quiet_zarrfs_log():
            walker.walk("")
            _read_indexes(store, walker.shards, max(1, jobs), progress)
    finally:
        progress.clear()
    walker.result.arrays.sort(key=lambda a: a.path)
    return walker.result


# -- output -----------------------------------------------------------------------------


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + (",)" if len(shape) == 1 else ")")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_array(a: ArraySummary) -> list[str]:
    kind = {(3, True): "v3 sharded", (3, False): "v3 unsharded",
            (2, True): "v2 sharding prototype", (2, False): "v2 unsharded"}[(a.zarr_format, a.sharded)]
    shard = f"shard {_shape(a.shard_shape)}" if a.sharded else "unsharded"
    lines = [
        f"{a.path}  [{kind}]",
        f"  shape {_shape(a.shape)}  {a.dtype}  chunk {_shape(a.chunk_shape)}  {shard}",
        f"  {_count(a.shards, 'shard')}, {a.chunks} of {_count(a.grid_chunks, 'chunk')} present;"
        f" files: {a.backing_files} backing, {a.view_files} in the view",
        "  v2: yes" if a.v2_translatable else f"  v2: no ({a.v2_problem})",
    ]
    lines += [f"  corrupt shard {key}: {reason}" for key, reason in a.corrupt_shards]
    return lines


def format_text(summary: StoreSummary) -> str:
    lines = []
    for array in summary.arrays:
        lines += format_array(array)
    for path, reason in summary.skipped:
        lines.append(f"{path}  [{reason}]")
    t = summary.totals()
    if not summary.arrays:
        lines.append("no arrays")
    lines.append(
        f"total: {_count(t['arrays'], 'array')} ({t['sharded_arrays']} sharded), {_count(t['groups'], 'group')},"
        f" {_count(t['shards'], 'shard')}, {_count(t['chunks'], 'chunk')}"
        + (f" ({_count(t['corrupt_shards'], 'corrupt shard')})" if t["corrupt_shards"] else "")
        + f"; {_count(t['backing_files'], 'backing file')}, {_count(t['view_files'], 'view file')},"
        f" {_count(t['files_saved'], 'file')} saved"
    )
    return "\n".join(lines) + "\n"


def run_info(store: str, as_json: bool = False, jobs: int = DEFAULT_JOBS,
             out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The ``zarrfs info`` command: print the summary; 1 when STORE is unusable."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        summary = summarize(store, jobs, Progress(err))
    except StoreError as error:
        print(f"zarrfs: error: {error}", file=err)
        return 1
    if as_json:
        json.dump(summary.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(format_text(summary))
    return 0
