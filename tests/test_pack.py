"""``zarrfs pack`` and ``zarrfs unpack`` (SPEC §12) on stores written by real writers.

Sources: a Zarr v2 store written by zarr-python 2.18 (its own venv), and per-chunk
Zarr v3 stores written by zarr-python 3 and tensorstore from the interop corpus'
specs (its dtypes, codecs, orders, key encodings, 0-D to 5-D, sparse and edge
chunks, groups), each also holding an array that is sharded already. Each is packed
with the CLI and checked: zarr-python 3 and tensorstore read the same values; every
inner chunk's bytes are its source file's; unpack gives back the source chunk files
byte for byte. Then: kill -9 during a pack and re-run (nothing complete rewritten),
a real Dask LocalCluster, three ``--part``s as three processes, and bad input.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from corpus import _SPECS, _fill_json, _key_encoding_json, _make_data, arrays_equal
from legacy import zarr2_read, zarr2_run
from zarrfs.format.metadata import parse_array_document
from zarrfs.format.shard_codec import read_chunks
from zarrfs.format.shard_index import CorruptShard

ZARRFS = [sys.executable, "-m", "zarrfs"]
SHARDS = 2  # small shards, so that small arrays get several, with edge shards
METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}


def zarrfs(*args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI in a session of its own, so that a pack that hangs goes with its pool."""
    command = [*ZARRFS, *map(str, args)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None or proc.returncode < 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_zarr3(path: Path) -> np.ndarray:
    return zarr.open_array(path, mode="r")[...]


def read_tensorstore(path: Path) -> np.ndarray:
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, read=True).result() \
        .read().result()


# -- the sources ---------------------------------------------------------------------------

ZARR2_WRITER = r'''
import sys
import numcodecs, numpy as np, zarr
root = sys.argv[1]
g = zarr.open_group(root, mode="w")
g.attrs.update({"title": "zarr 2 source", "n": 3})
rng = np.random.default_rng(7)

a = g.create_dataset("u1_edge", shape=(21, 30), chunks=(8, 7), dtype="u1", compressor=None, fill_value=5,
                     write_empty_chunks=False)
a[...] = (np.arange(630) % 251).reshape(21, 30)
a[0:8, 7:21] = 5  # two chunks equal the fill value: not written (sparse)
b = g.create_dataset("i2be_F_blosc", shape=(12, 10), chunks=(5, 4), dtype=">i2", order="F", fill_value=7,
                     compressor=numcodecs.Blosc("lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
                     dimension_separator="/")
b[2:11, 1:9] = np.arange(72).reshape(9, 8) - 30
b.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]
b.attrs["units"] = "K"
c = g.create_dataset("f4_nan_gzip", shape=(33,), chunks=(10,), dtype="<f4", fill_value=np.nan,
                     compressor=numcodecs.GZip(level=1), write_empty_chunks=False)
c[5:17] = np.linspace(-1, 1, 12)
c[30] = np.inf
sub = g.create_group("sub")
sub.attrs["kind"] = "subgroup"
deeper = sub.create_group("deeper")
d = deeper.create_dataset("f8_3d_zstd", shape=(6, 7, 8), chunks=(3, 3, 3), dtype="<f8", order="F",
                          compressor=numcodecs.Zstd(), dimension_separator="/")
d[...] = rng.standard_normal((6, 7, 8))
e = g.create_dataset("c8", shape=(9, 9), chunks=(4, 4), dtype="<c8", fill_value=1 + 2j, compressor=None)
e[2:7, 3:9] = (np.arange(30) + 1j * np.arange(30)[::-1]).reshape(5, 6)
f = g.create_dataset("bool_bitshuffle", shape=(17, 13), chunks=(5, 5), dtype=bool, fill_value=False,
                     compressor=numcodecs.Blosc("zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE))
f[...] = (np.arange(221).reshape(17, 13) % 3) == 0
h = g.create_dataset("nofill", shape=(10, 6), chunks=(4, 4), dtype="<i4", fill_value=None,
                     compressor=numcodecs.GZip())
h[...] = np.arange(60).reshape(10, 6)
z = g.create_dataset("zero_d", shape=(), chunks=(), dtype="<i8", fill_value=0)
z[...] = 42
five = g.create_dataset("i2_5d", shape=(3, 2, 4, 3, 5), chunks=(2, 1, 3, 2, 2), dtype="<i2", fill_value=-1,
                        compressor=None, dimension_separator="/")
five[...] = np.arange(360).reshape(3, 2, 4, 3, 5)
s = g.create_dataset("strings", shape=(4,), chunks=(2,), dtype="<U3")  # no exact v3 equivalent
s[...] = ["a", "bb", "ccc", "d"]
with open(root + "/README.txt", "w") as out:
    out.write("a plain file\n")
print("written")
'''
ZARR2_PACKED = ["u1_edge", "i2be_F_blosc", "f4_nan_gzip", "sub/deeper/f8_3d_zstd", "c8", "bool_bitshuffle",
                "nofill", "zero_d", "i2_5d"]
ZARR2_GROUPS = ["", "sub", "sub/deeper"]

PLAIN_SPECS = [s for s in _SPECS if s.nested is None and not s.high_level]
SHARDED_KEPT = "zarr_2d_end_crc_default_slash"  # also written sharded: copied as it is


def write_unsharded(root: Path, spec) -> np.ndarray:
    """The corpus case as a per-chunk array (chunk = its inner chunk, codecs = its inner codecs)."""
    data = _make_data(spec, seed=len(spec.name))
    metadata = {
        "zarr_format": 3, "node_type": "array", "shape": list(spec.shape), "data_type": spec.dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(spec.chunks)}},
        "chunk_key_encoding": _key_encoding_json(spec), "fill_value": _fill_json(spec.fill, np.dtype(spec.dtype)),
        "codecs": list(spec.inner), "attributes": spec.attributes or {},
    }
    if spec.dimension_names is not None:
        metadata["dimension_names"] = list(spec.dimension_names)
    path = root / spec.path
    if spec.writer == "tensorstore":
        meta = {k: v for k, v in metadata.items() if k not in ("zarr_format", "node_type")}
        store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}, "metadata": meta},
                        create=True).result()
        store.write(data).result()
    else:
        path.mkdir(parents=True)
        (path / "zarr.json").write_text(json.dumps(metadata))
        zarr.open_array(path, mode="r+")[...] = data
    return data


def write_v3_source(root: Path, writer: str) -> dict[str, np.ndarray]:
    zarr.open_group(root, mode="w", attributes={"writer": writer})
    for group in ("group1", "group1/sub", "group2"):
        zarr.open_group(root / group, mode="a", attributes={"name": group})
    expected = {spec.path: write_unsharded(root, spec) for spec in PLAIN_SPECS if spec.writer == writer}
    if writer == "zarr":
        from corpus import _write_zarr
        spec = next(s for s in _SPECS if s.name == SHARDED_KEPT)
        kept = _make_data(spec, seed=1)
        _write_zarr(root, spec.__class__(**{**spec.__dict__, "group": "kept"}), kept)
    return expected


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """``{writer: (store, expected values by array path)}``."""
    work = tmp_path_factory.mktemp("sources")
    result = {}
    for writer in ("zarr", "tensorstore"):
        root = work / f"{writer}.zarr"
        result[writer] = (root, write_v3_source(root, writer))
    root = work / "zarr2.zarr"
    assert "written" in zarr2_run(ZARR2_WRITER, str(root))
    values, errors = zarr2_read(root, ZARR2_PACKED, work / "zarr2.npz")
    assert not errors, errors
    result["zarr2"] = (root, values)
    return result


@pytest.fixture(scope="module")
def packed(sources, tmp_path_factory) -> dict[str, tuple[Path, Path, dict, str]]:
    """Each source packed by the CLI: ``{writer: (src, dst, expected, stderr)}``."""
    work = tmp_path_factory.mktemp("packed")
    result = {}
    for writer, (src, expected) in sources.items():
        dst = work / f"{writer}.zarr"
        run = zarrfs("pack", src, dst, "--shards", SHARDS, "--jobs", 2)
        result[writer] = (src, dst, expected, run.stdout, run.stderr)
    return result


# -- packing: values, bytes, metadata ------------------------------------------------------


def source_arrays(src: Path) -> dict[str, Path]:
    """Per-chunk arrays of a source store (v3 zarr.json without sharding, or v2 .zarray)."""
    found = {}
    for meta in list(src.rglob("zarr.json")) + list(src.rglob(".zarray")):
        doc = json.loads(meta.read_text())
        if doc.get("node_type", "array") != "array" or "sharding_indexed" in meta.read_text():
            continue
        if doc.get("dtype") == "<U3":  # copied as it is
            continue
        found[str(meta.parent.relative_to(src))] = meta.parent
    return found


def chunk_files(array: Path) -> dict[tuple[str, ...], bytes]:
    return {p.relative_to(array).parts: p.read_bytes() for p in array.rglob("*")
            if p.is_file() and p.name not in METADATA}


@pytest.mark.parametrize("writer", ["zarr2", "zarr", "tensorstore"])
def test_packed_arrays_read_the_same_with_zarr3_and_tensorstore(packed, writer):
    src, dst, expected, _, _ = packed[writer]
    assert expected
    for path, values in expected.items():
        assert arrays_equal(read_zarr3(dst / path), values), path
        assert arrays_equal(read_tensorstore(dst / path), values), path
        doc = json.loads((dst / path / "zarr.json").read_text())
        assert doc["codecs"][0]["name"] == "sharding_indexed", path


@pytest.mark.parametrize("writer", ["zarr2", "zarr", "tensorstore"])
def test_inner_chunks_are_the_source_files_byte_for_byte(packed, writer):
    src, dst, _, _, _ = packed[writer]
    arrays = source_arrays(src)
    assert len(arrays) >= 9
    for path, array in arrays.items():
        layout = parse_array_document(json.loads((dst / path / "zarr.json").read_text()))
        sources = chunk_files(array)
        found = {}
        for shard in (dst / path).rglob("*"):
            if shard.is_file() and shard.name != "zarr.json":
                coords = layout.key_encoding.decode_prefix(shard.relative_to(dst / path).parts, layout.ndim)
                for local, data in read_chunks(layout, shard.read_bytes()).items():
                    chunk = tuple(s * n + i for s, n, i in zip(coords, layout.chunks_per_shard, local))
                    found[tuple(layout.key_encoding.encode(chunk).split("/"))] = data
        assert found == sources, path


def test_zarr2_metadata_is_what_the_mount_makes(packed):
    src, dst, _, _, _ = packed["zarr2"]
    doc = json.loads((dst / "i2be_F_blosc" / "zarr.json").read_text())
    assert doc["dimension_names"] == ["y", "x"] and doc["attributes"]["units"] == "K"
    assert doc["chunk_key_encoding"] == {"name": "v2", "configuration": {"separator": "/"}}
    sharding = doc["codecs"][0]["configuration"]
    assert sharding["chunk_shape"] == [5, 4] and doc["chunk_grid"]["configuration"]["chunk_shape"] == [10, 8]
    assert sharding["index_codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    assert sharding["index_location"] == "end"
    assert json.loads((dst / "zarr.json").read_text())["attributes"] == {"title": "zarr 2 source", "n": 3}
    assert json.loads((dst / "sub" / "zarr.json").read_text())["attributes"] == {"kind": "subgroup"}
    assert (dst / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
    assert not any(p.name in (".zarray", ".zgroup") for p in dst.rglob("*") if "strings" not in p.parts)


def test_what_cannot_be_packed_exactly_is_copied_as_it_is_with_one_line(packed):
    src, dst, _, _, stderr = packed["zarr2"]
    assert files_of(dst / "strings") == files_of(src / "strings")
    lines = [line for line in stderr.splitlines() if "strings" in line]
    assert len(lines) == 1 and "copied as it is" in lines[0], stderr


def test_sharded_arrays_are_copied_as_they_are(packed):
    src, dst, _, _, _ = packed["zarr"]
    assert files_of(dst / "kept") == files_of(src / "kept")


def test_a_v2_sharding_prototype_array_is_copied_as_it_is(tmp_path):
    from helpers import v2_prototype_array
    array = v2_prototype_array(tmp_path / "src")
    (array / "0.0").write_bytes(bytes(range(40)))  # stands for a shard: copied, never looked into
    zarrfs("pack", tmp_path / "src", tmp_path / "dst")
    assert files_of(tmp_path / "dst" / "proto") == files_of(array)


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_consolidated_metadata_describes_the_sharded_arrays(tmp_path):
    src, values = tmp_path / "src", np.arange(100, dtype="int16").reshape(10, 10)
    zarr.open_group(src, mode="w").create_array("a", shape=(10, 10), chunks=(3, 3), dtype="int16")[...] = values
    zarr.consolidate_metadata(src)
    zarrfs("pack", src, tmp_path / "dst", "--shards", SHARDS)
    root = json.loads((tmp_path / "dst" / "zarr.json").read_text())
    assert root["consolidated_metadata"]["metadata"]["a"] == json.loads((tmp_path / "dst" / "a" / "zarr.json").read_text())
    assert arrays_equal(zarr.open_group(tmp_path / "dst", mode="r", use_consolidated=True)["a"][...], values)


def test_the_summary_counts_files_and_objects(packed):
    src, dst, _, stdout, _ = packed["zarr"]
    before = sum(1 for p in src.rglob("*") if p.is_file())
    after = sum(1 for p in dst.rglob("*") if p.is_file())
    assert f"{before} files before, {after} objects after ({before - after} inodes saved)" in stdout, stdout
    assert "complete" in stdout


@pytest.mark.parametrize("writer", ["zarr", "tensorstore"])
def test_unpack_v3_gives_back_the_source_files(packed, tmp_path, writer):
    src, dst, _, _, _ = packed[writer]
    zarrfs("unpack", dst, tmp_path / "out")
    out, original = files_of(tmp_path / "out"), files_of(src)
    for key in original.keys() | out.keys():
        if key.startswith("kept/"):  # sharded in SRC: unpacked, it is per-chunk
            continue
        if Path(key).name == "zarr.json":
            assert json.loads(out[key]) == json.loads(original[key]), key
        else:
            assert out.get(key) == original.get(key), key


def test_unpack_v2_gives_back_the_zarr2_chunk_files(packed, tmp_path):
    src, dst, _, _, _ = packed["zarr2"]
    zarrfs("unpack", dst, tmp_path / "out", "--view", "v2")
    out, original = files_of(tmp_path / "out"), files_of(src)
    chunks = {k for k in original if Path(k).name not in METADATA}
    assert {k: out.get(k) for k in chunks} == {k: original[k] for k in chunks}
    values, errors = zarr2_read(tmp_path / "out", ZARR2_PACKED, tmp_path / "v.npz")
    assert not errors, errors
    for path in ZARR2_PACKED:
        assert arrays_equal(values[path], packed["zarr2"][2][path]), path


def test_a_second_run_rewrites_nothing(packed, tmp_path):
    src, dst, _, _, _ = packed["tensorstore"]
    copy = tmp_path / "dst"
    shutil.copytree(dst, copy)
    before = versions(copy)
    run = zarrfs("pack", src, copy, "--shards", SHARDS)
    assert versions(copy) == before
    assert " 0 of " in run.stdout and "0 metadata files" in run.stdout, run.stdout


def test_progress_names_arrays_shards_bytes_rate_and_eta_and_stays_off_pipes(packed):
    from zarrfs.pack import Totals

    totals = Totals(arrays=2, arrays_done=1, shards=10, shards_done=5, objects=12, objects_done=6, bytes=5 << 20)
    line = totals.line()
    assert all(part in line for part in ("arrays 1/2", "shards 5/10", "5.0 MiB", "/s", "ETA")), line
    assert all("\r" not in stderr for _, _, _, _, stderr in packed.values())


def test_dry_run_prints_the_plan_and_writes_nothing(sources, tmp_path):
    src, _ = sources["zarr2"]
    run = zarrfs("pack", src, tmp_path / "dst", "--dry-run")
    assert "strings: v2, copied as it is" in run.stdout and "u1_edge: v2, 13 chunk files" in run.stdout
    assert "plan:" in run.stdout and not (tmp_path / "dst").exists()


# -- interrupted and resumed ---------------------------------------------------------------


def versions(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """One array of 4,096 chunk files: 256 shards of 4 x 4 chunks, time to be killed."""
    root = tmp_path_factory.mktemp("many") / "src.zarr"
    g = zarr.open_group(root, mode="w", attributes={"big": True})
    data = np.arange(256 * 256, dtype="uint16").reshape(256, 256)
    data[0:64, 0:64] = 0  # sparse: 256 chunks absent
    g.create_array("a", shape=data.shape, chunks=(4, 4), dtype="uint16", compressors=None,
                   config={"write_empty_chunks": False})[...] = data
    return root, data


def complete_shards(array: Path) -> dict[str, tuple[int, int]]:
    """Shard files whose index is valid, and their (inode, mtime)."""
    layout = parse_array_document(json.loads(json.dumps(_sharded_doc(array))))
    found = {}
    for shard in array.rglob("*"):
        if shard.is_file() and not shard.name.startswith(".zarrfs") and shard.name != "zarr.json":
            try:
                read_chunks(layout, shard.read_bytes())
            except CorruptShard:
                continue
            found[str(shard.relative_to(array))] = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    return found


def _sharded_doc(array: Path) -> dict:
    return {"zarr_format": 3, "node_type": "array", "shape": [256, 256], "data_type": "uint16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 16]}},
            "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [4, 4], "codecs": [{"name": "bytes"}],
                "index_codecs": [{"name": "bytes"}, {"name": "crc32c"}], "index_location": "end"}}]}


def shards_written(array: Path) -> int:
    return sum(1 for p in array.rglob("*") if p.is_file() and not p.name.startswith(".zarrfs"))


def kill_when(proc: subprocess.Popen, array: Path, shards: int) -> None:
    """Wait until ``shards`` shard files exist (or the pack ends), then kill -9 its whole job."""
    try:
        while proc.poll() is None and shards_written(array) < shards:
            time.sleep(0.002)
        # a random instant within the next shard or two: between a temporary and its rename, an fsync ...
        time.sleep(random.uniform(0, 0.005))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job: the pool's processes too, as a lost node
        proc.wait(timeout=10)


def test_kill_9_at_random_points_then_rerun(many_shards, tmp_path):
    src, data = many_shards
    dst = tmp_path / "dst"
    random.seed(13)
    kept: dict[str, tuple[int, int]] = {}
    for target in sorted(random.sample(range(1, 240), 3)):
        proc = subprocess.Popen([*ZARRFS, "pack", str(src), str(dst), "--shards", "4", "--jobs", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        kill_when(proc, dst / "a", target)
        if (dst / "zarr.json").exists():
            break
        assert not (dst / "a" / "zarr.json").exists(), "metadata before all its shards"
        now = complete_shards(dst / "a")
        assert all(now[k] == v for k, v in kept.items()), "a complete shard was rewritten"
        kept = now
    assert kept, "no shard written before the kills: make the kills later"
    run = zarrfs("pack", src, dst, "--shards", "4", "--jobs", "2")
    after = complete_shards(dst / "a")
    assert {k: after[k] for k in kept} == kept, "a complete shard was rewritten"
    assert len(after) == 256 - 16, run.stdout
    assert f"{256 - 16 - len(kept)} of {256 - 16} objects written now" in run.stdout, run.stdout
    assert arrays_equal(read_zarr3(dst / "a"), data) and arrays_equal(read_tensorstore(dst / "a"), data)
    assert not [p for p in dst.rglob(".zarrfs*")], "temporaries left behind"


# -- Dask and batch parts -------------------------------------------------------------------


@pytest.fixture
def dask_cluster():
    from distributed import LocalCluster

    # Workers as threads of this process (0.05 s to start, against 2 s for processes), on tcp so
    # that the pack process can reach the scheduler.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                           dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def test_pack_on_a_dask_cluster(many_shards, dask_cluster, tmp_path):
    src, data = many_shards
    run = zarrfs("pack", src, tmp_path / "dst", "--shards", "4", "--dask", dask_cluster)
    assert "240 of 240 objects written now" in run.stdout and "complete" in run.stdout, run.stdout
    assert arrays_equal(read_zarr3(tmp_path / "dst" / "a"), data)


def test_three_parts_as_three_processes(sources, tmp_path, cleanup):
    src, expected = sources["zarr"]
    dst = tmp_path / "dst"
    procs = [cleanup.process(subprocess.Popen([*ZARRFS, "pack", str(src), str(dst), "--shards", str(SHARDS),
                                               "--part", f"{i}/3", "--jobs", "1"],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for i in (1, 2, 3)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert any("; complete" in out for out, _ in outputs), outputs
    for path, values in expected.items():
        assert arrays_equal(read_zarr3(dst / path), values), path
    assert json.loads((dst / "zarr.json").read_text())["attributes"] == {"writer": "zarr"}


def test_one_part_alone_writes_no_group_metadata(many_shards, tmp_path):
    src, data = many_shards
    dst = tmp_path / "dst"
    run = zarrfs("pack", src, dst, "--shards", "4", "--part", "1/2", "--jobs", "1")
    assert "other parts still to finish" in run.stdout
    assert not (dst / "zarr.json").exists() and not (dst / "a" / "zarr.json").exists()
    zarrfs("pack", src, dst, "--shards", "4", "--part", "2/2", "--jobs", "1")
    assert arrays_equal(read_zarr3(dst / "a"), data)


# -- bad input -------------------------------------------------------------------------------


def one_error_line(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zarrfs: error: "), run.stderr
    assert all(w in lines[0] for w in words), run.stderr


def test_missing_src(tmp_path):
    one_error_line(zarrfs("pack", tmp_path / "nope", tmp_path / "dst", check=False), "no such directory")
    assert not (tmp_path / "dst").exists()


def test_dst_neither_empty_nor_a_partial_pack(many_shards, tmp_path):
    src, _ = many_shards
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "other.txt").write_text("mine")
    one_error_line(zarrfs("pack", src, tmp_path / "dst", check=False), "other.txt", "partial pack")
    (tmp_path / "file").write_text("x")
    one_error_line(zarrfs("pack", src, tmp_path / "file", check=False), "not a directory")


def test_dst_packed_with_other_shards(many_shards, tmp_path):
    src, _ = many_shards
    zarrfs("pack", src, tmp_path / "dst", "--shards", "4")
    one_error_line(zarrfs("pack", src, tmp_path / "dst", "--shards", "8", check=False), "differs")


def test_a_chunk_file_that_is_no_key_of_its_array(tmp_path):
    src = tmp_path / "src"
    zarr.create_array(src, shape=(8,), chunks=(4,), dtype="uint8")[...] = 1
    (src / "c" / "9").write_bytes(b"x" * 4)  # outside the grid
    one_error_line(zarrfs("pack", src, tmp_path / "dst", check=False), "c/9", "not a chunk key")
    assert not list((tmp_path / "dst").rglob("*"))


@pytest.mark.parametrize("args", [["--part", "0/3"], ["--part", "4/3"], ["--part", "x"], ["--shards", "0"],
                                  ["--part", "1/2", "--dask", "tcp://127.0.0.1:1"]])
def test_bad_arguments(tmp_path, args):
    one_error_line(zarrfs("pack", tmp_path, tmp_path / "dst", *args, check=False))


def test_unpack_into_a_non_empty_directory(packed, tmp_path):
    _, dst, _, _, _ = packed["zarr"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    one_error_line(zarrfs("unpack", dst, tmp_path / "out", check=False), "not empty")


# -- object stores ---------------------------------------------------------------------------


def test_pack_into_and_unpack_from_s3(seaweedfs, many_shards, tmp_path, monkeypatch):
    """DST on the test's SeaweedFS (the identity in AWS_* variables), then unpacked back to a
    directory: the chunk files of SRC, byte for byte."""
    from backends import credentials_environment

    for name, value in credentials_environment().items():
        monkeypatch.setenv(name, value)
    src, _ = many_shards
    url, endpoint = seaweedfs.url(), ("--endpoint-url", seaweedfs.endpoint)
    run = zarrfs("pack", src, url, "--shards", "4", "--jobs", "2", *endpoint)
    assert "240 of 240 objects written now" in run.stdout and "; complete" in run.stdout, run.stdout
    again = zarrfs("pack", src, url, "--shards", "4", *endpoint)
    assert " 0 of 240 objects written now" in again.stdout, again.stdout
    zarrfs("unpack", url, tmp_path / "out", *endpoint)
    out, original = files_of(tmp_path / "out"), files_of(src)
    assert {k: v for k, v in out.items() if "zarr.json" not in k} == \
        {k: v for k, v in original.items() if "zarr.json" not in k}


def test_pack_from_s3(seaweedfs, many_shards, tmp_path, monkeypatch):
    """SRC on the test's SeaweedFS (chunk files read with ObjectStore.read_many): the same
    shards as packing the local SRC."""
    from backends import credentials_environment

    for name, value in credentials_environment().items():
        monkeypatch.setenv(name, value)
    src, data = many_shards
    url, endpoint = seaweedfs.url(), ("--endpoint-url", seaweedfs.endpoint)
    zarrfs("pack", src, tmp_path / "packed", "--shards", "1")  # 1 chunk a shard: the chunk files, unpacked
    zarrfs("unpack", tmp_path / "packed", url, *endpoint)  # SRC's chunk files, into the bucket
    zarrfs("pack", url, tmp_path / "from-s3", "--shards", "4", "--jobs", "1", *endpoint)
    zarrfs("pack", src, tmp_path / "from-disk", "--shards", "4")
    assert files_of(tmp_path / "from-s3") == files_of(tmp_path / "from-disk")
    assert arrays_equal(read_zarr3(tmp_path / "from-s3" / "a"), data)


# -- the fast paths: reading chunk files a directory at a time, the planner's rows --------------


def _hostile_files(root, tmp_path, big: bytes) -> None:
    """Directory ``d`` of a store at ``root``: files ``a`` (4 bytes), ``empty`` and ``big``,
    and what a reader must refuse without following or blocking: symlinks inside and out of
    the store, a FIFO, a directory; and ``away``, a symlink to a directory outside it."""
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"aaaa")
    (root / "d" / "empty").write_bytes(b"")
    (root / "d" / "big").write_bytes(big)
    (root / "d" / "link").symlink_to("a")  # inside the store, and still not followed
    (root / "d" / "out").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_bytes(b"secret")
    os.mkfifo(root / "d" / "fifo")  # never blocks the reader
    (root / "d" / "sub").mkdir()
    (root / "away").symlink_to(tmp_path)  # a directory outside the store


def test_read_many_reads_regular_files_only_and_follows_nothing(tmp_path):
    from zarrfs.store.base import TooLarge
    from zarrfs.store.local import LocalStore

    root = tmp_path / "store"
    _hostile_files(root, tmp_path, big=b"x" * 3 * 2**20)
    store = LocalStore(str(root))
    assert store.read_many("d", ["a", "missing", "empty", "big"]) == [b"aaaa", None, b"", b"x" * 3 * 2**20]
    assert store.read_many("nowhere", ["a", "b"]) == [None, None]
    for name in ("link", "out", "fifo", "sub"):
        with pytest.raises(OSError) as error:
            store.read_many("d", ["a", name])
        assert error.value.errno in (errno.EIO, errno.EISDIR), name
    with pytest.raises(OSError):
        store.read_many("away", ["secret"])
    for name in ("../d/a", "", ".", ".."):
        with pytest.raises(ValueError):
            store.read_many("d", [name])
    with pytest.raises(TooLarge):
        store.read_many("d", ["a", "big"], limit=2**20)
    assert store.read_many("d", ["a"], limit=4) == [b"aaaa"]
    with pytest.raises(TooLarge):
        store.read_many("d", ["a"], limit=3)


def test_the_planner_reads_key_directories_as_the_walker_would(tmp_path):
    """The planner's directory-at-a-time path for packed arrays gives the plan (shards,
    counts) and the errors that the walker's file-by-file path gives."""
    import io

    from zarrfs.pack import _Planner
    from zarrfs.store.local import LocalStore
    from zarrfs.walk import Progress, StoreWalker

    src = tmp_path / "src"
    a = zarr.create_array(src / "a", shape=(30, 20, 10), chunks=(2, 3, 4), dtype="uint8",
                          config={"write_empty_chunks": True})
    a[...] = 1
    zarr.create_array(src / "v2", shape=(9, 9), chunks=(2, 2), dtype="uint8", zarr_format=2,
                      chunk_key_encoding={"name": "v2", "separator": "/"})[...] = 2
    os.remove(src / "a" / "c" / "3" / "2" / "1")  # sparse
    plans = {}

    class Walker(_Planner):  # the walker's own way, file by file
        _array = StoreWalker._array

    for planner in (_Planner, Walker):
        p = planner(LocalStore(str(src)), Progress(io.StringIO()), 4, io.StringIO())
        p.walk()
        plans[planner.__name__] = [(x.key, sorted(x.shards), x.chunk_files) for x in p.plan.arrays], \
            p.plan.files_before, sorted(p.plan.errors)
    assert plans["_Planner"] == plans["Walker"] and not plans["_Planner"][2]
    # strays in key directories: each is an error, named as the walker names it
    for stray in ("c/0/0/01", "c/0/0/x", "c/0/0/9", "c/0/99/0", "c/3/2/1/0", "c/x/0/0", "c/0/0/.zarrfs-tmp-x"):
        path = src / "a" / stray
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"s")
    (src / "v2" / "0" / "7").write_bytes(b"s")
    for planner in (_Planner, Walker):
        p = planner(LocalStore(str(src)), Progress(io.StringIO()), 4, io.StringIO())
        p.walk()
        plans[planner.__name__] = [(x.key, sorted(x.shards), x.chunk_files) for x in p.plan.arrays], \
            p.plan.files_before, sorted(p.plan.errors)
    assert plans["_Planner"] == plans["Walker"]
    assert len(plans["_Planner"][2]) == 8, plans["_Planner"][2]


@pytest.mark.parametrize("location", ["start", "end"])
def test_encode_shard_puts_chunks_in_c_order_with_the_index(location):
    from zarrfs.format.shard_codec import encode_shard
    from zarrfs.format.shard_index import IndexFormat

    layout = parse_array_document(json.loads(json.dumps({**_sharded_doc(Path(".")), "codecs": [
        {"name": "sharding_indexed", "configuration": {
            "chunk_shape": [4, 4], "codecs": [{"name": "bytes"}],
            "index_codecs": [{"name": "bytes"}, {"name": "crc32c"}], "index_location": location}}]})))
    fmt = layout.levels[0]
    assert isinstance(fmt, IndexFormat)
    chunks = {(3, 1): b"last", (0, 2): b"first!", (1, 0): b"", (2, 3): b"x" * 100}
    shard = encode_shard(fmt, chunks)
    assert read_chunks(layout, shard) == chunks
    payload = b"first!" + b"" + b"x" * 100 + b"last"
    assert (shard[fmt.nbytes:] if location == "start" else shard[:-fmt.nbytes]) == payload


# -- shards straight from the chunk files (replace_durably_from_files) --------------------------


def _files_store(tmp_path):
    """A source store with a few chunk files (and hostile entries) and an empty destination."""
    from zarrfs.store.local import LocalStore

    root = tmp_path / "src"
    _hostile_files(root, tmp_path, big=bytes(range(256)) * 12289)  # 3 MiB and then some
    (root / "e").mkdir()
    (root / "e" / "z").write_bytes(b"zz")
    (tmp_path / "dst").mkdir()
    return LocalStore(str(root)), LocalStore(str(tmp_path / "dst"))


def _tail(sizes):
    return b"|" + json.dumps(sizes).encode()


def _left_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_a_file_made_from_files_is_them_in_order_then_the_tail(tmp_path):
    src, dst = _files_store(tmp_path)
    big = (tmp_path / "src" / "d" / "big").read_bytes()
    groups = [("d", ["a", "missing", "empty", "big"]), ("nowhere", ["x", "y"]), ("e", ["z"])]
    sizes = dst.replace_durably_from_files("arr/c/0", src, groups, _tail)
    assert sizes == [4, None, 0, len(big), None, None, 2]
    assert (tmp_path / "dst" / "arr" / "c" / "0").read_bytes() == b"aaaa" + big + b"zz" + _tail(sizes)
    assert _left_in(tmp_path / "dst") == ["arr/c/0"]  # no temporary left
    # the same through the simple way (read_many, then replace_durably), as other stores take it
    from zarrfs.store.local import replace_from_read_many

    assert replace_from_read_many(dst, "other", src, groups, _tail) == sizes
    assert dst.read("other") == dst.read("arr/c/0")
    # nothing to write (finish says so): no file, no temporary
    assert dst.replace_durably_from_files("none", src, [("d", ["missing"])], lambda sizes: None) == [None]
    assert _left_in(tmp_path / "dst") == ["arr/c/0", "other"]


@pytest.mark.parametrize("refused", ["copy_file_range", "both"])
def test_a_file_made_from_files_without_copy_file_range(tmp_path, monkeypatch, refused):
    """Across filesystems (EXDEV) sendfile copies instead; where that fails too, read and write."""
    src, dst = _files_store(tmp_path)

    def no(*args, **kwargs):
        raise OSError(errno.EXDEV if "offset_dst" in kwargs else errno.EINVAL, "refused")

    monkeypatch.setattr(os, "copy_file_range", no)
    if refused == "both":
        monkeypatch.setattr(os, "sendfile", no)
    groups = [("d", ["a", "big", "empty"]), ("e", ["z"])]
    sizes = dst.replace_durably_from_files("k", src, groups, _tail)
    assert dst.read("k") == b"aaaa" + (tmp_path / "src" / "d" / "big").read_bytes() + b"zz" + _tail(sizes)


def test_a_file_made_from_files_refuses_links_and_special_files_and_keeps_limits(tmp_path):
    from zarrfs.store.base import TooLarge

    src, dst = _files_store(tmp_path)
    dst.replace_durably("k", b"old")
    for name in ("link", "out", "fifo", "sub"):
        with pytest.raises(OSError) as error:
            dst.replace_durably_from_files("k", src, [("d", ["a", name])], _tail)
        assert error.value.errno in (errno.EIO, errno.EISDIR), name
    with pytest.raises(OSError):
        dst.replace_durably_from_files("k", src, [("away", ["secret"])], _tail)
    for name in ("../d/a", "", ".", ".."):
        with pytest.raises(ValueError):
            dst.replace_durably_from_files("k", src, [("d", [name])], _tail)
    with pytest.raises(TooLarge):
        dst.replace_durably_from_files("k", src, [("d", ["a", "big"])], _tail, limit=2**20)
    with pytest.raises(TooLarge):
        dst.replace_durably_from_files("k", src, [("d", ["a"])], _tail, limit=3)
    assert dst.read("k") == b"old" and _left_in(tmp_path / "dst") == ["k"]  # as it was, no temporary
    assert dst.replace_durably_from_files("k", src, [("d", ["a"])], _tail, limit=4) == [4]


@pytest.mark.parametrize("change", ["shrinks", "grows"])
def test_a_source_file_that_changes_while_copied_is_an_error_and_writes_nothing(tmp_path, monkeypatch, change):
    """The size fstat gave is the size copied, or EIO: never a shard whose index lies."""
    src, dst = _files_store(tmp_path)
    dst.replace_durably("k", b"old")
    big = tmp_path / "src" / "d" / "big"
    real = os.copy_file_range

    def changing(src_fd, dst_fd, count, *args, **kwargs):
        if os.fstat(src_fd).st_ino == big.stat().st_ino and not changing.done:
            changing.done = True
            with open(big, "r+b") as f:
                f.truncate(1000) if change == "shrinks" else f.write(b"\0" * (4 << 20))
        return real(src_fd, dst_fd, count, *args, **kwargs)

    changing.done = False
    monkeypatch.setattr(os, "copy_file_range", changing)
    with pytest.raises(OSError) as error:
        dst.replace_durably_from_files("k", src, [("d", ["a", "big"])], _tail)
    assert error.value.errno == errno.EIO and "changed while being copied" in str(error.value)
    assert "d/big" in str(error.value)
    assert dst.read("k") == b"old" and _left_in(tmp_path / "dst") == ["k"]


def test_a_pack_whose_chunk_file_changes_leaves_no_complete_looking_shard(many_shards, tmp_path, monkeypatch):
    """In the pack: the error names the file, the shard is not at its key, no metadata is written."""
    import io

    from zarrfs.pack import pack

    src = tmp_path / "src"
    shutil.copytree(many_shards[0], src, symlinks=True)
    real = os.copy_file_range

    def shrinking(src_fd, dst_fd, count, *args, **kwargs):
        if not shrinking.done and os.fstat(src_fd).st_size > 1:
            shrinking.done = True
            os.truncate(f"/proc/self/fd/{src_fd}", 1)  # as if someone else truncated it meanwhile
        return real(src_fd, dst_fd, count, *args, **kwargs)

    shrinking.done = False
    monkeypatch.setattr(os, "copy_file_range", shrinking)
    with pytest.raises(OSError, match="changed while being copied"):
        pack(str(src), str(tmp_path / "dst"), 4, jobs=1, out=io.StringIO(), err=io.StringIO())
    left = _left_in(tmp_path / "dst")
    assert not any(name.endswith("zarr.json") for name in left)
    assert not any(".zarrfs-tmp-" in name for name in left)
    # the same command again finishes it (the file stays one byte long now)
    assert pack(str(src), str(tmp_path / "dst"), 4, jobs=1, out=io.StringIO(), err=io.StringIO()) == 0
    assert files_of(tmp_path / "dst") == files_of_packed(src, tmp_path / "again")


def files_of_packed(src: Path, out: Path) -> dict[str, bytes]:
    zarrfs("pack", src, out, "--shards", "4")
    return files_of(out)


def test_object_store_read_many_fetches_at_once_in_order(seaweedfs, s3_credentials):
    """GETs overlap (up to READ_MANY_AT_ONCE), the answers come in the order asked, None for
    a missing object, and ``limit`` holds for each."""
    import threading

    from zarrfs.store.base import TooLarge
    from zarrfs.store.object import READ_MANY_AT_ONCE, ObjectStore

    store = ObjectStore(seaweedfs.url(), endpoint_url=seaweedfs.endpoint)
    names = [str(i) for i in range(40)]
    for name in names:
        store.replace_durably(f"rm/{name}", name.encode() * int(name))
    at_once = {"now": 0, "most": 0}
    lock = threading.Lock()
    real = store.read

    def counting(key, limit=None):
        with lock:
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])
        try:
            time.sleep(0.05)  # a slow round trip: the others start meanwhile
            return real(key, limit)
        finally:
            with lock:
                at_once["now"] -= 1

    store.read = counting
    asked = names[:20] + ["missing"] + names[20:]
    assert store.read_many("rm", asked) == [None if n == "missing" else n.encode() * int(n) for n in asked]
    assert 1 < at_once["most"] <= READ_MANY_AT_ONCE
    assert store.read_many("nowhere", ["a", "b"]) == [None, None]
    assert store.read_many("rm", []) == [] and store.read_many("rm", ["3"]) == [b"333"]
    with pytest.raises(TooLarge):
        store.read_many("rm", names, limit=60)
    assert store.read_many("rm", names[:31], limit=60) == [n.encode() * int(n) for n in names[:31]]
