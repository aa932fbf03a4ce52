"""``zarrfs info STORE`` (SPEC §2, §4): per-array summary of a real store.

Oracles are independent of zarrfs: shard files found on disk and indexes decoded
by tests/corpus.py, arrays written by zarr-python 3, and the file count of a real
mount of the same store.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import corpus
from conftest import list_files
from helpers import v2_prototype_array
from zarrfs import info
from zarrfs.info import Progress, format_text, run_info, summarize
from zarrfs.store.local import temporary_name

CORRUPT_CASE = "zarr_2d_end_crc_default_slash"  # 2-D, index at the end, [bytes, crc32c]


# -- helpers -------------------------------------------------------------------


def info_json(store: Path, *options: str) -> dict:
    """``zarrfs info --json`` as a user runs it, parsed."""
    result = subprocess.run([sys.executable, "-m", "zarrfs", "info", "--json", str(store), *options],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress line, no log lines
    return json.loads(result.stdout)


def by_path(report: dict) -> dict[str, dict]:
    return {a["path"]: a for a in report["arrays"]}


@pytest.fixture(scope="module")
def corpus_report(corpus_store):
    store, cases = corpus_store
    return by_path(info_json(store)), {c.name: c for c in cases}


def present_inner_chunks(store: Path, case: corpus.Case, tmp_path: Path) -> int:
    """Present innermost chunks inside the grid, from the shard indexes on disk."""
    grid = [-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks)]
    per_entry = [i // c for i, c in zip(case.index_chunks, case.inner_chunks)]  # innermost per outer entry
    count = 0
    for shard in corpus.shard_files(store, case):
        origin = [s * n for s, n in zip(shard_coordinates(store, case, shard), case.shard_shape)]
        chunks = corpus.read_shard_chunks(shard, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
        for linear, data in chunks.items():
            outer = np.unravel_index(linear, case.chunks_per_shard)
            start = [o // c + int(i) * p for o, c, i, p in zip(origin, case.inner_chunks, outer, per_entry)]
            locals_ = [()] if not case.nested else nested_present(data, per_entry, tmp_path)
            count += sum(all(s + i < g for s, i, g in zip(start, local, grid)) for local in locals_)
    return count


def nested_present(data: bytes, per_entry: list[int], tmp_path: Path) -> list[tuple[int, ...]]:
    """Local coordinates of the chunks an inner shard holds (the corpus's nested
    level uses the default index layout: at the end, little endian, crc32c)."""
    inner = tmp_path / "inner_shard"
    inner.write_bytes(data)
    present = corpus.read_shard_chunks(inner, math.prod(per_entry))
    return [tuple(int(i) for i in np.unravel_index(k, per_entry)) for k in present]


def shard_coordinates(store: Path, case: corpus.Case, shard: Path) -> tuple[int, ...]:
    key = shard.relative_to(store / case.path).as_posix()
    for coords in np.ndindex(case.shard_grid):
        if case.shard_key(coords) == key:
            return coords
    raise AssertionError(f"{shard} is not a shard key of {case.name}")


def sharded_array(root: Path, name: str, shape, shard, chunks, inner_codecs, dtype="int16") -> np.ndarray:
    """A sharded array written by zarr-python 3 with the given inner codec chain."""
    serializer = {"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(chunks), "codecs": inner_codecs,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end",
    }}
    array = zarr.create_array(root, name=name, shape=shape, chunks=shard, dtype=dtype, fill_value=0,
                              serializer=serializer, compressors=None, filters=None)
    data = np.arange(1, math.prod(shape) + 1, dtype=dtype).reshape(shape)
    array[...] = data
    return data


# -- counts against the files on disk ----------------------------------------------


@pytest.mark.parametrize("name", corpus.case_names())
def test_shard_and_chunk_counts_match_the_shards_on_disk(corpus_report, corpus_store, tmp_path, name):
    report, cases = corpus_report
    store, _ = corpus_store
    case = cases[name]
    array = report[case.path]
    shards = corpus.shard_files(store, case)
    chunks = present_inner_chunks(store, case, tmp_path)
    assert array["sharded"] and array["zarr_format"] == 3
    assert array["shape"] == list(case.expected.shape)
    assert array["chunk_shape"] == list(case.inner_chunks)
    assert array["shard_shape"] == list(case.shard_shape)
    assert array["shards"] == len(shards)
    assert array["chunks"] == chunks
    assert array["grid_chunks"] == math.prod(-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks))
    assert array["backing_files"] == len(shards) + 1  # + zarr.json
    assert array["view_files"] == chunks + 1
    assert array["files_saved"] == chunks - len(shards)
    assert array["corrupt_shards"] == []


def test_unsharded_arrays_are_counted_file_by_file(corpus_report, corpus_store):
    report, _ = corpus_report
    store, _ = corpus_store
    for path, metadata in (("plain/unsharded_v3", {"zarr.json"}), ("plain/v2_array", {".zarray", ".zattrs"})):
        files = list_files(store / path)
        array = report[path]
        assert not array["sharded"] and array["shard_shape"] is None and array["shards"] == 0
        assert array["chunks"] == len(files - metadata) == array["grid_chunks"] == 4
        assert array["backing_files"] == array["view_files"] == len(files)
        assert array["v2_translatable"]
    assert report["plain/v2_array"]["zarr_format"] == 2


def test_totals_match_the_store_and_a_real_mount(corpus_store, mount):
    store, cases = corpus_store
    report = info_json(store)
    totals = report["totals"]
    arrays = report["arrays"]
    assert totals["arrays"] == len(arrays) == len(cases) + 2  # + the two plain arrays
    assert totals["groups"] == 5  # root, group1, group1/sub, group2, plain
    assert totals["shards"] == sum(a["shards"] for a in arrays) == sum(len(corpus.shard_files(store, c)) for c in cases)
    assert totals["chunks"] == sum(a["chunks"] for a in arrays)
    assert totals["backing_files"] == len(list_files(store))
    assert totals["view_files"] == len(list_files(mount(store).path))  # what the v3 view really shows
    assert totals["files_saved"] == totals["view_files"] - totals["backing_files"] > 0


def test_results_do_not_depend_on_threads(corpus_store, monkeypatch):
    store, _ = corpus_store
    one = summarize(str(store), jobs=1)
    # Small batches, and threads even though the corpus is in the page cache.
    monkeypatch.setattr(info, "BATCH", 3)
    monkeypatch.setattr(info, "IO_BOUND", 0.0)
    many = summarize(str(store), jobs=8)
    assert [a.to_json() for a in one.arrays] == [a.to_json() for a in many.arrays]


# -- v2 translatability -------------------------------------------------------------


def test_reversal_transposes_are_v2_translatable(corpus_report):
    report, _ = corpus_report
    for path in ("zarr_2d_transpose_zstd", "ts_2d_transpose_zstd"):
        assert report[path]["v2_translatable"] and report[path]["v2_problem"] is None


def test_arrays_without_an_exact_v2_equivalent_say_why(tmp_path):
    root = tmp_path / "store.zarr"
    zarr.create_group(root)
    bytes_ = {"name": "bytes", "configuration": {"endian": "little"}}
    sharded_array(root, "transposed", (4, 6, 8), (4, 6, 8), (2, 3, 4),
                  [{"name": "transpose", "configuration": {"order": [1, 0, 2]}}, bytes_])
    sharded_array(root, "zstd_checksum", (8, 8), (8, 8), (4, 4),
                  [bytes_, {"name": "zstd", "configuration": {"level": 3, "checksum": True}}])
    sharded_array(root, "fine", (8, 8), (8, 8), (4, 4),
                  [bytes_, {"name": "zstd", "configuration": {"level": 3, "checksum": False}}])
    report = by_path(info_json(root))
    transposed, checksum, fine = report["transposed"], report["zstd_checksum"], report["fine"]
    assert not transposed["v2_translatable"]
    assert "transpose [1, 0, 2]" in transposed["v2_problem"]
    assert not checksum["v2_translatable"]
    assert "zstd with checksum" in checksum["v2_problem"]
    assert fine["v2_translatable"]
    # Not translatable to v2 does not mean unreadable: the v3 view still unshards them.
    assert transposed["shards"] == 1 and transposed["chunks"] == 8
    assert checksum["chunks"] == 4

    out = io.StringIO()
    assert run_info(str(root), out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert "v2: no (transpose [1, 0, 2] is neither the identity nor a reversal of the axes)" in text
    assert "v2: no (zstd with checksum" in text
    assert text.count("v2: yes") == 1


def test_a_v2_sharding_prototype_array_is_unwrapped(tmp_path):
    """`.zarray` with "shard_format": "indexed" (SPEC §4); its shards are made with the
    corpus's shard writer (index at the end, little endian, no checksum)."""
    root = tmp_path / "store.zarr"
    array = v2_prototype_array(root)
    present = {(0, 0): {0: b"a" * 12, 3: b"b" * 12}, (1, 1): {1: b"c" * 12}, (1, 0): {0: b"d", 1: b"e", 2: b"f"}}
    for (i, j), chunks in present.items():
        corpus.write_shard(array / f"{i}.{j}", chunks, 4, crc=False)
    (array / "9.9").write_bytes(b"outside the shard grid: hidden by the view")

    (summary,) = by_path(info_json(root)).values()
    assert summary["zarr_format"] == 2 and summary["sharded"] and summary["v2_translatable"]
    assert summary["shape"] == [8, 12] and summary["chunk_shape"] == [2, 3] and summary["shard_shape"] == [4, 6]
    assert summary["dtype"] == "<i2"
    assert summary["shards"] == 3
    assert summary["chunks"] == 6
    assert summary["backing_files"] == 5  # .zarray + 3 shards + the stray key
    assert summary["view_files"] == 7  # .zarray + 6 chunks


# -- damaged and odd stores ---------------------------------------------------------


@pytest.mark.parametrize("damage", ["checksum", "truncated", "empty", "entry_past_end"])
def test_a_corrupt_shard_is_reported_by_its_key(store_copy, damage):
    root, cases = store_copy
    case = cases[CORRUPT_CASE]
    shard = case.shard_path(root, (1, 0))
    args = (case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    {
        "checksum": lambda: corpus.corrupt_checksum(shard, case.index_location),
        "truncated": lambda: corpus.truncate_shard(shard, 10),
        "empty": lambda: corpus.truncate_shard(shard, 0),
        "entry_past_end": lambda: corpus.corrupt_entry_past_end(shard, *args, chunk=1),
    }[damage]()

    report = info_json(root)
    array = by_path(report)[case.path]
    ((key, reason),) = [(c["key"], c["reason"]) for c in array["corrupt_shards"]]
    assert key == f"{case.path}/c/1/0"
    assert reason
    assert report["totals"]["corrupt_shards"] == 1
    assert array["shards"] == 4  # still counted, and its chunks listed, as the view does

    out = io.StringIO()
    run_info(str(root), out=out, err=io.StringIO())
    assert f"corrupt shard {case.path}/c/1/0: " in out.getvalue()
    assert "(1 corrupt shard)" in out.getvalue()


def test_stray_files_are_counted_where_the_view_shows_them(store_copy, mount):
    root, cases = store_copy
    case = cases[CORRUPT_CASE]
    before = info_json(root)
    (root / case.path / "README.txt").write_text("shown as it is")  # not a chunk key
    (root / case.path / "c" / "9").mkdir()
    (root / case.path / "c" / "9" / "9").write_bytes(b"a shard outside the grid: hidden")
    (root / case.path / temporary_name("c")).write_bytes(b"zarrfs's own temporary: hidden")
    (root / "sub").mkdir()
    (root / "sub" / ".zarrfs-tmp-notes").write_bytes(b"a user's file that looks like ours: shown")
    after = info_json(root)
    old, new = by_path(before)[case.path], by_path(after)[case.path]
    assert new["backing_files"] == old["backing_files"] + 2
    assert new["view_files"] == old["view_files"] + 1
    assert (new["shards"], new["chunks"]) == (old["shards"], old["chunks"])
    totals = after["totals"]
    assert totals["backing_files"] == before["totals"]["backing_files"] + 4 == len(list_files(root))
    assert totals["view_files"] == before["totals"]["view_files"] + 2 == len(list_files(mount(root).path))


def test_malformed_metadata_is_skipped_with_its_reason(tmp_path):
    root = tmp_path / "store.zarr"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "zarr.json").write_text("{not json")
    report = info_json(root)
    assert report["arrays"] == []
    ((skipped),) = report["skipped"]
    assert skipped["path"] == "broken/zarr.json" and skipped["reason"].startswith("shown as plain files: ")
    assert report["totals"]["backing_files"] == report["totals"]["view_files"] == 1


def test_an_empty_directory_is_an_empty_store(tmp_path):
    report = info_json(tmp_path)
    assert report["arrays"] == []
    assert report["totals"]["files_saved"] == 0


def test_an_array_at_the_store_root(tmp_path):
    root = tmp_path / "array.zarr"
    bytes_ = {"name": "bytes", "configuration": {"endian": "little"}}
    zarr.create_array(root, shape=(8,), chunks=(8,), dtype="uint8", fill_value=0, compressors=None,
                      filters=None, serializer={"name": "sharding_indexed", "configuration": {
                          "chunk_shape": [2], "codecs": [bytes_], "index_codecs": [bytes_]}})[...] = 1
    ((summary),) = info_json(root)["arrays"]
    assert summary["path"] == "." and summary["shards"] == 1 and summary["chunks"] == 4


# -- command line ---------------------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "file"])
def test_a_store_that_is_not_a_directory_is_an_error(tmp_path, what):
    store = tmp_path / "store.zarr"
    if what == "file":
        store.write_text("not a directory")
    result = subprocess.run([sys.executable, "-m", "zarrfs", "info", str(store)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("zarrfs: error: ") and str(store) in line


def test_text_output_has_one_block_per_array_and_a_total(corpus_store):
    store, cases = corpus_store
    result = subprocess.run([sys.executable, "-m", "zarrfs", "info", str(store)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    case = next(c for c in cases if c.name == CORRUPT_CASE)
    block = lines[lines.index(f"{case.path}  [v3 sharded]"):][:4]
    assert block[1].split() == ["shape", "(16,", "16)", "uint8", "chunk", "(4,", "4)", "shard", "(8,", "8)"]
    assert block[2].startswith("  4 shards, 15 of 16 chunks present; files: 5 backing, 16 in the view")
    assert block[3] == "  v2: yes"
    assert lines[-1].startswith(f"total: {len(cases) + 2} arrays ({len(cases)} sharded), 5 groups, ")
    assert lines[-1].endswith("files saved")


def test_json_output_parses_into_arrays_and_totals(corpus_store):
    store, _ = corpus_store
    report = info_json(store)
    assert set(report) >= {"arrays", "totals"}
    assert set(report["totals"]) >= {"arrays", "shards", "chunks", "backing_files", "view_files", "files_saved"}
    for array in report["arrays"]:
        assert set(array) >= {"path", "shape", "dtype", "chunk_shape", "shard_shape", "shards", "chunks",
                              "backing_files", "view_files", "v2_translatable", "v2_problem", "corrupt_shards"}


# -- progress ---------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_once_work_takes_a_while_and_is_cleared(corpus_store):
    store, _ = corpus_store
    terminal = FakeTerminal()
    summarize(str(store), progress=Progress(terminal, delay=0, interval=0))
    shown = terminal.getvalue()
    assert "reading shard indexes" in shown and "/" in shown
    assert shown.endswith("\r\x1b[K")  # the line is cleared at the end
    assert "\n" not in shown


def test_progress_waits_before_showing_anything():
    now = [0.0]
    terminal = FakeTerminal()
    progress = Progress(terminal, delay=1.0, clock=lambda: now[0])
    progress.update("early")
    now[0] = 1.5
    progress.update("late")
    progress.clear()
    assert terminal.getvalue() == "\r\x1b[Klate\r\x1b[K"


def test_no_progress_when_stderr_is_not_a_terminal(corpus_store):
    store, _ = corpus_store
    err = io.StringIO()
    summarize(str(store), progress=Progress(err, delay=0, interval=0))
    assert err.getvalue() == ""


def test_format_text_of_an_empty_store(tmp_path):
    assert format_text(summarize(str(tmp_path))).splitlines()[0] == "no arrays"
