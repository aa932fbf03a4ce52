"""Walking a backing store offline, shared by ``zarrfs info`` and ``zarrfs check``.

Both commands do the same two phases on a store that may hold millions of shards:

1. walk it once (``Store.scan``: a directory listing, or one LIST) with ``StoreWalker``, which finds every
   metadata directory, parses its metadata the way the mount does (zarr.json
   wins over .zarray; metadata that does not parse leaves the directory as
   plain files) and decodes the key of every file in an array's chunk key
   namespace; subclasses say what to do with each node through hooks;
2. read every shard in batches with ``run_batches``: in a bounded thread pool
   when the reads wait on the filesystem (on Lustre, GPFS or NFS each read is a
   network round trip, so they are overlapped), in this thread when they do not.

``Progress`` is the one self-overwriting progress line both show on a terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TextIO

from .format.keys import ChunkKeyEncoding
from .format.metadata import ArrayLayout, MetadataError, parse_array_document, parse_v2_sharded
from .fs.shards import join
from .fs.views import V2_ARRAY, V3_METADATA
from .store import StoreError, open_store  # noqa: F401  (what info and check open stores with)
from .store.base import Store
from .store.local import zarrfs_own

V2_GROUP = ".zgroup"


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


class StoreWalker:
    """Walks the backing store once; subclasses override the hooks below.

    Every file is counted once for the progress line (``<label>: scanning the
    store, N files``) before its hook runs.
    """

    def __init__(self, store: Store, progress: Progress, label: str):
        self.store = store
        self.progress = progress
        self.label = label
        self._seen = 0

    # -- hooks ---------------------------------------------------------------

    def unlistable(self, dir_key: str, error: OSError) -> None:
        """A directory that cannot be listed (skipped)."""

    def bad_metadata(self, meta_key: str, error: Exception) -> None:
        """Metadata that does not parse: the mount shows its directory as plain files."""

    def group(self, dir_key: str) -> None:
        """A group (zarr.json of a group, or .zgroup)."""

    def array(self, dir_key: str, zarr_format: int, layout: ArrayLayout) -> object:
        """An array; the result is handed to ``array_file`` and ``key_file``."""
        return None

    def other_file(self, dir_key: str, name: str) -> None:
        """A file outside arrays (group metadata, READMEs): shown as it is."""

    def array_file(self, array: object, dir_key: str, name: str) -> None:
        """A file in an array's directory that is no chunk key (its metadata, strays)."""

    def scratch_file(self, dir_key: str, parts: tuple[str, ...]) -> None:
        """A file under a ``.zarrfs*`` name: zarrfs's own, never shown by the view."""

    def key_file(self, array: object, dir_key: str, layout: ArrayLayout, parts: tuple[str, ...],
                 coords: tuple[int, ...] | None) -> None:
        """A file in an array's chunk key namespace: a shard (a chunk when unsharded) at
        ``coords``, or None when its name is no valid key inside the (shard) grid."""

    # -- the walk ------------------------------------------------------------

    def walk(self, dir_key: str = "") -> None:
        entries = self._scandir(dir_key)
        if entries is None:
            return
        kind, layout = self._node_of(dir_key, {name for name, _ in entries})
        if layout is not None:
            self._array(dir_key, 3 if kind == V3_METADATA else 2, layout, entries)
            return
        if kind is not None:
            self.group(dir_key)
        self._plain(dir_key, entries)

    def _scandir(self, dir_key: str) -> list[tuple[str, bool]] | None:
        """``(name, is a directory)`` of each entry, by name; None if unlistable."""
        try:
            return self.store.scan(dir_key)
        except OSError as error:
            self.unlistable(dir_key, error)
            return None

    def _count_file(self) -> None:
        self._seen += 1
        self.progress.update(f"{self.label}: scanning the store, {self._seen} files")

    def _plain(self, dir_key: str, entries: list[tuple[str, bool]]) -> None:
        """A directory the view shows as it is (a group, or no Zarr node at all)."""
        for name, is_dir in entries:
            if zarrfs_own(name):
                self._scratch(dir_key, name, is_dir)
            elif is_dir:
                self.walk(join(dir_key, name))
            else:
                self._count_file()
                self.other_file(dir_key, name)

    def _scratch(self, dir_key: str, name: str, is_dir: bool) -> None:
        for parts in self._files_below(dir_key, (name,), is_dir):
            self._count_file()
            self.scratch_file(dir_key, parts)

    def _node_of(self, dir_key: str, names: set[str]) -> tuple[str | None, ArrayLayout | None]:
        """``(metadata file, array layout)``: layout None for a group, both None
        for a directory that is no Zarr node.

        zarr.json wins over .zarray, as in fs/views.py; metadata that does not
        parse makes the directory plain files there, so it is walked as such here.
        """
        for name in (V3_METADATA, V2_ARRAY):
            if name in names:
                meta_key = join(dir_key, name)
                try:
                    doc = json.loads(self.store.read(meta_key))
                    layout = parse_array_document(doc) if name == V3_METADATA else v2_layout(doc)
                except (ValueError, UnicodeDecodeError, MetadataError, OSError) as error:
                    self.bad_metadata(meta_key, error)
                    return None, None
                return name, layout
        return (V2_GROUP, None) if V2_GROUP in names else (None, None)

    def _array(self, dir_key: str, zarr_format: int, layout: ArrayLayout, entries: list[tuple[str, bool]]) -> None:
        array = self.array(dir_key, zarr_format, layout)
        keys = layout.key_encoding
        for name, is_dir in entries:
            if zarrfs_own(name):
                self._scratch(dir_key, name, is_dir)
                continue
            if keys.decode_prefix((name,), layout.ndim) is None:
                # Not a chunk key: metadata, or a stray file the view shows as it is.
                if is_dir:
                    self.walk(join(dir_key, name))
                else:
                    self._count_file()
                    self.array_file(array, dir_key, name)
                continue
            for parts in self._files_below(dir_key, (name,), is_dir):
                self._count_file()
                coords = decode_key(keys, parts, layout.ndim)
                valid = coords is not None and all(i < n for i, n in zip(coords, layout.shard_grid))
                self.key_file(array, dir_key, layout, parts, coords if valid else None)

    def _files_below(self, dir_key: str, parts: tuple[str, ...], is_dir: bool) -> Iterator[tuple[str, ...]]:
        """Key components of every file at or under ``dir_key/parts``."""
        if not is_dir:
            yield parts
            return
        for name, is_dir in self._scandir(join(dir_key, *parts)) or ():
            yield from self._files_below(dir_key, parts + (name,), is_dir)


def decode_key(keys: ChunkKeyEncoding, parts: tuple[str, ...], ndim: int) -> tuple[int, ...] | None:
    if len(parts) != keys.depth(ndim):
        return None
    coords = keys.decode_prefix(parts, ndim)
    return coords if coords is not None and len(coords) == ndim else None


def v2_layout(zarray: object) -> ArrayLayout:
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


# -- phase 2: batches, in threads where they help ---------------------------------------


def batched(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable, window: int) -> Iterator:
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


def run_batches(work: Callable, batches: list, jobs: int, io_bound: float, name: str = "zarrfs") -> Iterator:
    """``work(batch)`` for every batch, in some order, in threads only where they help.

    The first batch runs here, timed. If the thread spent most of it waiting
    (wall time above ``io_bound`` times the CPU time: a network filesystem,
    cold caches), the rest go to ``jobs`` threads, which overlap those waits.
    If it was mostly CPU (files in the page cache), the rest run here too:
    threads would only contend for the GIL, which on a local disk doubles the
    CPU time of the same work.
    """
    if not batches:
        return
    wall, cpu = time.perf_counter(), time.thread_time()
    first = work(batches[0])
    waited = time.perf_counter() - wall > io_bound * (time.thread_time() - cpu)
    yield first
    if jobs == 1 or not waited:
        yield from map(work, batches[1:])
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix=name) as pool:
        yield from bounded_map(pool, work, batches[1:], 2 * jobs)


@contextlib.contextmanager
def quiet_zarrfs_log():
    """The mount's code (Views, Shards) logs as the daemon would (a warning per array
    without a v2 equivalent, an error per corrupt shard); the commands report the
    same, so keep those lines off the user's terminal while they run."""
    logger = logging.getLogger("zarrfs")

    def drop(record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
