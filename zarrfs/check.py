"""``zarrfs check STORE [--decode]``: verify every shard and every array's metadata.

What is checked, per shard of a sharded array (Zarr v3 ``sharding_indexed``, and
the v2 sharding prototype, whose index is at the end without checksum):

- the file is long enough for its index (an empty or truncated file is not);
- the index checksum (crc32c), when the index codecs have one;
- every present entry lies inside the file (not past its end) and outside the
  index, and no two entries overlap each other (gaps between them are fine);
- nested sharding: every present outer entry is an inner shard, checked the
  same way (length, checksum, entries);
- with ``--decode``: every present innermost chunk decodes with zarr-python 3's
  codec pipeline for the array's inner codecs, to the inner chunk shape
  (unsharded arrays' chunk files are decoded too).

Metadata is checked as the mount reads it: a zarr.json or .zarray that does not
parse, or uses sharding in a way zarrfs cannot serve (a compressed index, codecs
around ``sharding_indexed``), is a problem, since the mount shows that directory
as plain files. With ``--decode`` the array's metadata must also open in
zarr-python (known codecs, valid data type and fill value).

Each problem is one line, ``<store-relative key>: <problem>``, naming a shard by
the same key the daemon's log uses (``arr/c/0/0``) and metadata by its file
(``arr/zarr.json``). Index entries are named by their coordinates in the index
that holds them (``entry (0, 1)``); a nested shard's problems say which outer
entry holds it (``inner shard at entry (1, 0): ...``); a chunk that does not
decode is named by its path in the mount (``chunk arr/c/4/1``).

Exit status: 0 when nothing is wrong, 1 when problems were found, 2 when STORE
cannot be checked at all (missing, not a directory; argparse's usage errors
are 2 as well).

It walks the store and reads shards exactly as ``zarrfs info`` does (walk.py):
one walk of the store (``Store.scan``), then shards in batches, in threads when the reads wait
on the filesystem; a progress line on a terminal.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from typing import Callable, TextIO

import numpy as np

from .defaults import DEFAULT_JOBS
from .format.metadata import ArrayLayout, MetadataError
from .format.shard_index import EMPTY, CorruptShard, IndexFormat
from .fs.shards import join
from .fs.views import V2_ARRAY, V3_METADATA
from .store.base import SharedFile, Store
from .walk import Progress, StoreError, StoreWalker, batched, open_store, quiet_zarrfs_log, run_batches

BATCH = 64  # shards per task handed to a worker thread (indexes only)
DECODE_BATCH = 4  # with --decode: each shard is much more work
# Threads are used when checking is mostly waiting: wall time above this many
# times the CPU time (see walk.run_batches).
IO_BOUND = 2.0
DECODE_CHUNK_BYTES = 32 << 20  # encoded bytes handed to the codec pipeline at once
DECODE_CHUNKS = 1024  # chunks handed to the codec pipeline at once
# Per index and kind of problem (past the end, into the index, overlapping),
# this many entries are named; the rest are counted on one more line.
MAX_ENTRY_LINES = 5


@dataclass
class CheckResult:
    root: str
    arrays: int = 0
    sharded_arrays: int = 0
    shards: int = 0  # shard files checked
    chunks: int = 0  # present innermost chunks found in valid indexes
    decoded: int = 0  # chunks decoded (--decode)
    problems: list[str] = field(default_factory=list)  # "<key>: <problem>" lines, as found

    @property
    def ok(self) -> bool:
        return not self.problems


# -- decoding with zarr-python ------------------------------------------------------------


class _Decoder:
    """Decodes an array's (innermost) chunks with zarr-python's codec pipeline."""

    def __init__(self, layout: ArrayLayout, zarr_format: int):
        # zarr is imported only for --decode: it takes a while to import.
        from zarr.core.array import create_codec_pipeline
        from zarr.core.array_spec import ArrayConfig
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata
        from zarr.core.sync import sync

        # The view's metadata: the unsharded equivalent, whose codecs are the inner chain.
        doc = copy.deepcopy(layout.view_document)
        metadata = (ArrayV3Metadata if zarr_format == 3 else ArrayV2Metadata).from_dict(doc)
        prototype = default_buffer_prototype()
        self.pipeline = create_codec_pipeline(metadata)
        self.spec = metadata.get_chunk_spec((0,) * layout.ndim, ArrayConfig.from_dict({}), prototype)
        self.shape = tuple(layout.chunk_shape)
        self._buffer = prototype.buffer
        self._sync = sync
        self._steps = self._sync_steps()

    def _sync_steps(self) -> list | None:
        """``(codec, spec)`` in decoding order when every codec of the pipeline decodes
        synchronously (zarr's own v3 codecs do), else None.

        The pipeline's ``decode`` hands every chunk of every codec to a thread
        (``asyncio.to_thread``), which costs far more than decoding a small chunk;
        calling the same codecs' synchronous halves here is what ``decode_batch``
        does, minus the threads: each codec gets the spec its predecessors resolve.
        """
        try:
            codecs = [*self.pipeline.array_array_codecs, self.pipeline.array_bytes_codec,
                      *self.pipeline.bytes_bytes_codecs]
        except AttributeError:  # another pipeline class: use its decode
            return None
        if not all(callable(getattr(codec, "_decode_sync", None)) for codec in codecs):
            return None
        steps, spec = [], self.spec
        for codec in codecs:
            steps.append((codec, spec))
            spec = codec.resolve_metadata(spec)
        return steps[::-1]

    def decode(self, chunks: list[bytes]) -> list[str | None]:
        """Why each chunk is bad (does not decode, or to the wrong shape), or None."""
        if self._steps is not None:
            return [self._one(chunk) for chunk in chunks]
        try:
            return [self._check(out) for out in self._decode(chunks)]
        except Exception:  # noqa: BLE001 - some chunk is bad: find which, one by one
            if len(chunks) == 1:
                return [self._one(chunks[0])]
            return [self._one(chunk) for chunk in chunks]

    def _one(self, chunk: bytes) -> str | None:
        try:
            (out,) = self._decode([chunk])
        except Exception as error:  # noqa: BLE001 - any codec error is a problem to report
            return f"does not decode: {_describe(error)}"
        return self._check(out)

    def _decode(self, chunks: list[bytes]) -> list:
        if self._steps is None:
            return list(self._sync(self.pipeline.decode([(self._buffer.from_bytes(c), self.spec) for c in chunks])))
        result = []
        for chunk in chunks:
            value = self._buffer.from_bytes(chunk)
            for codec, spec in self._steps:
                value = codec._decode_sync(value, spec)
            result.append(value)
        return result

    def _check(self, out) -> str | None:
        if out is None:
            return "decodes to nothing"
        shape = tuple(out.as_numpy_array().shape)
        if shape != self.shape:
            return f"decodes to shape {shape}, expected the chunk shape {self.shape}"
        return None


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- phase 1: the walk ------------------------------------------------------------------


@dataclass
class _Array:
    key: str  # store-relative directory
    layout: ArrayLayout
    decoder: _Decoder | None


@dataclass
class _Shard:
    """One file to check: a shard (or, with --decode, a chunk of an unsharded array)."""

    array: _Array
    coords: tuple[int, ...]

    @property
    def key(self) -> str:
        return join(self.array.key, self.array.layout.key_encoding.encode(self.coords))


class _Walker(StoreWalker):
    def __init__(self, store: Store, progress: Progress, decode: bool, report: Callable[[str], None]):
        super().__init__(store, progress, "zarrfs check")
        self.decode = decode
        self.report = report
        self.result = CheckResult(store.name)
        self.tasks: list[_Shard] = []

    def unlistable(self, dir_key: str, error: OSError) -> None:
        self.report(f"{dir_key or '.'}: cannot list the directory: {error.strerror or error}")

    def bad_metadata(self, meta_key: str, error: Exception) -> None:
        self.report(f"{meta_key}: {_metadata_reason(error)}; the mount shows this directory as plain files")

    def array(self, dir_key: str, zarr_format: int, layout: ArrayLayout) -> _Array:
        self.result.arrays += 1
        self.result.sharded_arrays += layout.is_sharded
        decoder = None
        if self.decode:
            try:
                decoder = _Decoder(layout, zarr_format)
            except Exception as error:  # noqa: BLE001 - whatever zarr rejects, report it
                meta_key = join(dir_key, V3_METADATA if zarr_format == 3 else V2_ARRAY)
                self.report(f"{meta_key}: zarr-python cannot decode its chunks: {_describe(error)}")
        return _Array(dir_key, layout, decoder)

    def key_file(self, array: _Array, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...],
                 coords: tuple[int, ...] | None) -> None:
        # Names outside the grid, or no key at all, are hidden by the view: not shards.
        if coords is None:
            return
        if layout.is_sharded or array.decoder is not None:
            self.tasks.append(_Shard(array, coords))


def _metadata_reason(error: Exception) -> str:
    if isinstance(error, MetadataError):
        return str(error)
    if isinstance(error, json.JSONDecodeError):
        return f"malformed JSON ({error})"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, OSError):
        return f"cannot read: {error.strerror or error}"
    return str(error)


# -- phase 2: the shards ----------------------------------------------------------------


@dataclass
class _Outcome:
    task: _Shard
    problems: list[str] = field(default_factory=list)  # without the key
    checked: bool = True  # False when the file went away since the walk
    chunks: int = 0
    decoded: int = 0


@dataclass(frozen=True)
class _Chunk:
    coords: tuple[int, ...]  # innermost chunk, in the array's grid
    offset: int  # absolute, in the file
    nbytes: int


def _check_file(store: Store, task: _Shard) -> _Outcome:
    outcome = _Outcome(task)
    try:
        # Every read is of this one version of the file, even if a writer replaces it while we read.
        shared = store.share(task.key)
    except (FileNotFoundError, NotADirectoryError):
        outcome.checked = False  # removed since the walk
        return outcome
    except OSError as error:
        outcome.problems.append(f"cannot open: {error.strerror or error}")
        return outcome
    try:
        st = shared.stat()
        layout = task.array.layout
        decoding = task.array.decoder is not None
        chunks: list[_Chunk] | None = [] if decoding else None  # collected only to decode them
        if layout.is_sharded:
            origin = tuple(c * n for c, n in zip(task.coords, layout.chunks_per_shard))
            outcome.chunks = _check_level(shared, layout, 0, 0, st.st_size, origin, "", outcome.problems, chunks)
        elif decoding:
            chunks.append(_Chunk(task.coords, 0, st.st_size))  # the file is the chunk
        if decoding:
            _decode_chunks(shared, task, chunks, outcome)
    except OSError as error:
        outcome.problems.append(f"cannot read: {error.strerror or error}")
    finally:
        shared.release()
    return outcome


def _check_level(shared: SharedFile, layout: ArrayLayout, depth: int, base: int, nbytes: int, origin: tuple[int, ...],
                 where: str, problems: list[str], chunks: list[_Chunk] | None) -> int:
    """Check the (inner) shard at bytes ``[base, base + nbytes)`` of the file; the number
    of innermost chunks it holds whose entries lie in its payload (those are appended
    to ``chunks`` unless it is None)."""
    fmt = layout.levels[depth]
    if nbytes < fmt.nbytes:
        if nbytes == 0:
            problems.append(f"{where}empty (0 bytes; its index alone is {fmt.nbytes} bytes)")
        else:
            problems.append(f"{where}truncated: {nbytes} bytes, shorter than its {fmt.nbytes}-byte index")
        return 0
    raw = shared.pread(fmt.nbytes, base + fmt.index_offset(nbytes))
    try:
        index = fmt.decode(raw, nbytes, base)
    except CorruptShard as error:  # checksum, or a file that shrank under us
        problems.append(f"{where}{error}")
        return 0
    lines, usable = _entry_check(fmt, index.entries, nbytes)
    problems.extend(where + line for line in lines)
    innermost = depth == len(layout.levels) - 1
    if innermost and chunks is None:
        return int(np.count_nonzero(usable))
    # Entries in the payload: their global chunk coordinates and absolute byte ranges.
    found = np.flatnonzero(usable)
    local = np.stack(np.unravel_index(found, fmt.chunks_per_shard), axis=-1) if fmt.chunks_per_shard \
        else np.zeros((len(found), 0), dtype=np.intp)
    below = np.array(layout.chunks_below(depth), dtype=np.int64)
    coords = (np.array(origin, dtype=np.int64) + local * below).tolist()
    entries = index.entries.reshape(-1, 2)[found]
    offsets = [base + int(o) for o in entries[:, 0]]
    lengths = entries[:, 1].tolist()
    if innermost:
        chunks.extend(_Chunk(tuple(c), o, n) for c, o, n in zip(coords, offsets, lengths))
        return len(found)
    count = 0
    for position, c, o, n in zip(local.tolist(), coords, offsets, lengths):
        inner = f"{where}inner shard at entry {_tuple(position)}: "
        count += _check_level(shared, layout, depth + 1, o, n, tuple(c), inner, problems, chunks)
    return count


def entry_problems(fmt: IndexFormat, entries: np.ndarray, nbytes: int) -> list[str]:
    """What is wrong with the entries of a decoded index of a shard of ``nbytes`` bytes:
    entries past the end of the shard, overlapping the index, or overlapping each other.

    Offsets and lengths are those stored in the index (relative to the shard).
    Zero-length entries occupy no bytes, so they overlap nothing; gaps are fine.
    """
    return _entry_check(fmt, entries, nbytes)[0]


def _entry_check(fmt: IndexFormat, entries: np.ndarray, nbytes: int) -> tuple[list[str], np.ndarray]:
    """``(entry_problems, which entries lie in the payload)``, the mask flat in C order.

    Quick when nothing is wrong (a few vector operations); problems are named
    on a slower path.
    """
    flat = entries.reshape(-1, 2)
    offsets, lengths = flat[:, 0], flat[:, 1]
    present = (offsets != EMPTY) | (lengths != EMPTY)
    index_start = fmt.index_offset(nbytes)
    index_end = index_start + fmt.nbytes
    # The payload, as the mount defines it (ShardIndex): the bytes that are not the index.
    low, high = (index_end, nbytes) if fmt.location == "start" else (0, index_start)
    low, high = np.uint64(low), np.uint64(high)
    # Written without offset + length, which could overflow uint64.
    usable = present & (offsets >= low) & (offsets <= high) & (lengths <= high - np.minimum(offsets, high))
    lines: list[str] = []
    if np.count_nonzero(usable) != np.count_nonzero(present):
        lines += _outside_payload(fmt, offsets, lengths, present & ~usable, nbytes, index_start, index_end)
    # Entries overlapping each other: sorted by offset, each must start at or after
    # the furthest end so far. Entries in the payload end by ``nbytes``: no overflow.
    candidates = np.flatnonzero(usable & (lengths > 0))
    if len(candidates) > 1:
        order = candidates[np.argsort(offsets[candidates], kind="stable")]
        starts = offsets[order]
        stops = starts + lengths[order]
        running = np.maximum.accumulate(stops)
        if (starts[1:] < running[:-1]).any():
            lines += _overlaps(fmt, order, starts, stops, running)
    return lines, usable


def _outside_payload(fmt: IndexFormat, offsets, lengths, outside, nbytes: int, index_start: int,
                     index_end: int) -> list[str]:
    """Lines for the entries that lie past the end of the shard or touch its index."""
    size = np.uint64(nbytes)
    past_end = outside & ((offsets > size) | (lengths > size - np.minimum(offsets, size)))
    past = f"past the end of the shard ({nbytes} bytes)"
    at_index = f"the index (bytes {index_start}-{index_end - 1})"
    lines = _named(fmt, offsets, lengths, past_end, f"extends {past}", f"extend {past}")
    lines += _named(fmt, offsets, lengths, outside & ~past_end, f"overlaps {at_index}", f"overlap {at_index}")
    return lines


def _named(fmt: IndexFormat, offsets, lengths, which, singular: str, plural: str) -> list[str]:
    found = np.flatnonzero(which)
    lines = [f"{_entry(fmt, int(i))} (offset {int(offsets[i])}, {int(lengths[i])} bytes) {singular}"
             for i in found[:MAX_ENTRY_LINES]]
    if len(found) > MAX_ENTRY_LINES:
        lines.append(f"{len(found) - MAX_ENTRY_LINES} more entries {plural}")
    return lines


def _overlaps(fmt: IndexFormat, order, starts, stops, running) -> list[str]:
    """Each entry that starts before the furthest end so far overlaps the entry that
    reaches furthest (the last one that raised the running maximum)."""
    positions = np.arange(len(order))
    owner = np.maximum.accumulate(np.where(stops == running, positions, 0))
    lines = []
    for k in np.flatnonzero(starts[1:] < running[:-1]) + 1:
        a, b = owner[k - 1], k
        first, last = int(starts[b]), min(int(stops[a]), int(stops[b])) - 1
        lines.append(f"entries {_position(fmt, int(order[a]))} and {_position(fmt, int(order[b]))}"
                     f" overlap (bytes {first}-{last})")
    if len(lines) > MAX_ENTRY_LINES:
        lines[MAX_ENTRY_LINES:] = [f"{len(lines) - MAX_ENTRY_LINES} more entries overlap others"]
    return lines


def _entry(fmt: IndexFormat, flat_index: int) -> str:
    return f"entry {_position(fmt, flat_index)}"


def _position(fmt: IndexFormat, flat_index: int) -> str:
    """An entry's coordinates in its index, e.g. ``(0, 1)``."""
    return _tuple(np.unravel_index(flat_index, fmt.chunks_per_shard))


def _tuple(values) -> str:
    return str(tuple(int(v) for v in values))


def _decode_chunks(shared: SharedFile, task: _Shard, chunks: list[_Chunk], outcome: _Outcome) -> None:
    decoder = task.array.decoder
    layout = task.array.layout
    group: list[tuple[_Chunk, bytes]] = []
    held = 0

    def flush() -> None:
        nonlocal held
        for (chunk, _), problem in zip(group, decoder.decode([data for _, data in group])):
            if problem is None:
                continue
            if layout.is_sharded:
                view_key = join(task.array.key, layout.key_encoding.encode(chunk.coords))
                outcome.problems.append(f"chunk {view_key} {problem}")
            else:
                outcome.problems.append(problem)
        outcome.decoded += len(group)
        group.clear()
        held = 0

    for chunk in chunks:
        data = shared.pread(chunk.nbytes, chunk.offset)
        if len(data) != chunk.nbytes:  # the file shrank under us
            raise OSError(f"short read of {chunk.nbytes} bytes at {chunk.offset}")
        group.append((chunk, data))
        held += len(data)
        if held >= DECODE_CHUNK_BYTES or len(group) >= DECODE_CHUNKS:
            flush()
    if group:
        flush()


def _check_shards(store: Store, tasks: list[_Shard], decode: bool, jobs: int, progress: Progress,
                  result: CheckResult, report: Callable[[str], None]) -> None:
    def work(batch: list[_Shard]) -> list[_Outcome]:
        return [_check_file(store, task) for task in batch]

    what = "checking and decoding shards" if decode else "checking shards"
    done = 0
    size = DECODE_BATCH if decode else BATCH
    for outcomes in run_batches(work, batched(tasks, size), jobs, IO_BOUND, "zarrfs-check"):
        for outcome in outcomes:
            if outcome.checked and outcome.task.array.layout.is_sharded:
                result.shards += 1
            result.chunks += outcome.chunks
            result.decoded += outcome.decoded
            for problem in outcome.problems:
                report(f"{outcome.task.key}: {problem}")
        done += len(outcomes)
        progress.update(f"zarrfs check: {what}, {done}/{len(tasks)} ({100 * done // len(tasks)}%);"
                        f" {_count(len(result.problems), 'problem')}")


def check_store(root: str, decode: bool = False, jobs: int = DEFAULT_JOBS, progress: Progress | None = None,
                on_problem: Callable[[str], None] | None = None, endpoint_url: str | None = None) -> CheckResult:
    """Check the store at ``root`` (a directory or an s3:// URL); ``on_problem(line)`` is
    called for each problem as it is found (the lines are also in the result). Raises
    StoreError when it cannot be opened."""
    store = open_store(root, endpoint_url=endpoint_url)
    progress = progress or Progress(sys.stderr)
    result: CheckResult

    def report(line: str) -> None:
        result.problems.append(line)
        if on_problem is not None:
            progress.clear()  # the progress line is redrawn at its next update
            on_problem(line)

    walker = _Walker(store, progress, decode, report)
    result = walker.result
    try:
        with quiet_zarrfs_log():
            walker.walk("")
            _check_shards(store, walker.tasks, decode, max(1, jobs), progress, result, report)
    finally:
        progress.clear()
    return result


# -- output -----------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def summary_line(result: CheckResult, decode: bool) -> str:
    decoded = f", {_count(result.decoded, 'chunk')} decoded" if decode else ""
    found = _count(len(result.problems), "problem") + " found" if result.problems else "no problems found"
    return (f"checked {_count(result.arrays, 'array')} ({result.sharded_arrays} sharded), "
            f"{_count(result.shards, 'shard')} ({_count(result.chunks, 'chunk')}){decoded}: {found}")


def run_check(store: str, decode: bool = False, jobs: int = DEFAULT_JOBS,
              out: TextIO | None = None, err: TextIO | None = None, endpoint_url: str | None = None) -> int:
    """The ``zarrfs check`` command: 0 clean, 1 problems found, 2 STORE unusable."""
    out, err = out or sys.stdout, err or sys.stderr

    def print_problem(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    try:
        result = check_store(store, decode, jobs, Progress(err), print_problem, endpoint_url)
    except StoreError as error:
        print(f"zarrfs: error: {error}", file=err)
        return 2
    out.write(summary_line(result, decode) + "\n")
    out.flush()
    return 0 if result.ok else 1
