"""The v3 view of a real corpus, mounted for real (SPEC §3).

Oracles are independent of zarrfs: shard indexes decoded by tests/corpus.py, and
values read by zarr-python 3 from the sharded original.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import corpus
from conftest import list_files

CASES = corpus.case_names()


@pytest.fixture(scope="module", params=[(), ("--read-only",)], ids=["writable", "read-only"])
def view(corpus_store, module_mount, backend, request):
    """Both kinds of mount: a read-only one serves reads by inode, with no OPEN (fs/operations.py);
    on both backends (the corpus uploaded once to the bucket for ``s3``)."""
    store, cases = corpus_store
    return backend.mount(module_mount, backend.store(store, shared=True), *request.param), {c.name: c for c in cases}


def expected_chunk_files(store: Path, case: corpus.Case) -> dict[str, bytes]:
    """Key -> bytes of every present inner chunk, from the shards on disk."""
    grid = [-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks)]
    view_case = corpus.Case(**{**case.__dict__, "shard_shape": case.inner_chunks})  # keys of inner chunks
    files = {}
    for shard in corpus.shard_files(store, case):
        shard_coords = shard_coordinates(store, case, shard)
        chunks = corpus.read_shard_chunks(shard, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
        for linear, data in chunks.items():
            local = np.unravel_index(linear, case.chunks_per_shard)
            coords = tuple(int(s * n + l) for s, n, l in zip(shard_coords, case.chunks_per_shard, local))
            if all(i < g for i, g in zip(coords, grid)):
                files[view_case.shard_key(coords)] = data
    return files


def shard_coordinates(store: Path, case: corpus.Case, shard: Path) -> tuple[int, ...]:
    key = str(shard.relative_to(store / case.path))
    for coords in np.ndindex(case.shard_grid):
        if case.shard_key(coords) == key:
            return coords
    raise AssertionError(f"{shard} is not a shard key of {case.name}")


def chunk_files_in_view(mnt: Path, case: corpus.Case) -> set[str]:
    return list_files(mnt / case.path) - {"zarr.json"}


@pytest.mark.parametrize("name", [n for n in CASES])
def test_zarr_python_reads_the_view_unsharded_with_the_original_values(view, name):
    mnt, cases = view
    case = cases[name]
    array = zarr.open_array(mnt.path / case.path, mode="r")
    assert array.shards is None  # an ordinary chunked array
    assert array.chunks == case.inner_chunks
    assert corpus.arrays_equal(array[...], case.expected)


@pytest.mark.parametrize("name", [n for n in CASES if "nested" not in n])
def test_every_present_inner_chunk_is_a_file_with_its_exact_bytes(view, corpus_store, name):
    mnt, cases = view
    store, _ = corpus_store
    case = cases[name]
    expected = expected_chunk_files(store, case)
    assert chunk_files_in_view(mnt.path, case) == set(expected)
    for key, data in expected.items():
        path = mnt.path / case.path / key
        assert path.read_bytes() == data, key
        assert path.stat().st_size == len(data)


@pytest.mark.parametrize("name", [n for n in CASES if "nested" in n])
def test_nested_shards_show_the_innermost_chunks(view, name):
    mnt, cases = view
    case = cases[name]
    grid = [-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks)]
    files = chunk_files_in_view(mnt.path, case)
    assert files, "a nested array with data shows chunk files"
    depth = len(case.inner_chunks) + 1
    assert all(len(f.split("/")) == depth and f.startswith("c/") for f in files)
    assert all(all(int(i) < g for i, g in zip(f.split("/")[1:], grid)) for f in files)


@pytest.mark.parametrize("name", CASES)
def test_metadata_is_the_unsharded_equivalent(view, corpus_store, name):
    mnt, cases = view
    store, _ = corpus_store
    case = cases[name]
    original = json.loads((store / case.path / "zarr.json").read_text())
    shown = json.loads((mnt.path / case.path / "zarr.json").read_text())
    assert shown["chunk_grid"]["configuration"]["chunk_shape"] == list(case.inner_chunks)
    assert "sharding_indexed" not in json.dumps(shown["codecs"])
    for field in set(original) | set(shown):
        if field not in ("chunk_grid", "codecs"):
            assert shown.get(field) == original.get(field), field
    assert (mnt.path / case.path / "zarr.json").stat().st_size == len((mnt.path / case.path / "zarr.json").read_bytes())


def test_chunk_files_carry_their_shards_mtime(view, corpus_store, backend):
    mnt, cases = view
    store, _ = corpus_store
    case = cases["zarr_2d_end_crc_default_slash"]
    shard = backend.store(store, shared=True).mtime_ns(f"{case.path}/c/0/0")
    assert (mnt.path / case.path / "c" / "0" / "0").stat().st_mtime_ns == shard


def test_everything_that_is_not_a_shard_passes_through(view, corpus_store):
    mnt, _ = view
    store, _ = corpus_store
    for plain in ("README.txt", "notes/info.txt", "zarr.json", "group1/zarr.json"):
        assert (mnt.path / plain).read_bytes() == (store / plain).read_bytes()
    comparison = filecmp.dircmp(store / "plain", mnt.path / "plain")
    assert list_files(store / "plain") == list_files(mnt.path / "plain")
    assert not comparison.diff_files
    for f in list_files(store / "plain"):
        assert (store / "plain" / f).read_bytes() == (mnt.path / "plain" / f).read_bytes()


def test_no_shard_object_is_visible(view, corpus_store):
    mnt, cases = view
    store, _ = corpus_store
    for case in cases.values():
        for shard in corpus.shard_files(store, case):
            key = str(shard.relative_to(store))
            view_file = mnt.path / key
            if view_file.is_file():  # a chunk key can equal a shard key; then it holds a chunk
                assert view_file.stat().st_size < shard.stat().st_size


def test_the_control_directory_is_hidden_but_reachable(view):
    mnt, _ = view
    assert ".zarrfs" not in os.listdir(mnt.path)
    status = mnt.status()
    assert status["pid"] > 1 and status["view"] == "v3"


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # a bucket has no filesystem to report
def test_statfs_reports_the_backing_filesystem(view, corpus_store):
    mnt, _ = view
    store, _ = corpus_store
    ours, backing = os.statvfs(mnt.path), os.statvfs(store)
    assert (ours.f_files, ours.f_blocks, ours.f_bsize) == (backing.f_files, backing.f_blocks, backing.f_bsize)


def test_inode_numbers_are_stable_and_distinct(view):
    mnt, _ = view
    paths = [Path(d) / f for d, _, files in os.walk(mnt.path) for f in files]
    first = {p: p.stat().st_ino for p in paths}
    assert len(set(first.values())) == len(paths)
    assert all(p.stat().st_ino == first[p] for p in paths)


def test_find_ls_and_du_walk_the_whole_view(view):
    mnt, _ = view
    found = subprocess.run(["find", str(mnt.path), "-type", "f"], capture_output=True, text=True, check=True)
    assert len(found.stdout.splitlines()) == len(list_files(mnt.path))
    subprocess.run(["ls", "-lR", str(mnt.path)], capture_output=True, check=True)
    du = subprocess.run(["du", "-sb", str(mnt.path)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) > 0


@pytest.mark.parametrize("tool", ["cp", "rsync"])
def test_copying_the_view_makes_a_plain_store_with_the_same_values(view, tmp_path, tool):
    mnt, cases = view
    target = tmp_path / "copy.zarr"
    if tool == "cp":
        subprocess.run(["cp", "-r", str(mnt.path), str(target)], check=True)
    else:
        subprocess.run(["rsync", "-a", f"{mnt.path}/", str(target)], check=True)
    assert list_files(target) == list_files(mnt.path)
    for case in cases.values():
        copied = zarr.open_array(target / case.path, mode="r")
        assert copied.shards is None
        assert corpus.arrays_equal(copied[...], case.expected), case.name


def test_shuffled_payloads_with_gaps_read_the_same(corpus_store, mount, backend, tmp_path):
    store, cases = corpus_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    rewritten = [c for c in cases if not c.nested and c.n_chunks > 1][:12]
    for case in rewritten:
        for shard in corpus.shard_files(copy, case):
            corpus.rewrite_shard_shuffled(shard, case.n_chunks, case.index_location, case.index_endian,
                                          case.index_crc, seed=3, gap=11)
    mnt = backend.mount(mount, backend.store(copy))
    for case in rewritten:
        assert corpus.arrays_equal(zarr.open_array(mnt.path / case.path, mode="r")[...], case.expected), case.name
        assert chunk_files_in_view(mnt.path, case) == set(expected_chunk_files(copy, case))


def test_a_rewritten_shard_is_seen_after_the_attribute_timeout(corpus_store, mount, backend, tmp_path):
    store, cases = corpus_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    case = next(c for c in cases if c.name == "zarr_2d_end_crc_default_slash")
    backing = backend.store(copy)
    mnt = backend.mount(mount, backing, "--attr-timeout", "0.2")
    before = zarr.open_array(mnt.path / case.path, mode="r")[...]
    changed = case.expected.copy()
    changed[0, 0] += 1
    zarr.open_array(copy / case.path, mode="r+")[0, 0] = changed[0, 0]
    backing.put(f"{case.path}/c/0/0", (copy / case.path / "c" / "0" / "0").read_bytes())  # s3: the other client's PUT
    time.sleep(0.5 + (1.0 if backend.is_s3 else 0))  # s3: and a listing is reused for 1 s (docs/s3.md)
    after = zarr.open_array(mnt.path / case.path, mode="r")[...]
    assert corpus.arrays_equal(before, case.expected)
    assert corpus.arrays_equal(after, changed)
