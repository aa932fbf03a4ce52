"""``zarrfs check STORE [--decode]`` (SPEC §2, §7): every shard and every array's metadata.

The damage is made with tests/corpus.py's shard surgery (independent of zarrfs)
on private copies of the corpus, and every problem must be named by the shard's
store-relative key, as the daemon's log names it.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import crc32c
import numcodecs
import numpy as np
import pytest

import corpus
from helpers import rewritten_json, v2_prototype_array
from zarrfs import check
from zarrfs.check import check_store, entry_problems, run_check
from zarrfs.format.shard_index import EMPTY, IndexFormat
from zarrfs.walk import Progress

CASE = "zarr_2d_end_crc_default_slash"  # 2-D, index at the end, [bytes, crc32c], 4 shards
ZSTD_CASE = "zarr_1d_int16_zstd_missing_fill7_edge"  # 1-D, inner [bytes, zstd], chunks 0 and 3 in c/0
NESTED_CASE = "zarr_2d_nested_sharding"  # outer (8, 8) entries, each an inner shard of (4, 4) chunks


# -- helpers -------------------------------------------------------------------


def zarrfs_check(store: Path, *options: str) -> subprocess.CompletedProcess:
    """``zarrfs check`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "zarrfs", "check", str(store), *options],
                          capture_output=True, text=True, timeout=120)


def problems(result: subprocess.CompletedProcess) -> list[str]:
    """The problem lines (all but the summary at the end)."""
    lines = result.stdout.splitlines()
    assert lines and lines[-1].startswith("checked "), result.stdout
    return lines[:-1]


def one_problem(store: Path, *options: str) -> str:
    """The line of the one problem ``zarrfs check`` must find (and so exit 1)."""
    result = zarrfs_check(store, *options)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = problems(result)
    return line


def set_entries(shard: Path, case: corpus.Case, entries: dict[int, tuple[int, int]]) -> None:
    """Rewrite index entries of a shard, with a correct checksum: only the entries are wrong."""
    data = shard.read_bytes()
    index = corpus.read_shard_index(shard, case.n_chunks, case.index_location, case.index_endian,
                                    case.index_crc).copy()
    for chunk, entry in entries.items():
        index[chunk] = entry
    raw = index.astype(np.dtype("<u8" if case.index_endian == "little" else ">u8")).tobytes()
    if case.index_crc:
        raw += struct.pack("<I", crc32c.crc32c(raw))
    if case.index_location == "end":
        shard.write_bytes(data[: len(data) - len(raw)] + raw)
    else:
        shard.write_bytes(raw + data[len(raw):])


def present_entries(shard: Path, case: corpus.Case) -> list[int]:
    index = corpus.read_shard_index(shard, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    return [i for i, (offset, nbytes) in enumerate(index) if not (offset == EMPTY and nbytes == EMPTY)]


# -- a clean store -------------------------------------------------------------------


@pytest.mark.parametrize("options", [(), ("--decode",)])
def test_the_clean_corpus_passes(corpus_store, options):
    store, cases = corpus_store
    result = zarrfs_check(store, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # not a terminal: no progress line, no log lines
    (summary,) = result.stdout.splitlines()
    shards = sum(len(corpus.shard_files(store, c)) for c in cases)
    assert summary.startswith(f"checked {len(cases) + 2} arrays ({len(cases)} sharded), {shards} shards (")
    assert summary.endswith(": no problems found")
    assert ("chunks decoded" in summary) == bool(options)


def test_an_empty_directory_is_a_clean_empty_store(tmp_path):
    out = io.StringIO()
    assert run_check(str(tmp_path), out=out, err=io.StringIO()) == 0
    assert out.getvalue() == "checked 0 arrays (0 sharded), 0 shards (0 chunks): no problems found\n"


# -- damaged shards ------------------------------------------------------------------


def damage(kind: str, shard: Path, case: corpus.Case) -> str:
    """Damage ``shard``; returns what the problem line must say."""
    args = (case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    index_nbytes = case.n_chunks * 16 + 4
    if kind == "checksum":
        corpus.corrupt_checksum(shard, case.index_location)
        return "index checksum (crc32c) mismatch"
    if kind == "truncated":
        corpus.truncate_shard(shard, 10)
        return f"truncated: 10 bytes, shorter than its {index_nbytes}-byte index"
    if kind == "empty":
        corpus.truncate_shard(shard, 0)
        return "empty (0 bytes"
    if kind == "entry_past_end":
        size = shard.stat().st_size
        corpus.corrupt_entry_past_end(shard, *args, chunk=1)
        return f"entry (0, 1) (offset {size + 1}, 16 bytes) extends past the end of the shard ({size} bytes)"
    if kind == "entry_into_index":
        size = shard.stat().st_size
        corpus.corrupt_entry_into_index(shard, *args, chunk=2)
        return f"entry (1, 0) (offset {size - index_nbytes}, 16 bytes) overlaps the index"
    if kind == "overlapping_entries":
        index = corpus.read_shard_index(shard, *args)
        offset, nbytes = (int(v) for v in index[3])  # entry (1, 1): the last payload
        set_entries(shard, case, {0: (offset + 5, 3)})  # entry (0, 0) now lies inside it
        return f"entries (1, 1) and (0, 0) overlap (bytes {offset + 5}-{offset + 7})"
    raise AssertionError(kind)


KINDS = ["checksum", "truncated", "empty", "entry_past_end", "entry_into_index", "overlapping_entries"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_damage_is_named_by_its_shard_key(store_copy, kind):
    root, cases = store_copy
    case = cases[CASE]
    shard = case.shard_path(root, (1, 0))
    assert present_entries(shard, case) == [0, 1, 2, 3]  # the corpus's layout, as damage() assumes
    expected = damage(kind, shard, case)

    result = zarrfs_check(root)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = problems(result)
    assert line.startswith(f"{case.path}/c/1/0: {expected}"), line
    assert result.stdout.splitlines()[-1].endswith(": 1 problem found")


def test_overlapping_entries_are_found_whatever_the_index_layout(store_copy):
    """Index at the start, big endian, payloads rewritten out of order with gaps (gaps are fine)."""
    root, cases = store_copy
    case = cases["zarr_2d_start_bigcrc_default_slash_gzip"]
    shard = case.shard_path(root, (1, 1))
    args = (case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    corpus.rewrite_shard_shuffled(shard, *args, seed=0, gap=7)
    assert zarrfs_check(root).returncode == 0  # reordered payloads and gaps are not problems

    index = corpus.read_shard_index(shard, *args)
    offset, nbytes = (int(v) for v in index[1])
    set_entries(shard, case, {3: (offset, nbytes)})  # two entries share the same bytes
    (line,) = problems(zarrfs_check(root))
    assert line == f"{case.path}/c/1/1: entries (0, 1) and (1, 1) overlap (bytes {offset}-{offset + nbytes - 1})"


def test_damage_inside_a_nested_shard_names_the_outer_shard_and_entry(store_copy):
    root, cases = store_copy
    case = cases[NESTED_CASE]
    shard = case.shard_path(root, (0, 0))
    index = corpus.read_shard_index(shard, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    offset, nbytes = (int(v) for v in index[1])  # outer entry (0, 1): an inner shard
    data = bytearray(shard.read_bytes())
    data[offset + nbytes - 5] ^= 0x01  # the inner index's last entry byte, before its crc32c
    shard.write_bytes(bytes(data))

    result = zarrfs_check(root)
    assert result.returncode == 1
    assert problems(result) == [f"{case.path}/c/0/0: inner shard at entry (0, 1): index checksum (crc32c) mismatch"]


def test_an_inner_shard_too_short_for_its_index(store_copy):
    root, cases = store_copy
    case = cases[NESTED_CASE]
    shard = case.shard_path(root, (0, 0))
    index = corpus.read_shard_index(shard, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    offset, _ = (int(v) for v in index[1])
    set_entries(shard, case, {1: (offset, 20)})  # the inner index alone is 4 * 16 + 4 bytes
    (line,) = problems(zarrfs_check(root))
    assert line == f"{case.path}/c/0/0: inner shard at entry (0, 1): truncated: 20 bytes, shorter than its 68-byte index"


def test_every_damaged_shard_is_reported_once(store_copy):
    root, cases = store_copy
    damaged = {
        (CASE, (0, 0)): "checksum",
        (CASE, (1, 1)): "empty",
        ("ts_2d_end_crc_v2_dot", (1, 0)): "truncated",
    }
    for (name, coords), kind in damaged.items():
        damage(kind, cases[name].shard_path(root, coords), cases[name])
    result = zarrfs_check(root)
    assert result.returncode == 1
    keys = sorted(line.split(": ")[0] for line in problems(result))
    assert keys == sorted(f"{cases[name].path}/{cases[name].shard_key(coords)}" for name, coords in damaged)
    assert "ts_2d_end_crc_v2_dot/1.0: truncated" in result.stdout


# -- metadata ------------------------------------------------------------------------


def test_malformed_zarr_json_is_named_by_its_path(store_copy):
    root, cases = store_copy
    case = cases[CASE]
    (root / case.path / "zarr.json").write_text("{not json")
    line = one_problem(root)
    assert line.startswith(f"{case.path}/zarr.json: malformed JSON (")
    assert line.endswith("the mount shows this directory as plain files")


def test_a_compressed_index_codec_is_unsupported_metadata(store_copy):
    root, cases = store_copy
    case = cases[CASE]
    with rewritten_json(root / case.path / "zarr.json") as meta:
        meta["codecs"][0]["configuration"]["index_codecs"] = [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
            {"name": "crc32c"},
        ]
    line = one_problem(root)
    assert line.startswith(f"{case.path}/zarr.json: index_codecs ['bytes', 'zstd', 'crc32c'] are not supported")


def test_metadata_zarr_python_rejects_is_a_problem_with_decode(store_copy):
    """zarrfs serves codecs it does not know, so only --decode (which needs them) objects."""
    root, cases = store_copy
    case = cases[CASE]
    with rewritten_json(root / case.path / "zarr.json") as meta:
        meta["codecs"][0]["configuration"]["codecs"].append({"name": "no_such_codec"})
    assert zarrfs_check(root).returncode == 0
    line = one_problem(root, "--decode")
    assert line.startswith(f"{case.path}/zarr.json: zarr-python cannot decode its chunks: ")


# -- --decode ------------------------------------------------------------------------


def test_decode_finds_a_garbage_chunk_behind_a_valid_index(store_copy):
    root, cases = store_copy
    case = cases[ZSTD_CASE]
    shard = case.shard_path(root, (0,))
    args = (case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    index = corpus.read_shard_index(shard, *args)
    offset, nbytes = (int(v) for v in index[3])  # chunk 3 of the array
    data = bytearray(shard.read_bytes())
    assert bytes(data[offset : offset + 4]) == b"\x28\xb5\x2f\xfd"  # a zstd frame
    data[offset : offset + 4] = b"\xde\xad\xbe\xef"
    shard.write_bytes(bytes(data))
    corpus.read_shard_index(shard, *args)  # the index is still valid (crc32c checked)

    assert zarrfs_check(root).returncode == 0  # the index alone is fine
    line = one_problem(root, "--decode")
    assert line.startswith(f"{case.path}/c/0: chunk {case.path}/c/3 does not decode: "), line


def test_decode_finds_a_chunk_of_the_wrong_shape(store_copy):
    root, cases = store_copy
    case = cases[ZSTD_CASE]
    shard = case.shard_path(root, (1,))
    args = (case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    chunks = corpus.read_shard_chunks(shard, *args)
    first = min(chunks)
    chunks[first] = numcodecs.Zstd(level=3).encode(np.arange(7, dtype="<i2").tobytes())  # 7 values, not 8
    corpus.write_shard(shard, chunks, *args)

    assert zarrfs_check(root).returncode == 0
    line = one_problem(root, "--decode")
    assert line.startswith(f"{case.path}/c/1: chunk {case.path}/c/{4 + first} does not decode: ")
    assert "(8,)" in line  # the chunk shape it should have


def test_decode_checks_every_level_of_nested_shards(store_copy):
    root, cases = store_copy
    case = cases["zarr_3d_nested_sharding_start_bigcrc_zstd"]
    result = zarrfs_check(root, "--decode")
    assert result.returncode == 0
    shard = case.shard_path(root, (0, 0, 1))
    data = bytearray(shard.read_bytes())
    magic = b"\x28\xb5\x2f\xfd"
    position = data.index(magic)  # the first zstd frame: some innermost chunk
    data[position : position + 4] = bytes(4)
    shard.write_bytes(bytes(data))
    result = zarrfs_check(root, "--decode")
    (line,) = problems(result)
    assert line.startswith(f"{case.path}/c/0/0/1: chunk {case.path}/c/") and "does not decode" in line


# -- the v2 sharding prototype ---------------------------------------------------------


def prototype_array(root: Path) -> Path:
    """A ``.zarray`` with "shard_format": "indexed" (SPEC §4), shards by the corpus's writer
    (index at the end, little endian, no checksum); chunks of 2 x 3 int16, uncompressed."""
    array = v2_prototype_array(root)
    chunk = np.arange(6, dtype="<i2").tobytes()
    for (i, j), present in {(0, 0): (0, 3), (1, 1): (1,), (1, 0): (0, 1, 2)}.items():
        corpus.write_shard(array / f"{i}.{j}", {k: chunk for k in present}, 4, crc=False)
    return array


def test_v2_sharding_prototype_shards_are_checked(tmp_path):
    root = tmp_path / "store.zarr"
    array = prototype_array(root)
    for options in ((), ("--decode",)):
        result = zarrfs_check(root, *options)
        assert result.returncode == 0, result.stdout
        assert "checked 1 array (1 sharded), 3 shards (6 chunks)" in result.stdout

    corpus.corrupt_entry_past_end(array / "1.1", 4, crc=False, chunk=2)
    corpus.write_shard(array / "0.0", {0: np.arange(6, dtype="<i2").tobytes(), 3: b"short"}, 4, crc=False)
    result = zarrfs_check(root, "--decode")
    assert result.returncode == 1
    lines = sorted(problems(result))
    assert len(lines) == 2
    assert lines[0].startswith("proto/0.0: chunk proto/1.1 does not decode: ")
    assert lines[1].startswith("proto/1.1: entry (1, 0) (offset ") and "past the end of the shard" in lines[1]


# -- the names agree with the daemon's log ---------------------------------------------


def test_check_names_a_shard_as_the_daemons_log_does(store_copy, mount):
    root, cases = store_copy
    case = cases[CASE]
    corpus.corrupt_checksum(case.shard_path(root, (0, 1)), case.index_location)
    (line,) = problems(zarrfs_check(root))
    key = line.split(": ")[0]
    view = mount(root, "--read-only")
    with pytest.raises(OSError):
        (view / case.path / "c" / "0" / "2").read_bytes()  # a chunk of shard (0, 1)
    assert f"shard {key} is corrupt" in view.log_text()


# -- command line, progress, threads -------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "file"])
def test_a_store_that_is_not_a_directory_is_a_usage_error(tmp_path, what):
    store = tmp_path / "store.zarr"
    if what == "file":
        store.write_text("not a directory")
    result = zarrfs_check(store)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("zarrfs: error: ") and str(store) in line


def test_a_missing_argument_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "zarrfs", "check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "STORE" in result.stderr


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_and_is_cleared_before_each_problem(store_copy):
    root, cases = store_copy
    corpus.truncate_shard(cases[CASE].shard_path(root, (1, 1)), 0)
    terminal, out = FakeTerminal(), io.StringIO()
    result = check_store(str(root), progress=Progress(terminal, delay=0, interval=0), on_problem=out.write)
    shown = terminal.getvalue()
    assert "zarrfs check: checking shards" in shown and "/" in shown
    assert shown.endswith("\r\x1b[K") and "\n" not in shown
    assert len(result.problems) == 1 and out.getvalue() == result.problems[0]


def test_no_progress_when_stderr_is_not_a_terminal(corpus_store):
    store, _ = corpus_store
    err = io.StringIO()
    assert run_check(str(store), out=io.StringIO(), err=err) == 0
    assert err.getvalue() == ""


def test_results_do_not_depend_on_threads(store_copy, monkeypatch):
    root, cases = store_copy
    for kind, (name, coords) in zip(KINDS, [(CASE, (0, 0)), (CASE, (0, 1)), ("ts_2d_end_crc_default_slash", (1, 1)),
                                            ("ts_2d_end_crc_v2_dot", (0, 0)), (CASE, (1, 0)), (CASE, (1, 1))]):
        damage(kind, cases[name].shard_path(root, coords), cases[name])
    one = {decode: check_store(str(root), decode=decode, jobs=1) for decode in (False, True)}
    monkeypatch.setattr(check, "BATCH", 3)
    monkeypatch.setattr(check, "DECODE_BATCH", 1)
    monkeypatch.setattr(check, "IO_BOUND", 0.0)  # threads even though the corpus is in the page cache
    for decode in (False, True):
        many = check_store(str(root), decode=decode, jobs=8)
        assert sorted(many.problems) == sorted(one[decode].problems)
        assert (many.arrays, many.shards, many.chunks, many.decoded) == \
            (one[decode].arrays, one[decode].shards, one[decode].chunks, one[decode].decoded)
    assert len(one[False].problems) == 6
    # --decode also finds that the entry moved inside another chunk's bytes does not decode.
    assert len(one[True].problems) == 7


# -- entry_problems (pure) -----------------------------------------------------------


def index_of(entries: list[tuple[int, int] | None], location: str = "end") -> tuple[IndexFormat, np.ndarray]:
    fmt = IndexFormat((len(entries),), location=location)
    table = fmt.empty_entries()
    for i, entry in enumerate(entries):
        if entry is not None:
            table[i] = entry
    return fmt, table


def test_gaps_absent_and_empty_entries_are_fine():
    fmt, table = index_of([(0, 10), None, (20, 5), (20, 0), (25, 0)])  # index: bytes 116-199
    assert entry_problems(fmt, table, 200) == []


def test_entries_overlapping_each_other_name_both():
    fmt, table = index_of([(0, 10), (5, 10), (30, 40), (35, 2), (40, 3)])  # (30, 40) holds (35, 2) and (40, 3)
    assert entry_problems(fmt, table, 200) == [
        "entries (0,) and (1,) overlap (bytes 5-9)",
        "entries (2,) and (3,) overlap (bytes 35-36)",
        "entries (2,) and (4,) overlap (bytes 40-42)",
    ]


def test_entries_into_an_index_at_the_start():
    fmt, table = index_of([(0, 4), (40, 10), None], location="start")  # index: bytes 0-51
    assert entry_problems(fmt, table, 100) == [
        "entry (0,) (offset 0, 4 bytes) overlaps the index (bytes 0-51)",
        "entry (1,) (offset 40, 10 bytes) overlaps the index (bytes 0-51)",
    ]


def test_huge_entries_do_not_overflow_and_many_problems_are_summarized():
    n = 12
    fmt, table = index_of([(2**64 - 2, 2**63)] * n)
    lines = entry_problems(fmt, table, 1000)
    assert len(lines) == check.MAX_ENTRY_LINES + 1
    assert lines[0] == (f"entry (0,) (offset {2**64 - 2}, {2**63} bytes) extends past the end of the shard"
                        " (1000 bytes)")
    assert lines[-1] == f"{n - check.MAX_ENTRY_LINES} more entries extend past the end of the shard (1000 bytes)"
