"""The shard index: decoding, checksum, and validation of every entry."""

import crc32c
import numpy as np
import pytest

from zarrfs.format.shard_index import EMPTY, CorruptEntry, CorruptShard, IndexFormat


def build_shard(fmt: IndexFormat, payloads: dict[tuple, bytes]) -> bytes:
    """A shard with ``payloads`` in C order, index where ``fmt`` says."""
    entries = fmt.empty_entries()
    body = b""
    start = fmt.nbytes if fmt.location == "start" else 0
    for local, data in sorted(payloads.items()):
        entries[local] = (start + len(body), len(data))
        body += data
    index = fmt.encode(entries)
    return index + body if fmt.location == "start" else body + index


def decode(fmt: IndexFormat, shard: bytes):
    offset = fmt.index_offset(len(shard))
    return fmt.decode(shard[offset : offset + fmt.nbytes], len(shard))


FORMATS = [
    IndexFormat((2, 3), endian, checksum, location)
    for endian in ("little", "big")
    for checksum in (True, False)
    for location in ("start", "end")
]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_every_chunk_reads_back_its_bytes(fmt):
    payloads = {(0, 0): b"abc", (1, 2): b"0123456789", (0, 2): b""}
    shard = build_shard(fmt, payloads)
    index = decode(fmt, shard)
    for local in np.ndindex(fmt.chunks_per_shard):
        found = index.chunk_range(local)
        if local in payloads:
            offset, length = found
            assert shard[offset : offset + length] == payloads[local]
        else:
            assert found is None
    assert sorted(map(tuple, index.present())) == sorted(payloads)


def test_index_size_follows_the_codecs():
    assert IndexFormat((4, 4), checksum=True).nbytes == 16 * 16 + 4
    assert IndexFormat((4, 4), checksum=False).nbytes == 16 * 16
    assert IndexFormat((), checksum=True).nbytes == 16 + 4  # a 0-d shard has one chunk


def test_big_endian_entries_are_not_read_as_little_endian():
    fmt = IndexFormat((1,), endian="big", checksum=False)
    entries = fmt.empty_entries()
    entries[0] = (0, 3)
    raw = fmt.encode(entries)
    assert raw[:8] == (0).to_bytes(8, "big") and raw[8:16] == (3).to_bytes(8, "big")
    assert fmt.decode(raw, 3 + len(raw)).chunk_range((0,)) == (0, 3)


def test_a_flipped_index_byte_fails_the_checksum():
    fmt = IndexFormat((2,), checksum=True)
    shard = bytearray(build_shard(fmt, {(0,): b"x" * 10}))
    shard[-10] ^= 0xFF
    with pytest.raises(CorruptShard, match="checksum"):
        decode(fmt, bytes(shard))


@pytest.mark.parametrize("length", [0, 5, IndexFormat((2,)).nbytes - 1])
def test_a_shard_shorter_than_its_index_is_corrupt(length):
    with pytest.raises(CorruptShard, match="shorter"):
        IndexFormat((2,)).index_offset(length)


def forged(fmt: IndexFormat, payload_size: int, entry: tuple[int, int]) -> tuple[bytes, int]:
    """An index whose first entry is ``entry`` (checksum valid), for a shard of the given payload."""
    entries = fmt.empty_entries()
    entries[0] = entry
    return fmt.encode(entries), payload_size + fmt.nbytes


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("entry", [(100, 1), (0, 101), (2**63, 2**63), (EMPTY, 5), (5, EMPTY), (90, 20)])
def test_an_entry_outside_the_payload_fails_only_that_chunk(location, entry):
    fmt = IndexFormat((2,), location=location)
    start = fmt.nbytes if location == "start" else 0
    entry = tuple(int(v) if int(v) == int(EMPTY) else int(v) + start for v in entry)
    raw, size = forged(fmt, 100, entry)
    index = fmt.decode(raw, size)
    with pytest.raises(CorruptEntry):
        index.chunk_range((0,))
    assert index.chunk_range((1,)) is None
    assert index.invalid_count() == 1


def test_an_entry_overlapping_the_index_is_refused():
    fmt = IndexFormat((2,), location="start", checksum=False)
    raw, size = forged(fmt, 100, (0, 10))  # points at the index itself
    with pytest.raises(CorruptEntry):
        fmt.decode(raw, size).chunk_range((0,))
    fmt = IndexFormat((2,), location="end", checksum=False)
    raw, size = forged(fmt, 100, (95, 10))  # runs into the index at byte 100
    with pytest.raises(CorruptEntry):
        fmt.decode(raw, size).chunk_range((0,))


def test_nested_shard_entries_are_relative_to_their_range():
    fmt = IndexFormat((2,), checksum=True)
    inner = build_shard(fmt, {(1,): b"hello"})
    outer_prefix = b"P" * 50
    index = fmt.decode(inner[-fmt.nbytes :], len(inner), base=len(outer_prefix))
    offset, length = index.chunk_range((1,))
    assert (outer_prefix + inner)[offset : offset + length] == b"hello"


def test_checksum_is_crc32c_little_endian():
    fmt = IndexFormat((1,), checksum=True)
    raw = fmt.encode(fmt.empty_entries())
    assert raw[-4:] == crc32c.crc32c(raw[:-4]).to_bytes(4, "little")
