"""The shard index of the ``sharding_indexed`` codec (ZEP 2): decode, validate, encode.

A shard is ``payload... index`` (or ``index payload...``). The index is a
``chunks_per_shard + (2,)`` array of uint64 ``(offset, nbytes)`` pairs in C
order, encoded by the index codecs: ``bytes`` (little or big endian), optionally
followed by ``crc32c`` (4 little-endian bytes of CRC32C appended). An entry of
two ``2**64 - 1`` marks an absent chunk.

Nothing here does I/O: callers read ``index_range`` bytes of a shard and hand
them to ``decode``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import crc32c
import numpy as np

EMPTY = np.uint64(2**64 - 1)
ENTRY_NBYTES = 16
CHECKSUM_NBYTES = 4


class CorruptShard(Exception):
    """The shard as a whole cannot be read (bad checksum, too short, ...)."""


class CorruptEntry(CorruptShard):
    """One index entry points outside the shard's payload."""


@dataclass(frozen=True)
class IndexFormat:
    """How one level of sharding lays out its index."""

    chunks_per_shard: tuple[int, ...]
    endian: str = "little"  # byte order of the uint64 entries
    checksum: bool = True  # a trailing crc32c codec
    location: str = "end"  # "start" or "end" of the shard

    @property
    def n_chunks(self) -> int:
        return math.prod(self.chunks_per_shard)

    @property
    def nbytes(self) -> int:
        return ENTRY_NBYTES * self.n_chunks + (CHECKSUM_NBYTES if self.checksum else 0)

    @property
    def _dtype(self) -> np.dtype:
        return np.dtype("<u8" if self.endian == "little" else ">u8")

    def index_offset(self, shard_nbytes: int) -> int:
        """Where the index starts in a shard of ``shard_nbytes`` bytes."""
        if shard_nbytes < self.nbytes:
            raise CorruptShard(
                f"{shard_nbytes} bytes is shorter than its {self.nbytes}-byte index"
            )
        return 0 if self.location == "start" else shard_nbytes - self.nbytes

    def decode(self, raw: bytes, shard_nbytes: int, base: int = 0) -> ShardIndex:
        """Decode and validate the index of a shard of ``shard_nbytes`` bytes.

        ``base`` is where the shard starts in its file: a nested shard is a byte
        range inside its parent, and its entries are relative to that range.
        """
        self.index_offset(shard_nbytes)  # raises when the shard is too short
        if len(raw) != self.nbytes:
            raise CorruptShard(f"index is {len(raw)} bytes, expected {self.nbytes}")
        body = raw
        if self.checksum:
            body, stored = raw[:-CHECKSUM_NBYTES], raw[-CHECKSUM_NBYTES:]
            if crc32c.crc32c(body).to_bytes(CHECKSUM_NBYTES, "little") != stored:
                raise CorruptShard("index checksum (crc32c) mismatch")
        entries = np.frombuffer(body, dtype=self._dtype).astype(np.uint64)
        return ShardIndex(self, entries.reshape(self.chunks_per_shard + (2,)), shard_nbytes, base)

    def encode(self, entries: np.ndarray) -> bytes:
        """Encode ``entries`` (shape ``chunks_per_shard + (2,)``) as index bytes."""
        body = np.ascontiguousarray(entries, dtype=self._dtype).tobytes()
        if self.checksum:
            body += crc32c.crc32c(body).to_bytes(CHECKSUM_NBYTES, "little")
        return body

    def empty_entries(self) -> np.ndarray:
        return np.full(self.chunks_per_shard + (2,), EMPTY, dtype=np.uint64)


class ShardIndex:
    """A decoded index: where each inner chunk lies, as absolute file offsets."""

    def __init__(self, fmt: IndexFormat, entries: np.ndarray, shard_nbytes: int, base: int):
        self.format = fmt
        self.entries = entries
        self.base = base
        offsets, lengths = entries[..., 0], entries[..., 1]
        self._absent = (offsets == EMPTY) & (lengths == EMPTY)
        self._valid = self._absent | _within_payload(fmt, offsets, lengths, shard_nbytes)

    @property
    def nbytes(self) -> int:
        """Memory this index holds, for cache accounting."""
        return self.entries.nbytes + self._absent.nbytes + self._valid.nbytes

    def chunk_range(self, local: tuple[int, ...]) -> tuple[int, int] | None:
        """``(file offset, nbytes)`` of the inner chunk at ``local``, or None if absent."""
        if self._absent[local]:
            return None
        if not self._valid[local]:
            offset, length = (int(v) for v in self.entries[local])
            raise CorruptEntry(f"chunk {local} entry ({offset}, {length}) lies outside the payload")
        offset, length = self.entries[local]
        return self.base + int(offset), int(length)

    def present(self) -> np.ndarray:
        """Local coordinates of every chunk the index lists (valid or not), shape (n, ndim)."""
        return np.argwhere(~self._absent)

    def present_nbytes(self) -> np.ndarray:
        """Sizes of the chunks ``present`` lists, in the same order (0 for invalid entries)."""
        listed = ~self._absent
        return np.where(self._valid[listed], self.entries[..., 1][listed], 0).astype(np.int64)

    def slab(self, local_prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Which chunks under a local coordinate prefix the index lists (valid or not), and
        their sizes (0 for invalid entries), shaped as the axes after the prefix: a directory
        of chunk keys lists one row of each shard, not the whole shard."""
        sizes = np.where(self._valid[local_prefix], self.entries[local_prefix + (Ellipsis, 1)], 0)
        return ~self._absent[local_prefix], sizes

    def invalid_count(self) -> int:
        return int((~self._valid).sum())

    def is_empty(self) -> bool:
        return bool(self._absent.all())


def _within_payload(fmt: IndexFormat, offsets, lengths, shard_nbytes: int) -> np.ndarray:
    """Entries whose bytes lie in the shard and outside its index."""
    index_start = fmt.index_offset(shard_nbytes)
    if fmt.location == "start":
        low, high = fmt.nbytes, shard_nbytes
    else:
        low, high = 0, index_start
    low, high = np.uint64(low), np.uint64(high)
    # Written as subtractions so that huge values cannot overflow.
    return (offsets >= low) & (offsets <= high) & (lengths <= high - np.minimum(offsets, high))
