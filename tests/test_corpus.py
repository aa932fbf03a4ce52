"""Sanity checks of the test corpus itself (tests/corpus.py), independent of zarrfs.

They pin down that every case really holds its `expected` values according to
zarr-python 3 (and tensorstore), that the Case layout fields describe the files on
disk, that rewritten shards stay valid and that corrupted ones really are broken.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorstore as ts
import zarr

try:  # tests/ may or may not be a package, depending on how pytest imports it
    from . import corpus
except ImportError:
    import corpus

ALL = corpus.case_names()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, dict[str, corpus.Case]]:
    root = tmp_path_factory.mktemp("corpus") / "store"
    cases = corpus.build_corpus(root)
    return root, {c.name: c for c in cases}


@pytest.fixture
def case(request, built) -> corpus.Case:
    return built[1][request.param]


def _zarr_read(root: pathlib.Path, case: corpus.Case):
    return zarr.open_array(zarr.storage.LocalStore(root, read_only=True), path=case.path, mode="r")[...]


def _ts_read(root: pathlib.Path, case: corpus.Case) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / case.path)}}
    return ts.open(spec, open=True, read=True).result().read().result()


def _read_outcome(root: pathlib.Path, case: corpus.Case):
    """What zarr-python 3 makes of an array: its values, or the exception it raised."""
    try:
        return _zarr_read(root, case)
    except Exception as exc:  # any failure counts as "rejected"
        return exc


def _copy_array(built, case: corpus.Case, dst: pathlib.Path) -> pathlib.Path:
    """Private copy of one array of the built corpus (zarr.json + shards) so a test can mangle it."""
    root, _ = built
    shutil.copytree(root / case.path, dst / case.path)
    return dst


def _layout(case: corpus.Case) -> dict:
    return dict(n_chunks=case.n_chunks, location=case.index_location, endian=case.index_endian, crc=case.index_crc)


def _present(index: np.ndarray) -> list[int]:
    return [i for i, (off, n) in enumerate(index) if not (off == corpus.EMPTY and n == corpus.EMPTY)]


def _file_order(index: np.ndarray) -> list[int]:
    return sorted(_present(index), key=lambda i: int(index[i, 0]))


# --------------------------------------------------------------------------------------
# The corpus covers what it promises
# --------------------------------------------------------------------------------------


def test_cases_unique_and_complete(built):
    _, cases = built
    assert list(cases) == ALL
    assert len(set(ALL)) == len(ALL)
    assert 30 <= len(ALL) <= 50
    assert len({c.path for c in cases.values()}) == len(ALL)


def test_required_variants_covered(built):
    _, cases = built

    def having(*tags):
        return [c.name for c in cases.values() if set(tags) <= c.features]

    for tags in [
        ("zarr",), ("tensorstore",),
        ("index_start",), ("index_end",), ("no_crc",), ("crc",), ("index_big", "crc"),
        ("missing",), ("empty_shard",), ("nan_fill",), ("nonzero_fill",), ("edge_shard",), ("edge_chunk",),
        ("key_default/",), ("key_default.",), ("key_v2.",), ("key_v2/",),
        ("uint8",), ("int16",), ("float32",), ("float64",), ("complex64",), ("bool",),
        ("data_big",), ("zstd",), ("gzip",), ("blosc",), ("transpose",),
        ("attributes",), ("dimension_names",), ("in_group",),
        ("tensorstore", "2d", "key_default/"), ("tensorstore", "index_start"), ("tensorstore", "no_crc"),
        ("tensorstore", "key_v2."), ("tensorstore", "key_v2/"), ("tensorstore", "missing"),
        ("tensorstore", "edge_shard"), ("tensorstore", "compressed"),
    ]:
        assert having(*tags), f"no case with {tags}"
    for ndim in range(6):
        assert having(f"{ndim}d"), f"no {ndim}-d case"
    assert len(having("nested")) >= 2
    assert any(c.path.count("/") >= 2 for c in cases.values()), "no array nested two groups deep"


def test_store_scaffold(built):
    root, _ = built
    root_meta = json.loads((root / "zarr.json").read_text())
    assert root_meta["node_type"] == "group" and root_meta["attributes"]["title"]
    assert not (root / ".zgroup").exists(), "root must be a pure v3 group"
    assert zarr.open_group(root, path="group1/sub", mode="r").attrs["depth"] == 2
    assert (root / "README.txt").read_text().startswith("zarrfs")
    assert (root / "notes" / "info.txt").is_file()

    unsharded = zarr.open_array(root, path="plain/unsharded_v3", mode="r")
    assert unsharded.shards is None
    np.testing.assert_array_equal(unsharded[...], np.arange(100).reshape(10, 10))
    v2 = zarr.open_array(root / "plain" / "v2_array", mode="r", zarr_format=2)
    assert (root / "plain" / "v2_array" / ".zarray").is_file()
    np.testing.assert_array_equal(v2[...], np.linspace(0, 1, 48, dtype="float32").reshape(8, 6))


# --------------------------------------------------------------------------------------
# Every case: values, metadata and shard layout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL, indirect=True)
def test_zarr_reads_expected(built, case):
    root, _ = built
    got = _zarr_read(root, case)
    assert got.dtype == case.expected.dtype
    assert corpus.arrays_equal(got, case.expected)


@pytest.mark.parametrize("case", ALL, indirect=True)
def test_tensorstore_reads_expected(built, case):
    root, _ = built
    assert corpus.arrays_equal(_ts_read(root, case), case.expected)


@pytest.mark.parametrize("case", ALL, indirect=True)
def test_metadata_matches_case(built, case):
    root, _ = built
    arr = zarr.open_array(root, path=case.path, mode="r")
    assert arr.shape == case.expected.shape
    assert tuple(arr.shards) == case.shard_shape
    meta = json.loads((root / case.path / "zarr.json").read_text())
    assert meta["chunk_key_encoding"]["name"] == case.chunk_key_encoding["name"]
    assert meta.get("dimension_names") is None or "dimension_names" in case.features
    if "attributes" in case.features:
        assert meta["attributes"]
    # The innermost chunk shape, following nested sharding codecs down.
    codec = meta["codecs"][0]
    while codec["name"] == "sharding_indexed":
        chunk_shape = tuple(codec["configuration"]["chunk_shape"])
        codec = codec["configuration"]["codecs"][0]
    assert chunk_shape == case.inner_chunks


@pytest.mark.parametrize("case", ALL, indirect=True)
def test_shard_layout_matches_data(built, case):
    """Writers omit fill-value chunks from the index and skip all-fill shards; present
    payloads lie in the file, outside the index, without overlapping each other."""
    root, _ = built
    expected_files = []
    for coords in itertools.product(*map(range, case.shard_grid)):
        fills = [case.chunk_is_fill(coords, i) for i in range(case.n_chunks)]
        shard = case.shard_path(root, coords)
        if all(fills):
            assert not shard.exists(), f"{shard} holds only fill values but was written"
            continue
        expected_files.append(shard)
        index = corpus.read_shard_index(shard, **_layout(case))
        assert [not f for f in fills] == [i in _present(index) for i in range(case.n_chunks)]
        size = shard.stat().st_size
        index_size = case.n_chunks * 16 + 4 * case.index_crc
        lo, hi = (index_size, size) if case.index_location == "start" else (0, size - index_size)
        spans = sorted((int(index[i, 0]), int(index[i, 0] + index[i, 1])) for i in _present(index))
        assert all(lo <= a < b <= hi for a, b in spans)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert corpus.shard_files(root, case) == sorted(expected_files)


# --------------------------------------------------------------------------------------
# Shard helpers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("crc", [True, False])
def test_write_shard_layout(tmp_path, location, endian, crc):
    shard = tmp_path / "shard"
    chunks = {0: b"aaaa", 2: b"bb", 5: b"cccccc"}
    corpus.write_shard(shard, chunks, 6, location, endian, crc, order=[5, 0, 2], gap=3)
    index = corpus.read_shard_index(shard, 6, location, endian, crc)
    assert _present(index) == [0, 2, 5]
    assert _file_order(index) == [5, 0, 2]
    assert corpus.read_shard_chunks(shard, 6, location, endian, crc) == chunks
    index_size = 6 * 16 + 4 * crc
    first = index_size if location == "start" else 3  # leading gap only with the index at the end
    assert int(index[5, 0]) == first
    assert int(index[0, 0]) == first + 6 + 3
    assert shard.stat().st_size == index_size + 12 + 3 * (2 if location == "start" else 3)


@pytest.mark.parametrize("case", ALL, indirect=True)
@pytest.mark.parametrize("gap", [0, 5])
def test_write_shard_reversed_reads_identically(built, case, gap, tmp_path):
    dst = _copy_array(built, case, tmp_path)
    for shard in corpus.shard_files(dst, case):
        chunks = corpus.read_shard_chunks(shard, **_layout(case))
        corpus.write_shard(shard, chunks, order=sorted(chunks, reverse=True), gap=gap, **_layout(case))
    assert corpus.arrays_equal(_zarr_read(dst, case), case.expected)


@pytest.mark.parametrize("case", ALL, indirect=True)
@pytest.mark.parametrize("seed", [0, 3])
def test_rewrite_shard_shuffled_reads_identically(built, case, seed, tmp_path):
    dst = _copy_array(built, case, tmp_path)
    for shard in corpus.shard_files(dst, case):
        before = corpus.read_shard_chunks(shard, **_layout(case))
        order_before = _file_order(corpus.read_shard_index(shard, **_layout(case)))
        corpus.rewrite_shard_shuffled(shard, seed=seed, **_layout(case))
        index = corpus.read_shard_index(shard, **_layout(case))
        assert corpus.read_shard_chunks(shard, **_layout(case)) == before
        if seed == 0 and len(before) > 1:
            assert _file_order(index) == order_before[::-1]
    assert corpus.arrays_equal(_zarr_read(dst, case), case.expected)
    assert corpus.arrays_equal(_ts_read(dst, case), case.expected)


# --------------------------------------------------------------------------------------
# Corruptions are really corrupt
# --------------------------------------------------------------------------------------

CRC_CASES = [
    "zarr_2d_end_crc_default_slash",
    "zarr_2d_start_crc_default_slash",
    "zarr_2d_end_bigcrc_v2_dot",
    "zarr_2d_nested_sharding",
    "ts_2d_start_bigcrc_default_dot",
    "ts_0d_float64",
]
ANY_CASES = CRC_CASES + [
    "zarr_2d_end_nocrc_default_dot",
    "zarr_2d_start_nocrc_v2_slash",
    "zarr_4d_complex64_zstd",
    "ts_2d_end_nocrc_default_slash",
    "ts_2d_float64_blosc_start",
]


def _copy_with_first_shard(built, case: corpus.Case, dst: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int]:
    """``(dst, shard, chunk)``: a private copy of the case's array in ``dst`` to damage, its first
    shard file, and the first chunk present in that shard."""
    _copy_array(built, case, dst)
    shard = corpus.shard_files(dst, case)[0]
    return dst, shard, _present(corpus.read_shard_index(shard, **_layout(case)))[0]


def _assert_broken(dst: pathlib.Path, case: corpus.Case) -> None:
    outcome = _read_outcome(dst, case)
    assert isinstance(outcome, Exception) or not corpus.arrays_equal(outcome, case.expected)


@pytest.mark.parametrize("case", CRC_CASES, indirect=True)
def test_corrupt_checksum(built, case, tmp_path):
    dst, shard, _ = _copy_with_first_shard(built, case, tmp_path)
    corpus.corrupt_checksum(shard, case.index_location)
    with pytest.raises(ValueError, match="checksum"):
        corpus.read_shard_index(shard, **_layout(case))
    _assert_broken(dst, case)


@pytest.mark.parametrize("case", ANY_CASES, indirect=True)
def test_corrupt_entry_past_end(built, case, tmp_path):
    dst, shard, chunk = _copy_with_first_shard(built, case, tmp_path)
    size = shard.stat().st_size
    corpus.corrupt_entry_past_end(shard, chunk=chunk, **_layout(case))
    index = corpus.read_shard_index(shard, **_layout(case))  # CRC still valid
    assert int(index[chunk, 0]) > size
    _assert_broken(dst, case)


@pytest.mark.parametrize("case", ANY_CASES, indirect=True)
def test_corrupt_entry_into_index(built, case, tmp_path):
    dst, shard, chunk = _copy_with_first_shard(built, case, tmp_path)
    corpus.corrupt_entry_into_index(shard, chunk=chunk, **_layout(case))
    index = corpus.read_shard_index(shard, **_layout(case))  # CRC still valid
    size, index_size = shard.stat().st_size, case.n_chunks * 16 + 4 * case.index_crc
    index_start = 0 if case.index_location == "start" else size - index_size
    off, nbytes = int(index[chunk, 0]), int(index[chunk, 1])
    assert off == index_start and 0 < nbytes <= index_size
    _assert_broken(dst, case)


@pytest.mark.parametrize("case", ANY_CASES, indirect=True)
@pytest.mark.parametrize("keep", ["short_of_index", "empty"])
def test_truncate_shard(built, case, keep, tmp_path):
    dst, shard, _ = _copy_with_first_shard(built, case, tmp_path)
    corpus.truncate_shard(shard, case.n_chunks * 16 - 1 if keep == "short_of_index" else 0)
    with pytest.raises(ValueError):
        corpus.read_shard_index(shard, **_layout(case))
    _assert_broken(dst, case)
