"""``zarrfs info STORE``: what a store holds and what mounting it changes.

Per array: shape, data type, inner chunk and shard shapes, how many shard files
and present inner chunks it has, its files in the backing store versus in the
v3 view, and whether the v2 view can show it (and if not, why). The totals say
how many files (inodes) the shards save.

It reads shard *indexes*, never chunk data, and reads them through the same
code the mount uses (``Shards``, ``Views``), so what it reports is what a mount
would show. Two phases:

1. walk the store once (``Store.scan``), finding every metadata directory and
   the shard (or chunk) files of each array by decoding their keys;
2. read the index of every shard, in batches: in a bounded thread pool when
   reads wait on the filesystem (on Lustre, GPFS or NFS each index read is a
   network round trip, so they are overlapped), in this thread when they do not.

Both phases (and the progress line) are shared with ``zarrfs check``: walk.py.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import TextIO

from .defaults import DEFAULT_JOBS
from .format.metadata import ArrayLayout
from .format.shard_index import CorruptShard
from .fs.shards import Shards, join
from .fs.views import Views
from .store.base import FileChanged, Store
from .walk import Progress, StoreError, StoreWalker, batched, open_store, quiet_zarrfs_log, run_batches

__all__ = ["ArraySummary", "Progress", "StoreError", "StoreSummary", "format_array", "format_text",
           "run_info", "summarize"]

# Shards per task handed to a worker thread: a handoff costs about as much as
# reading one small index from the page cache, so hand them over in batches.
BATCH = 64
# Threads are used when reading indexes is mostly waiting: wall time above this
# many times the CPU time (see walk.run_batches).
IO_BOUND = 2.0
# Per worker thread: an index is needed only by the task that reads it (and its
# nested levels), so a small cache is enough and memory stays bounded.
WORKER_CACHE_BYTES = 8 << 20


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


# -- phase 1: the walk ------------------------------------------------------------------


@dataclass
class _Shard:
    """One index read to do: a shard file of an array."""

    summary: ArraySummary
    array_key: str
    layout: ArrayLayout
    coords: tuple[int, ...]


class _Walker(StoreWalker):
    """Walks the backing store once, summarizing every directory that holds metadata."""

    def __init__(self, store: Store, progress: Progress):
        super().__init__(store, progress, "zarrfs info")
        self.v2_views = Views(store, "v2")  # the mount's own v2 decision, with its reason
        self.result = StoreSummary(store.name)
        self.shards: list[_Shard] = []

    def unlistable(self, dir_key: str, error: OSError) -> None:
        self.result.skipped.append((dir_key or ".", f"cannot list: {error.strerror or error}"))

    def bad_metadata(self, meta_key: str, error: Exception) -> None:
        self.result.skipped.append((meta_key, f"shown as plain files: {error}"))

    def group(self, dir_key: str) -> None:
        self.result.groups += 1

    def other_file(self, dir_key: str, name: str) -> None:
        self.result.other_files += 1

    def scratch_file(self, dir_key: str, parts: tuple[str, ...]) -> None:
        self.result.scratch_files += 1

    def array(self, dir_key: str, zarr_format: int, layout: ArrayLayout) -> ArraySummary:
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
        return summary

    def array_file(self, summary: ArraySummary, dir_key: str, name: str) -> None:
        # Not a chunk key: metadata, or a stray file the view shows as it is.
        summary.backing_files += 1
        summary.view_files += 1

    def key_file(self, summary: ArraySummary, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...],
                 coords: tuple[int, ...] | None) -> None:
        """A file in the array's chunk key namespace: a shard, a chunk, or one the view hides."""
        summary.backing_files += 1
        if not layout.is_sharded:
            # Shown as it is: every file is in the view, the valid ones are chunks.
            summary.view_files += 1
            summary.chunks += int(coords is not None)
        elif coords is not None:
            summary.shards += 1
            self.shards.append(_Shard(summary, dir_key, layout, coords))
        # else: a name in the key namespace that is no shard (outside the grid,
        # malformed): the view hides it, so it is a backing file only.

    def _v2_problem(self, dir_key: str) -> str | None:
        view = self.v2_views.of(dir_key)
        if view is None:  # cannot happen for metadata we just parsed, unless it changed
            return "its metadata cannot be read"
        return view.problem


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
        except FileChanged:
            pass  # rewritten under us; present_chunks reads the new version
        # A corrupt shard's chunks are all listed (they read as EIO), as in the view.
        return len(shards.present_chunks(task.array_key, task.layout, task.coords)), problem
    except OSError as error:
        return 0, f"cannot read: {error.strerror or error}"


def _read_indexes(store: Store, tasks: list[_Shard], jobs: int, progress: Progress) -> None:
    # Shards and its LRU are not thread-safe: one per thread.
    local = threading.local()

    def work(batch: list[_Shard]) -> list[tuple[_Shard, int, str | None]]:
        if not hasattr(local, "shards"):
            local.shards = Shards(store, cache_bytes=WORKER_CACHE_BYTES)
        return [(task, *_inspect_shard(local.shards, task)) for task in batch]

    done = 0
    for results in run_batches(work, batched(tasks, BATCH), jobs, IO_BOUND, "zarrfs-info"):
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


def summarize(root: str, jobs: int = DEFAULT_JOBS, progress: Progress | None = None,
              endpoint_url: str | None = None) -> StoreSummary:
    """Summarize the store at ``root`` (a directory or an s3:// URL). Raises StoreError
    when it cannot be opened."""
    store = open_store(root, endpoint_url=endpoint_url)
    progress = progress or Progress(sys.stderr)
    walker = _Walker(store, progress)
    try:
        with quiet_zarrfs_log():
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
             out: TextIO | None = None, err: TextIO | None = None, endpoint_url: str | None = None) -> int:
    """The ``zarrfs info`` command: print the summary; 1 when STORE is unusable."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        summary = summarize(store, jobs, Progress(err), endpoint_url)
    except StoreError as error:
        print(f"zarrfs: error: {error}", file=err)
        return 1
    if as_json:
        json.dump(summary.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(format_text(summary))
    return 0
