"""Whole shards: all inner chunks out of a shard's bytes, and a shard out of chunks.

Used by the repacker: it reads the current shard, replaces the chunks written
through the mount, and encodes a complete new shard. Nested sharding is handled
by recursion: an inner shard is just the bytes of an outer chunk.
Keys are innermost-chunk coordinates local to the (outermost) shard.
"""

from __future__ import annotations

import numpy as np

from .metadata import ArrayLayout
from .shard_index import IndexFormat

Chunks = dict[tuple[int, ...], bytes]


def read_chunks(layout: ArrayLayout, shard: bytes, depth: int = 0) -> Chunks:
    """Every present innermost chunk of ``shard``. Raises CorruptShard."""
    fmt = layout.levels[depth]
    offset = fmt.index_offset(len(shard))
    index = fmt.decode(shard[offset : offset + fmt.nbytes], len(shard))
    below = layout.chunks_below(depth)
    chunks: Chunks = {}
    for local in index.present():
        local = tuple(int(i) for i in local)
        start, length = index.chunk_range(local)
        data = shard[start : start + length]
        if depth == len(layout.levels) - 1:
            chunks[local] = data
            continue
        for inner, inner_data in read_chunks(layout, data, depth + 1).items():
            chunks[tuple(l * b + i for l, b, i in zip(local, below, inner))] = inner_data
    return chunks


def write_shard(layout: ArrayLayout, chunks: Chunks, depth: int = 0) -> bytes | None:
    """A complete shard holding ``chunks`` (payload in C order), or None if there are none."""
    if not chunks:
        return None
    fmt = layout.levels[depth]
    if depth == len(layout.levels) - 1:
        return encode_shard(fmt, chunks)
    below = layout.chunks_below(depth)
    groups: dict[tuple[int, ...], Chunks] = {}
    for coords, data in chunks.items():
        outer = tuple(c // b for c, b in zip(coords, below))
        groups.setdefault(outer, {})[tuple(c % b for c, b in zip(coords, below))] = data
    inner_shards = {outer: write_shard(layout, group, depth + 1) for outer, group in groups.items()}
    return encode_shard(fmt, inner_shards)


def encode_shard(fmt: IndexFormat, chunks: Chunks) -> bytes:
    """One level: payloads in C order, the index where ``fmt`` puts it. The shard is
    assembled once (one join of the payloads and the index: no copy of a copy), and the
    index is filled by one numpy assignment (a shard may hold thousands of small chunks)."""
    shape = fmt.chunks_per_shard
    # C order of the local coordinates is their sorted order (keys outside the shard are not in it)
    present = [local for local in sorted(chunks)
               if len(local) == len(shape) and all(0 <= i < n for i, n in zip(local, shape))]
    parts = [chunks[local] for local in present]
    index = _index(fmt, present, list(map(len, parts)), fmt.nbytes if fmt.location == "start" else 0)
    return b"".join([index, *parts] if fmt.location == "start" else [*parts, index])


def encode_index(fmt: IndexFormat, present: list[tuple[int, ...]], sizes: list[int]) -> bytes:
    """The index of a shard whose payloads are the chunks ``present`` (local coordinates,
    inside the shard, each once), of ``sizes`` bytes, one after another from the start of
    the shard in that order, with the index at the end (``fmt.location == "end"``): for
    shards written straight from chunk files (``zarrfs pack``), appended after them."""
    if fmt.location != "end":
        raise ValueError("the index of a shard written payloads first must be at its end")
    return _index(fmt, present, sizes, 0)


def _index(fmt: IndexFormat, present: list[tuple[int, ...]], sizes: list[int], base: int) -> bytes:
    """The encoded index: chunk ``present[i]`` at ``base + sum(sizes[:i])``, ``sizes[i]`` bytes."""
    shape = fmt.chunks_per_shard
    entries = fmt.empty_entries()
    if present:
        lengths = np.fromiter(sizes, dtype=np.uint64, count=len(sizes))
        offsets = np.cumsum(lengths) - lengths + np.uint64(base)
        flat = entries.reshape(-1, 2)
        where = np.ravel_multi_index(tuple(np.array(present, dtype=np.intp).T), shape) if shape else [0]
        flat[where, 0], flat[where, 1] = offsets, lengths
    return fmt.encode(entries)
