"""Real writers write through the mount; real readers read the backing store (SPEC §5, §9).

Writers: zarr-python 2.18 (its own venv) through the v2 view, zarr-python 3
(unsharded arrays, concurrent writers) through the v3 view, tensorstore's
``zarr3`` and ``zarr`` drivers, ``cp -r`` and ``rsync -a``. Every writer also
writes the very same thing into a plain directory (the reference); after
``zarrfs umount`` the backing store must hold only shards and metadata, and
zarr-python 3 and tensorstore must read from it exactly what the reference
holds. A remount must show the metadata that was written (up to the documented
normalizations) and zarr-python 2 / 3 must read the same values through it.
"""

from __future__ import annotations

import copy
import errno
import itertools
import json
import math
import os
import shutil
import subprocess
import tempfile
from multiprocessing.pool import ThreadPool
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorstore as ts
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

from conftest import list_files
from corpus import arrays_equal
from legacy import zarr2_read, zarr2_run

V2_METADATA = {".zarray", ".zattrs", ".zgroup", ".zmetadata"}


# --------------------------------------------------------------------------------------
# Helpers: what the backing store holds, how readers read it
# --------------------------------------------------------------------------------------


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def backing_nodes(store: Path) -> dict[str, dict]:
    """``{path: zarr.json document}`` of every node of a backing store."""
    nodes = {}
    for directory, _, files in os.walk(store):
        if "zarr.json" in files:
            rel = os.path.relpath(directory, store)
            nodes["" if rel == "." else rel] = read_json(Path(directory) / "zarr.json")
    return nodes


def shard_keys(doc: dict) -> set[str]:
    """Every shard key in the grid of a (sharded) backing array."""
    shape, shard = doc["shape"], doc["chunk_grid"]["configuration"]["chunk_shape"]
    grid = [math.ceil(s / c) for s, c in zip(shape, shard)]
    encoding = doc.get("chunk_key_encoding", {"name": "default"})
    name, separator = encoding["name"], (encoding.get("configuration") or {}).get("separator")
    keys = set()
    for coords in itertools.product(*(range(n) for n in grid)):
        if name == "default":
            keys.add((separator or "/").join(["c", *map(str, coords)]))
        else:
            keys.add((separator or ".").join(map(str, coords)) if coords else "0")
    return keys


def n_shards(doc: dict) -> int:
    shape, shard = doc["shape"], doc["chunk_grid"]["configuration"]["chunk_shape"]
    return math.prod(math.ceil(s / c) for s, c in zip(shape, shard))


def assert_only_shards_and_metadata(store: Path, plain_files: frozenset[str] = frozenset()) -> None:
    """The backing store holds shards, zarr.json files and the plain files named; nothing else."""
    files = list_files(store)
    for f in files:
        name = os.path.basename(f)
        assert not name.endswith(".partial"), f"temporary file left behind: {f}"
        assert not name.startswith(".zarrfs"), f"zarrfs temporary file left behind: {f}"
        assert "__lock" not in name, f"tensorstore lock file left behind: {f}"
        assert name not in V2_METADATA, f"v2 metadata in the backing store: {f}"
    nodes = backing_nodes(store)
    accounted = set(plain_files)
    for path, doc in nodes.items():
        accounted.add(os.path.join(path, "zarr.json").lstrip("/") if path else "zarr.json")
        if doc.get("node_type") != "array":
            continue
        assert doc["codecs"][0]["name"] == "sharding_indexed", f"{path} is not sharded: {doc['codecs']}"
        mine = {os.path.relpath(f, path) if path else f for f in files if f.startswith(path + "/") or not path}
        mine.discard("zarr.json")
        assert len(mine) <= n_shards(doc), f"{path}: {len(mine)} files beside zarr.json for {n_shards(doc)} shards"
        assert mine <= shard_keys(doc), f"{path}: files that are not shard keys: {sorted(mine - shard_keys(doc))}"
        accounted |= {os.path.join(path, f) for f in mine}
    assert files <= accounted, f"unexpected files in the backing store: {sorted(files - accounted)}"


def assert_sharded_like(backing: dict, written: dict, chunks_per_shard: int) -> None:
    """``backing`` is the sharded form of the unsharded array document ``written``."""
    sharding = backing["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    config = sharding["configuration"]
    written_chunks = written["chunk_grid"]["configuration"]["chunk_shape"]
    assert config["chunk_shape"] == written_chunks
    assert config["codecs"] == written["codecs"]
    assert config["index_codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    assert config.get("index_location", "end") == "end"
    for chunk, shard in zip(written_chunks, backing["chunk_grid"]["configuration"]["chunk_shape"]):
        assert shard % chunk == 0 and 1 <= shard // chunk <= chunks_per_shard
    unsharded = dict(backing, codecs=written["codecs"], chunk_grid=written["chunk_grid"])
    assert unsharded == written


def read_zarr3(path: Path) -> np.ndarray:
    return zarr.open_array(path, mode="r")[...]


def read_tensorstore(path: Path, driver: str = "zarr3") -> np.ndarray:
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}}
    return ts.open(spec, read=True).result().read().result()


def same_values(got: np.ndarray, expected: np.ndarray) -> bool:
    return (arrays_equal(got, expected) and got.dtype.kind == expected.dtype.kind
            and got.dtype.itemsize == expected.dtype.itemsize)


def dtype_zero(dtype: str):
    kind = dtype.lstrip("<>|=")[0]
    return False if kind == "b" else [0.0, 0.0] if kind == "c" else 0.0 if kind == "f" else 0


def normalized_zarray(doc: dict) -> dict:
    """A written .zarray up to the documented normalizations (SPEC §5, docs/codecs.md): a missing
    ``dimension_separator`` is ".", ``fill_value: null`` becomes the dtype's zero, and zstd's
    ``checksum: false`` is left out."""
    doc = copy.deepcopy(doc)
    doc.setdefault("dimension_separator", ".")
    if doc.get("fill_value") is None:
        doc["fill_value"] = dtype_zero(doc["dtype"])
    for codec in [*(doc.get("filters") or []), doc.get("compressor")]:
        if codec and codec.get("id") == "zstd" and codec.get("checksum") is False:
            del codec["checksum"]
    doc["filters"] = doc.get("filters") or None
    return doc


def v2_metadata(root: Path, nodes: list[str]) -> dict[str, dict]:
    """``{node/.zarray: doc, ...}`` for the v2 metadata files of ``nodes`` that exist under ``root``."""
    shown = {}
    for node in nodes:
        for name in (".zarray", ".zattrs", ".zgroup"):
            path = root / node / name
            if path.exists():
                shown[f"{node}/{name}"] = read_json(path)
    return shown


# --------------------------------------------------------------------------------------
# 1. zarr-python 2.18 through the v2 view
# --------------------------------------------------------------------------------------

ZARR2_WRITER = r'''
import sys
import numcodecs
import numpy as np
import zarr

assert zarr.__version__.startswith("2."), zarr.__version__
root = sys.argv[1] + "/data.zarr"

# A first hierarchy, wiped below by mode="w" on the same group.
first = zarr.open_group(root, mode="w")
first.attrs["version"] = 1
first.create_dataset("gone", shape=(12,), chunks=(3,), dtype="<i4")[...] = np.arange(12)
first.create_group("gone_group").attrs["x"] = 1

g = zarr.open_group(root, mode="w")
g.attrs.update({"title": "interop", "n": 3, "nested": {"a": [1, 2]}})
sub = g.create_group("sub")
sub.attrs["kind"] = "subgroup"

u1 = g.create_dataset("u1", shape=(20, 30), chunks=(8, 8), dtype="u1", compressor=None)
u1[...] = (np.arange(600) % 251).reshape(20, 30)
u1[3:11, 5:19] = 7
u1.attrs["a"] = 1
u1.attrs.update({"b": [1, 2], "c": None})
del u1.attrs["a"]

i2le = g.create_dataset("i2le", shape=(50,), chunks=(7,), dtype="<i2", fill_value=-3,
                        compressor=numcodecs.Zstd(level=3))
i2le[10:33] = np.arange(23) * -100
i2le[40:41] = 1234

i2be = sub.create_dataset("i2be", shape=(12, 10), chunks=(5, 4), dtype=">i2", order="F", fill_value=7,
                          compressor=numcodecs.Blosc("lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
                          dimension_separator="/")
i2be[2:11, 1:9] = np.arange(72).reshape(9, 8) - 30
i2be.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]
i2be.attrs["units"] = "K"

f4 = g.create_dataset("f4nan", shape=(33,), chunks=(10,), dtype="<f4", fill_value=np.nan,
                      compressor=numcodecs.GZip(level=1))
f4[5:17] = np.linspace(-1, 1, 12)
f4[30] = np.inf

f8 = g.create_dataset("f8", shape=(6, 7, 8), chunks=(3, 3, 3), dtype="<f8", order="F",
                      compressor=numcodecs.Zstd(), dimension_separator="/")
f8[...] = np.random.default_rng(0).standard_normal((6, 7, 8))
f8[1:4, 2:5, 3:7] = -0.5

c8 = g.create_dataset("c8", shape=(9, 9), chunks=(4, 4), dtype="<c8", fill_value=1 + 2j, compressor=None)
c8[2:7, 3:9] = (np.arange(30) + 1j * np.arange(30)[::-1]).reshape(5, 6)

b = g.create_dataset("bool", shape=(17, 13), chunks=(5, 5), dtype=bool, fill_value=False,
                     compressor=numcodecs.Blosc("zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE))
b[...] = (np.arange(221).reshape(17, 13) % 3) == 0
b[4:9, 4:9] = True

nofill = g.create_dataset("nofill", shape=(10, 6), chunks=(4, 4), dtype="<i4", fill_value=None,
                          compressor=numcodecs.GZip())
nofill[...] = np.arange(60).reshape(10, 6)

grow = g.create_dataset("grow", shape=(10, 10), chunks=(4, 4), dtype="<u2", fill_value=11)
grow[...] = 1
grow.resize(15, 22)
grow[12:15, 18:22] = 2
grow.attrs["_ARRAY_DIMENSIONS"] = ["row", "col"]

shrink = g.create_dataset("shrink", shape=(20, 20), chunks=(5, 5), dtype="<i8", fill_value=-1,
                          dimension_separator="/")
shrink[...] = np.arange(400).reshape(20, 20)
shrink.resize(7, 12)
shrink.resize(20, 20)  # the chunks the shrink dropped read as the fill value now
shrink[18:20, 18:20] = 5

# mode="w" over an existing array, with another dtype and chunking
first_version = zarr.open_array(root + "/replaced", mode="w", shape=(10, 10), chunks=(2, 2), dtype="u1")
first_version[...] = 9
replaced = zarr.open_array(root + "/replaced", mode="w", shape=(7, 5), chunks=(3, 3), dtype="<f8",
                           fill_value=0.5, compressor=None)
replaced[1:5, 1:4] = 2.5

# mode="w" over an existing group that holds an array; overwrite=True over an array
over = g.create_group("over")
over.create_dataset("a", shape=(40,), chunks=(4,), dtype="<i4")[...] = np.arange(40)
over = zarr.open_group(root + "/over", mode="w")
over.attrs["generation"] = 2
again = over.create_dataset("b", shape=(8,), chunks=(8,), dtype="<u4")
again[...] = 5
again = over.create_dataset("b", shape=(9, 3), chunks=(2, 2), dtype="<i2", fill_value=4, overwrite=True)
again[0:3, :] = -1

g.attrs["title"] = "interop, updated"
g.attrs["dropped"] = True
del g.attrs["dropped"]

with open(root + "/README.txt", "w") as f:  # a plain file the user leaves on purpose
    f.write("written by zarr-python 2\n")
print("written")
'''

ZARR2_ARRAYS = ["u1", "i2le", "sub/i2be", "f4nan", "f8", "c8", "bool", "nofill", "grow", "shrink",
                "replaced", "over/b"]
ZARR2_GROUPS = ["", "sub", "over"]
ZARR2_SHARDS = 2


@pytest.fixture(scope="module")
def zarr2_written(tmp_path_factory, module_mount):
    work = tmp_path_factory.mktemp("zarr2-writes")
    reference, store = work / "reference", work / "store"
    reference.mkdir()
    store.mkdir()
    zarr2_run(ZARR2_WRITER, str(reference))
    mnt = module_mount(store, "--view", "v2", "--flush-after", "0.5", "--shards", str(ZARR2_SHARDS))
    assert "written" in zarr2_run(ZARR2_WRITER, str(mnt.path))
    shown = v2_metadata(mnt.path / "data.zarr", ZARR2_GROUPS + ZARR2_ARRAYS)
    mounted = zarr2_read(mnt.path / "data.zarr", ZARR2_ARRAYS, work / "mounted.npz")  # before umount
    mnt.unmount()
    expected, errors = zarr2_read(reference / "data.zarr", ZARR2_ARRAYS, work / "expected.npz")
    assert not errors
    return SimpleNamespace(work=work, reference=reference / "data.zarr", store=store, root=store / "data.zarr",
                           shown=shown, mounted=mounted, expected=expected, log=mnt.log_text())


@pytest.fixture(scope="module")
def zarr2_remounted(zarr2_written, module_mount):
    mnt = module_mount(zarr2_written.store, "--view", "v2")
    values, errors = zarr2_read(mnt.path / "data.zarr", ZARR2_ARRAYS, zarr2_written.work / "remounted.npz")
    shown = v2_metadata(mnt.path / "data.zarr", ZARR2_GROUPS + ZARR2_ARRAYS)
    return SimpleNamespace(mnt=mnt, values=values, errors=errors, shown=shown)


def test_zarr2_writes_leave_only_shards_and_metadata(zarr2_written):
    assert_only_shards_and_metadata(zarr2_written.store, frozenset({"data.zarr/README.txt"}))
    assert (zarr2_written.root / "README.txt").read_text() == "written by zarr-python 2\n"
    nodes = backing_nodes(zarr2_written.root)
    assert {p for p, d in nodes.items() if d["node_type"] == "array"} == set(ZARR2_ARRAYS)
    assert {p for p, d in nodes.items() if d["node_type"] == "group"} == set(ZARR2_GROUPS)
    for gone in ("gone", "gone_group", "over/a"):  # wiped by mode="w"
        assert not (zarr2_written.root / gone).exists()
    assert "ERROR" not in zarr2_written.log and "refused" not in zarr2_written.log, zarr2_written.log


@pytest.mark.parametrize("path", ZARR2_ARRAYS)
def test_zarr2_arrays_are_stored_sharded_with_v2_keys(zarr2_written, path):
    written = read_json(zarr2_written.reference / path / ".zarray")
    backing = read_json(zarr2_written.root / path / "zarr.json")
    config = backing["codecs"][0]["configuration"]
    assert backing["codecs"][0]["name"] == "sharding_indexed"
    assert config["chunk_shape"] == written["chunks"]
    assert config["index_codecs"][-1] == {"name": "crc32c"} and config.get("index_location", "end") == "end"
    assert backing["shape"] == written["shape"]
    assert backing["chunk_key_encoding"] == {
        "name": "v2", "configuration": {"separator": written.get("dimension_separator", ".")}}
    for chunk, shard in zip(written["chunks"], backing["chunk_grid"]["configuration"]["chunk_shape"]):
        assert shard % chunk == 0 and 1 <= shard // chunk <= ZARR2_SHARDS
    assert "_ARRAY_DIMENSIONS" not in backing.get("attributes", {})


def test_zarr2_dimension_names_and_attributes_reach_the_backing_store(zarr2_written):
    nodes = backing_nodes(zarr2_written.root)
    assert nodes["sub/i2be"]["dimension_names"] == ["y", "x"]
    # the v2 fill value is kept as xarray's _FillValue too (docs/codecs.md, "Fill values and xarray")
    assert nodes["sub/i2be"]["attributes"] == {"units": "K", "_FillValue": 7}
    assert nodes["grow"]["dimension_names"] == ["row", "col"]
    assert nodes["u1"]["attributes"] == {"b": [1, 2], "c": None, "_FillValue": 0}
    assert nodes[""]["attributes"] == {"title": "interop, updated", "n": 3, "nested": {"a": [1, 2]}}
    assert nodes["sub"]["attributes"] == {"kind": "subgroup"}
    assert nodes["over"]["attributes"] == {"generation": 2}
    assert nodes["nofill"]["fill_value"] == 0  # v2 fill_value null -> the dtype's zero


@pytest.mark.parametrize("path", ZARR2_ARRAYS)
def test_zarr2_reads_its_writes_back_through_the_mount_at_once(zarr2_written, path):
    values, errors = zarr2_written.mounted
    assert path not in errors, errors.get(path)
    assert same_values(values[path], zarr2_written.expected[path])


@pytest.mark.parametrize("path", ZARR2_ARRAYS)
def test_zarr_python_3_reads_what_zarr2_wrote(zarr2_written, path):
    assert same_values(read_zarr3(zarr2_written.root / path), zarr2_written.expected[path])


@pytest.mark.parametrize("path", ZARR2_ARRAYS)
def test_tensorstore_reads_what_zarr2_wrote(zarr2_written, path):
    assert same_values(read_tensorstore(zarr2_written.root / path), zarr2_written.expected[path])


def test_zarr2_metadata_reads_back_as_written_through_the_mount(zarr2_written):
    check_v2_metadata(zarr2_written.shown, zarr2_written.reference)


def test_zarr2_metadata_reads_back_as_written_after_a_remount(zarr2_written, zarr2_remounted):
    check_v2_metadata(zarr2_remounted.shown, zarr2_written.reference)


def check_v2_metadata(shown: dict, reference: Path) -> None:
    written = v2_metadata(reference, ZARR2_GROUPS + ZARR2_ARRAYS)
    assert set(shown) == set(written)
    for name, doc in written.items():
        if name.endswith(".zarray"):
            assert normalized_zarray(shown[name]) == normalized_zarray(doc), name
        else:
            assert shown[name] == doc, name


@pytest.mark.parametrize("path", ZARR2_ARRAYS)
def test_zarr2_reads_the_same_values_after_a_remount(zarr2_written, zarr2_remounted, path):
    assert path not in zarr2_remounted.errors, zarr2_remounted.errors.get(path)
    assert same_values(zarr2_remounted.values[path], zarr2_written.expected[path])


def test_the_remount_changed_nothing(zarr2_written, zarr2_remounted):
    files = list_files(zarr2_written.store)
    zarr2_remounted.mnt.unmount()
    assert list_files(zarr2_written.store) == files


# --------------------------------------------------------------------------------------
# 2. zarr-python 3, unsharded arrays, through the v3 view
# --------------------------------------------------------------------------------------

V3_ARRAYS = ["u1", "sub/i2be", "f4", "f8", "c8", "bool", "replaced", "grow", "shrink", "parallel", "threads"]
V3_GROUPS = ["", "sub"]
V3_SHARDS = 3


def write_zarr3(root: Path) -> None:
    """The same writes, into a plain directory or through the mount."""
    first = zarr.open_group(root, mode="w", attributes={"version": 1})
    first.create_array("gone", shape=(10,), chunks=(2,), dtype="int8")[...] = 1
    g = zarr.open_group(root, mode="w", attributes={"title": "v3 interop"})  # overwrites the group
    g.create_group("sub", attributes={"kind": "sub"})
    a = g.create_array("u1", shape=(30, 40), chunks=(10, 10), dtype="uint8", compressors=None, fill_value=3,
                       dimension_names=["y", "x"], attributes={"units": "counts"})
    a[...] = (np.arange(1200) % 256).reshape(30, 40).astype("u1")
    a[5:25, 12:17] = 200
    a.attrs["units"] = "photons"
    a.attrs.update({"more": [1, 2.5, None]})
    b = g.create_array("sub/i2be", shape=(100,), chunks=(16,), dtype="int16", serializer=BytesCodec(endian="big"),
                       compressors=ZstdCodec(level=1), fill_value=-1)
    b[7:61] = np.arange(54) * -9
    c = g.create_array("f4", shape=(25, 25), chunks=(10, 10), dtype="float32", fill_value=np.nan,
                       filters=[TransposeCodec(order=(1, 0))], compressors=GzipCodec(level=2))
    c[3:19, 4:21] = np.linspace(0, 1, 16 * 17).reshape(16, 17)
    d = g.create_array("f8", shape=(8, 9, 10), chunks=(4, 4, 4), dtype="float64",
                       compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()])
    d[...] = np.random.default_rng(1).standard_normal((8, 9, 10))
    e = g.create_array("c8", shape=(12, 12), chunks=(5, 5), dtype="complex64",
                       chunk_key_encoding={"name": "v2", "separator": "."}, fill_value=0)
    e[1:11, 2:9] = (np.arange(70) - 1j * np.arange(70)).reshape(10, 7)
    f = g.create_array("bool", shape=(50,), chunks=(8,), dtype="bool",
                       chunk_key_encoding={"name": "default", "separator": "."})
    f[::3] = True
    r = g.create_array("replaced", shape=(10,), chunks=(2,), dtype="int32")
    r[...] = 1
    r = g.create_array("replaced", shape=(6, 6), chunks=(4, 3), dtype="uint16", fill_value=9, overwrite=True)
    r[0:2, :] = 4
    grow = g.create_array("grow", shape=(10, 10), chunks=(4, 4), dtype="int32", fill_value=-5)
    grow[...] = 1
    grow.resize((14, 21))
    grow[12:14, 17:21] = 2
    shrink = g.create_array("shrink", shape=(20, 20), chunks=(5, 5), dtype="int64")
    shrink[...] = np.arange(400).reshape(20, 20)
    shrink.resize((7, 12))
    shrink.resize((20, 20))
    shrink[18:20, 18:20] = 5
    g.attrs["title"] = "v3 interop, updated"
    # zarr-python 3 writes the 100 chunks of one assignment concurrently
    g.create_array("parallel", shape=(200, 200), chunks=(20, 20), dtype="uint16", compressors=None)[...] = (
        np.arange(40000, dtype="u2").reshape(200, 200))
    # ten threads, each writing its own rows (and zarr's own concurrency inside each)
    threads = g.create_array("threads", shape=(100, 120), chunks=(10, 12), dtype="float32",
                             compressors=ZstdCodec(level=1))

    def rows(i: int) -> None:
        threads[i * 10:(i + 1) * 10, :] = np.arange(i * 1200, (i + 1) * 1200, dtype="f4").reshape(10, 120)

    with ThreadPool(10) as pool:
        pool.map(rows, range(10))


@pytest.fixture(scope="module")
def zarr3_written(tmp_path_factory, module_mount):
    work = tmp_path_factory.mktemp("zarr3-writes")
    reference, store = work / "reference" / "v3.zarr", work / "store"
    store.mkdir()
    write_zarr3(reference)
    mnt = module_mount(store, "--flush-after", "0.5", "--shards", str(V3_SHARDS))
    write_zarr3(mnt.path / "v3.zarr")
    mounted = {path: read_zarr3(mnt.path / "v3.zarr" / path) for path in V3_ARRAYS}  # before umount
    mnt.unmount()
    return SimpleNamespace(reference=reference, store=store, root=store / "v3.zarr", mounted=mounted,
                           log=mnt.log_text())


def test_zarr3_writes_leave_only_shards_and_metadata(zarr3_written):
    assert_only_shards_and_metadata(zarr3_written.store)
    nodes = backing_nodes(zarr3_written.root)
    assert {p for p, d in nodes.items() if d["node_type"] == "array"} == set(V3_ARRAYS)
    assert {p for p, d in nodes.items() if d["node_type"] == "group"} == set(V3_GROUPS)
    assert not (zarr3_written.root / "gone").exists()
    assert "ERROR" not in zarr3_written.log and "refused" not in zarr3_written.log, zarr3_written.log


@pytest.mark.parametrize("path", V3_ARRAYS)
def test_zarr3_arrays_are_stored_sharded_around_the_written_chunks(zarr3_written, path):
    assert_sharded_like(read_json(zarr3_written.root / path / "zarr.json"),
                        read_json(zarr3_written.reference / path / "zarr.json"), V3_SHARDS)


def test_zarr3_group_metadata_is_stored_as_written(zarr3_written):
    for group in V3_GROUPS:
        assert read_json(zarr3_written.root / group / "zarr.json") == \
            read_json(zarr3_written.reference / group / "zarr.json")


@pytest.mark.parametrize("path", V3_ARRAYS)
def test_zarr3_reads_its_writes_back_through_the_mount_at_once(zarr3_written, path):
    assert same_values(zarr3_written.mounted[path], read_zarr3(zarr3_written.reference / path))


@pytest.mark.parametrize("path", V3_ARRAYS)
def test_zarr_python_3_and_tensorstore_read_what_zarr3_wrote(zarr3_written, path):
    expected = read_zarr3(zarr3_written.reference / path)
    assert same_values(read_zarr3(zarr3_written.root / path), expected)
    assert same_values(read_tensorstore(zarr3_written.root / path), expected)


def test_zarr3_metadata_and_values_read_back_after_a_remount(zarr3_written, mount):
    mnt = mount(zarr3_written.store, "--read-only")
    for node in V3_GROUPS + V3_ARRAYS:
        assert read_json(mnt.path / "v3.zarr" / node / "zarr.json") == \
            read_json(zarr3_written.reference / node / "zarr.json"), node
    for path in V3_ARRAYS:
        assert same_values(read_zarr3(mnt.path / "v3.zarr" / path), read_zarr3(zarr3_written.reference / path))


# --------------------------------------------------------------------------------------
# 3. tensorstore through the mount
# --------------------------------------------------------------------------------------

TS3_ARRAYS = {
    "a": {"shape": [40, 30], "data_type": "int32", "chunk_grid": {"name": "regular", "configuration": {
        "chunk_shape": [8, 8]}}, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                           {"name": "zstd", "configuration": {"level": 1}}], "fill_value": -7},
    "b": {"shape": [50], "data_type": "float32", "chunk_grid": {"name": "regular", "configuration": {
        "chunk_shape": [7]}}, "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}},
          "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                     {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle",
                                                         "typesize": 4, "blocksize": 0}},
                     {"name": "crc32c"}], "fill_value": "NaN"},
    "c": {"shape": [10, 10, 10], "data_type": "uint16", "chunk_grid": {"name": "regular", "configuration": {
        "chunk_shape": [4, 4, 4]}}, "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
          "codecs": [{"name": "transpose", "configuration": {"order": [2, 1, 0]}},
                     {"name": "bytes", "configuration": {"endian": "big"}},
                     {"name": "gzip", "configuration": {"level": 1}}], "fill_value": 3},
}

TS2_ARRAYS = {
    "a": {"shape": [30, 20], "chunks": [8, 8], "dtype": "<f8", "order": "F", "dimension_separator": "/",
          "compressor": {"id": "zstd", "level": 1}, "fill_value": "NaN", "filters": None},
    "b": {"shape": [17], "chunks": [5], "dtype": ">u2", "order": "C",
          "compressor": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0},
          "fill_value": 4, "filters": None},
    "c": {"shape": [9, 11], "chunks": [4, 4], "dtype": "|b1", "order": "C", "compressor": None,
          "fill_value": False, "filters": None},
}


def ts_writes(driver: str, root: Path, arrays: dict) -> dict[str, np.ndarray]:
    """Create each array, write it in two overlapping steps; the expected values."""
    expected = {}
    for name, metadata in arrays.items():
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(root / name)}, "metadata": metadata}
        array = ts.open(spec, create=True, delete_existing=True).result()
        values = np.asarray(array.read().result())  # all fill value
        rng = np.random.default_rng(len(name) + len(driver))
        first = tuple(slice(0, max(1, n * 2 // 3)) for n in values.shape)
        second = tuple(slice(n // 3, n) for n in values.shape)
        for region in (first, second):
            block = values[region]
            new = (rng.random(block.shape) > 0.5) if block.dtype == bool else \
                (rng.random(block.shape) * 1000).astype(block.dtype)
            array[region].write(new).result()
            values[region] = new
        expected[name] = values
    return expected




def ts_store(tmp_path: Path, mount, view: str):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--view", view, "--flush-after", "0.5", "--shards", "2")
    driver, arrays = ("zarr3", TS3_ARRAYS) if view == "v3" else ("zarr", TS2_ARRAYS)
    return store, mnt, driver, arrays, ts_writes(driver, mnt.path / "ts.zarr", arrays)


@pytest.mark.parametrize("view", ["v3", "v2"])
def test_tensorstore_writes_through_the_mount(tmp_path, mount, view):
    store, mnt, driver, arrays, expected = ts_store(tmp_path, mount, view)
    mnt.unmount()
    assert "ERROR" not in mnt.log_text() and "refused" not in mnt.log_text(), mnt.log_text()
    assert_only_shards_and_metadata(store)
    for name in arrays:
        backing = read_json(store / "ts.zarr" / name / "zarr.json")
        assert backing["codecs"][0]["name"] == "sharding_indexed"
        assert backing["codecs"][0]["configuration"]["chunk_shape"] == \
            (arrays[name]["chunk_grid"]["configuration"]["chunk_shape"] if view == "v3" else arrays[name]["chunks"])
        assert same_values(read_zarr3(store / "ts.zarr" / name), expected[name]), name
        assert same_values(read_tensorstore(store / "ts.zarr" / name), expected[name]), name
    again = mount(store, "--view", view, "--read-only")
    for name in arrays:
        assert same_values(read_tensorstore(again.path / "ts.zarr" / name, driver), expected[name]), name


@pytest.mark.parametrize("view", ["v3", "v2"])
def test_tensorstore_reads_its_writes_back_through_the_mount_at_once(tmp_path, mount, view):
    store, mnt, driver, arrays, expected = ts_store(tmp_path, mount, view)
    for name in arrays:
        assert same_values(read_tensorstore(mnt.path / "ts.zarr" / name, driver), expected[name]), name


def test_a_chunk_renamed_onto_twice_stays_visible(tmp_path, mount):
    """The deterministic form: make the kernel forget the key's old node id between create and rename."""
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        pytest.skip("needs root to drop the dentry cache")
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store)
    zarr.create_array(mnt.path / "a", shape=(4,), chunks=(2,), dtype="u1", compressors=None, fill_value=0)
    (mnt.path / "a" / "c").mkdir()
    key, lock = mnt.path / "a" / "c" / "1", mnt.path / "a" / "c" / "1.__lock"
    lock.write_bytes(b"\x01\x01")
    os.rename(lock, key)
    assert key.read_bytes() == b"\x01\x01"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"\x02\x02")
        Path("/proc/sys/vm/drop_caches").write_text("2")  # unused dentries and inodes: the key's old node id
        os.rename(lock, key)
    finally:
        os.close(fd)
    try:
        assert key.read_bytes() == b"\x02\x02"
    finally:
        mnt.unmount()
        assert np.array_equal(read_zarr3(store / "a"), [0, 0, 2, 2])  # the data itself is not lost




def test_tensorstore_delete_existing_replaces_an_array_through_the_mount(tmp_path, mount):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--flush-after", "60")
    first = dict(TS3_ARRAYS["a"], chunk_grid={"name": "regular", "configuration": {"chunk_shape": [5, 5]}})
    ts_writes("zarr3", mnt.path / "ts.zarr", {"a": first})
    expected = ts_writes("zarr3", mnt.path / "ts.zarr", {"a": TS3_ARRAYS["a"]})  # delete_existing
    mnt.unmount()
    assert_only_shards_and_metadata(store)
    assert read_json(store / "ts.zarr" / "a" / "zarr.json")["codecs"][0]["configuration"]["chunk_shape"] == [8, 8]
    assert same_values(read_tensorstore(store / "ts.zarr" / "a"), expected["a"])


# --------------------------------------------------------------------------------------
# 4. cp -r and rsync -a of plain per-chunk stores
# --------------------------------------------------------------------------------------

PLAIN_V3 = ["slash", "dot", "v2keys", "sub/deep"]
FLAT_V3 = ["dot", "v2keys"]  # chunk files directly in the array directory ("c.0", "0.0"): no key directories
NESTED_V3 = ["slash", "sub/deep"]  # chunk files in key directories ("c/0/0")


def write_plain_v3(root: Path) -> None:
    g = zarr.open_group(root, mode="w", attributes={"origin": "plain"})
    g.create_array("slash", shape=(30, 20), chunks=(6, 5), dtype="int32", fill_value=-2,
                   dimension_names=["t", "x"])[2:29, 1:18] = np.arange(27 * 17).reshape(27, 17)
    g.create_array("dot", shape=(40,), chunks=(6,), dtype="float64", fill_value=np.nan,
                   chunk_key_encoding={"name": "default", "separator": "."})[5:33] = np.linspace(0, 1, 28)
    g.create_array("v2keys", shape=(11, 12), chunks=(4, 4), dtype="uint8",
                   chunk_key_encoding={"name": "v2", "separator": "."})[...] = np.arange(132).reshape(11, 12)
    g.create_group("sub", attributes={"level": 2})
    g.create_array("sub/deep", shape=(6, 6, 6), chunks=(2, 3, 4), dtype="complex64",
                   compressors=GzipCodec(level=1))[1:5, :, 2:] = 1 - 2j


def check_packed(store: Path, plain: Path, arrays: list[str]) -> None:
    """After umount: only shards and metadata, metadata as copied, the same values."""
    assert_only_shards_and_metadata(store)
    for path in arrays:
        written = read_json(plain / path / "zarr.json")
        backing = read_json(store / path / "zarr.json")
        assert_sharded_like(backing, written, 8)
        expected = read_zarr3(plain / path)
        assert same_values(read_zarr3(store / path), expected), path
        assert same_values(read_tensorstore(store / path), expected), path


@pytest.fixture(scope="module")
def plain_v3(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plain-v3") / "plain.zarr"
    write_plain_v3(root)
    return root


def empty_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    return store


def rsync(source: Path, target: Path, *options: str) -> None:
    result = subprocess.run(["rsync", "-a", *options, f"{source}/", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def cp_r(source: Path, target: Path) -> None:
    """``cp -r`` (GNU cp: open(O_CREAT), write, close; no renames), as users copy a store."""
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)


def copy_file(source: Path, target: Path) -> None:
    """Copy a file as rsync does: a temporary name beside it, then rename onto the name."""
    temp = target.parent / f".{target.name}.tmp0123"
    shutil.copyfile(source, temp)
    os.replace(temp, target)


def copy_metadata_last(source: Path, target: Path, metadata: tuple[str, ...]) -> None:
    """Copy like ``cp -r`` does when readdir happens to list the chunk files before the metadata."""
    target.mkdir()
    for name in sorted(os.listdir(source), key=lambda n: (n in metadata, n)):
        if (source / name).is_dir():
            copy_metadata_last(source / name, target / name, metadata)
        else:
            copy_file(source / name, target / name)


def copy_directories_first(source: Path, target: Path, metadata: tuple[str, ...]) -> None:
    """Copy like rsync's generator and receiver: every directory first, then the files of each
    directory, its metadata before its chunks."""
    for directory, _, _ in os.walk(source):
        (target / os.path.relpath(directory, source)).mkdir(parents=True, exist_ok=True)
    for directory, _, files in os.walk(source):
        for name in sorted(files, key=lambda n: (n not in metadata, n)):
            copy_file(Path(directory) / name, target / os.path.relpath(directory, source) / name)


V3_METADATA = ("zarr.json",)
V2_METADATA_NAMES = (".zgroup", ".zarray", ".zattrs")


@pytest.fixture
def cp_source(tmp_path):
    """``cp_source(plain, metadata, metadata_first) -> copy of plain`` that ``cp -r`` walks in a known order.

    GNU cp copies a directory's entries in inode order (gnulib savedir, SAVEDIR_SORT_FASTREAD). On
    ext4 a new directory's inode lands anywhere, so ``cp -r`` of a store written by zarr copies
    ``c/`` (and every chunk under it) before ``zarr.json`` about half of the time. The copy made
    here is created entry by entry on tmpfs, whose inode numbers grow in creation order, so that
    every directory's metadata comes first (or last) for cp; the order is checked, not assumed.
    """
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tmp_path
    made = []

    def build(plain: Path, metadata: tuple[str, ...], metadata_first: bool) -> Path:
        root = Path(tempfile.mkdtemp(prefix="zarrfs-cp-source-", dir=base))
        made.append(root)
        target = root / plain.name

        def create(source: Path, target: Path) -> None:
            target.mkdir()
            for name in sorted(os.listdir(source), key=lambda n: ((n in metadata) != metadata_first, n)):
                if (source / name).is_dir():
                    create(source / name, target / name)
                else:
                    shutil.copyfile(source / name, target / name)

        create(plain, target)
        for directory, dirs, files in os.walk(target):
            entries = sorted(dirs + files, key=lambda n: os.lstat(os.path.join(directory, n)).st_ino)
            meta = [i for i, n in enumerate(entries) if n in metadata]
            rest = [i for i, n in enumerate(entries) if n not in metadata]
            if meta and rest and (max(meta) > min(rest) if metadata_first else min(meta) < max(rest)):
                pytest.skip(f"cannot make a source that cp -r walks metadata-{'first' if metadata_first else 'last'}")
        return target

    yield build
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def test_cp_r_packs_a_plain_v3_store_into_shards(plain_v3, cp_source, tmp_path, mount):
    store = empty_store(tmp_path)
    mnt = mount(store)
    source = cp_source(plain_v3, V3_METADATA, metadata_first=True)
    cp_r(source, mnt.path / "copy.zarr")
    mnt.unmount()
    check_packed(store / "copy.zarr", plain_v3, PLAIN_V3)
    for group in ("", "sub"):
        assert read_json(store / "copy.zarr" / group / "zarr.json") == read_json(plain_v3 / group / "zarr.json")
    again = mount(store, "--read-only")
    for path in PLAIN_V3:
        assert same_values(read_zarr3(again.path / "copy.zarr" / path), read_zarr3(plain_v3 / path)), path


def test_cp_r_of_a_plain_v3_store_reads_back_through_the_mount_at_once(plain_v3, cp_source, tmp_path, mount):
    """cp creates zarr.json with open(O_CREAT) + write + close (no rename): the kernel's node for the
    name must mean the array metadata once it is applied (fixed in c7476db; was ENOENT for 10 s)."""
    mnt = mount(empty_store(tmp_path))
    source = cp_source(plain_v3, V3_METADATA, metadata_first=True)
    cp_r(source, mnt.path / "copy.zarr")
    for path in PLAIN_V3:
        assert same_values(read_zarr3(mnt.path / "copy.zarr" / path), read_zarr3(plain_v3 / path)), path


def test_a_zarr_json_written_with_create_write_close_reads_back_at_once(plain_v3, tmp_path, mount):
    mnt = mount(empty_store(tmp_path))
    (mnt.path / "a").mkdir()
    written = (plain_v3 / "slash" / "zarr.json").read_bytes()
    fd = os.open(mnt.path / "a" / "zarr.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, written)
    os.close(fd)
    assert read_json(mnt.path / "a" / "zarr.json") == json.loads(written)


def test_rsync_a_of_arrays_whose_chunk_keys_sort_before_zarr_json(plain_v3, tmp_path, mount):
    """rsync sends a directory's files in name order: "c.0" and "0.0" before "zarr.json" (SPEC §5:
    files that parse as chunk keys become chunks when the metadata arrives)."""
    store = empty_store(tmp_path)
    mnt = mount(store)
    rsync(plain_v3, mnt.path / "copy.zarr", "--exclude", "slash", "--exclude", "sub")
    mnt.unmount()
    check_packed(store / "copy.zarr", plain_v3, FLAT_V3)


def test_chunk_files_copied_before_zarr_json_become_chunks(plain_v3, tmp_path, mount):
    """cp -r in readdir order, chunk files first (fixed in c7476db; they used to stay loose files,
    and the one at the shard key was then read as a corrupt shard)."""
    store = empty_store(tmp_path)
    mnt = mount(store)
    (mnt.path / "copy.zarr").mkdir()
    for path in FLAT_V3:
        copy_metadata_last(plain_v3 / path, mnt.path / "copy.zarr" / path, ("zarr.json",))
    for path in FLAT_V3:
        assert same_values(read_zarr3(mnt.path / "copy.zarr" / path), read_zarr3(plain_v3 / path)), path
    mnt.unmount()
    check_packed(store / "copy.zarr", plain_v3, FLAT_V3)


def test_cp_r_of_a_store_whose_chunks_cp_meets_before_the_metadata(plain_v3, cp_source, tmp_path, mount):
    """The real cp -r, walking c/ (and every chunk under it) before zarr.json."""
    store = empty_store(tmp_path)
    mnt = mount(store)
    source = cp_source(plain_v3, V3_METADATA, metadata_first=False)
    cp_r(source, mnt.path / "copy.zarr")
    mnt.unmount()
    check_packed(store / "copy.zarr", plain_v3, PLAIN_V3)




def test_rsync_a_packs_arrays_with_nested_keys_into_shards(plain_v3, tmp_path, mount):
    store = empty_store(tmp_path)
    mnt = mount(store)
    rsync(plain_v3, mnt.path / "copy.zarr", "--exclude", "dot", "--exclude", "v2keys")
    mnt.unmount()
    check_packed(store / "copy.zarr", plain_v3, NESTED_V3)


def test_key_directories_made_before_zarr_json_hold_chunks(plain_v3, tmp_path, mount):
    store = empty_store(tmp_path)
    mnt = mount(store)
    copy_directories_first(plain_v3 / "slash", mnt.path / "slash", ("zarr.json",))
    mnt.unmount()
    check_packed(store, plain_v3, ["slash"])


ZARR2_PLAIN_WRITER = r'''
import sys
import numcodecs
import numpy as np
import zarr

g = zarr.open_group(sys.argv[1], mode="w")
g.attrs["origin"] = "plain v2"
a = g.create_dataset("dots", shape=(25, 16), chunks=(5, 6), dtype="<i4", fill_value=-1,
                     compressor=numcodecs.Zstd(level=1))
a[1:24, 2:15] = np.arange(23 * 13).reshape(23, 13)
a.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]
b = g.create_dataset("sub/slashes", shape=(7, 8, 9), chunks=(3, 3, 3), dtype=">f4", order="F",
                     fill_value=np.nan, dimension_separator="/", compressor=None)
b[1:6, :, 3:] = 2.5
g["sub"].attrs["n"] = 1
print("written")
'''
PLAIN_V2 = ["dots", "sub/slashes"]


@pytest.fixture(scope="module")
def plain_v2(tmp_path_factory):
    work = tmp_path_factory.mktemp("plain-v2")
    root = work / "plain.zarr"
    zarr2_run(ZARR2_PLAIN_WRITER, str(root))
    expected, errors = zarr2_read(root, PLAIN_V2, work / "expected.npz")
    assert not errors
    return root, expected


def check_packed_v2(store: Path, plain: Path, expected: dict, arrays: list[str] = PLAIN_V2) -> None:
    assert_only_shards_and_metadata(store)
    for path in arrays:
        backing = read_json(store / path / "zarr.json")
        assert backing["codecs"][0]["configuration"]["chunk_shape"] == read_json(plain / path / ".zarray")["chunks"]
        assert same_values(read_zarr3(store / path), expected[path]), path
        assert same_values(read_tensorstore(store / path), expected[path]), path
    assert read_json(store / "zarr.json")["attributes"] == {"origin": "plain v2"}
    if "dots" in arrays:
        assert read_json(store / "dots" / "zarr.json")["dimension_names"] == ["y", "x"]
    if "sub/slashes" in arrays:
        assert read_json(store / "sub" / "zarr.json")["attributes"] == {"n": 1}


def test_cp_r_packs_a_plain_v2_store_through_the_v2_view(plain_v2, cp_source, tmp_path, mount):
    plain, expected = plain_v2
    store = empty_store(tmp_path)
    mnt = mount(store, "--view", "v2")
    source = cp_source(plain, V2_METADATA_NAMES, metadata_first=True)
    cp_r(source, mnt.path / "copy.zarr")
    mnt.unmount()
    check_packed_v2(store / "copy.zarr", plain, expected)
    again = mount(store, "--view", "v2", "--read-only")
    values, errors = zarr2_read(again.path / "copy.zarr", PLAIN_V2, tmp_path / "again.npz")
    assert not errors
    for path in PLAIN_V2:
        assert same_values(values[path], expected[path])
        written = normalized_zarray(read_json(plain / path / ".zarray"))
        assert normalized_zarray(read_json(again.path / "copy.zarr" / path / ".zarray")) == written
        shown = again.path / "copy.zarr" / path / ".zattrs"
        assert (read_json(shown) if shown.exists() else {}) == \
            (read_json(plain / path / ".zattrs") if (plain / path / ".zattrs").exists() else {})


def test_rsync_a_packs_a_plain_v2_store_through_the_v2_view(plain_v2, tmp_path, mount):
    """rsync sends ".zarray" and ".zattrs" before the chunk keys "0.0", ... (name order)."""
    plain, expected = plain_v2
    store = empty_store(tmp_path)
    mnt = mount(store, "--view", "v2")
    rsync(plain, mnt.path / "copy.zarr", "--exclude", "sub")
    mnt.unmount()
    check_packed_v2(store / "copy.zarr", plain, expected, ["dots"])


def test_rsync_a_packs_v2_arrays_with_slash_separators_through_the_v2_view(plain_v2, tmp_path, mount):
    plain, expected = plain_v2
    store = empty_store(tmp_path)
    mnt = mount(store, "--view", "v2")
    rsync(plain, mnt.path / "copy.zarr")
    mnt.unmount()
    check_packed_v2(store / "copy.zarr", plain, expected)


def test_cp_r_of_a_v2_store_whose_chunks_cp_meets_before_the_zarray(plain_v2, cp_source, tmp_path, mount):
    plain, expected = plain_v2
    store = empty_store(tmp_path)
    mnt = mount(store, "--view", "v2")
    source = cp_source(plain, V2_METADATA_NAMES, metadata_first=False)
    cp_r(source, mnt.path / "copy.zarr")
    mnt.unmount()
    check_packed_v2(store / "copy.zarr", plain, expected)


def test_chunk_files_copied_before_zarray_become_chunks_in_the_v2_view(plain_v2, tmp_path, mount):
    plain, expected = plain_v2
    store = empty_store(tmp_path)
    mnt = mount(store, "--view", "v2")
    (mnt.path / "copy.zarr").mkdir()
    copy_file(plain / ".zgroup", mnt.path / "copy.zarr" / ".zgroup")
    copy_file(plain / ".zattrs", mnt.path / "copy.zarr" / ".zattrs")
    copy_metadata_last(plain / "dots", mnt.path / "copy.zarr" / "dots", (".zarray", ".zattrs"))
    mnt.unmount()
    check_packed_v2(store / "copy.zarr", plain, expected, ["dots"])


# --------------------------------------------------------------------------------------
# 5. --shards, refused metadata, keys outside the grid
# --------------------------------------------------------------------------------------


def test_shards_option_is_honoured_and_capped_at_the_grid(tmp_path, mount):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--shards", "3", "--flush-after", "0.5")
    a = zarr.create_array(mnt.path / "a", shape=(100, 10, 7), chunks=(10, 5, 7), dtype="int16", compressors=None)
    a[...] = np.arange(7000, dtype="i2").reshape(100, 10, 7)
    b = zarr.create_array(mnt.path / "b", shape=(5,), chunks=(2,), dtype="uint8")
    b[...] = [1, 2, 3, 4, 5]
    mnt.unmount()
    assert read_json(store / "a" / "zarr.json")["chunk_grid"]["configuration"]["chunk_shape"] == [30, 10, 7]
    assert read_json(store / "b" / "zarr.json")["chunk_grid"]["configuration"]["chunk_shape"] == [6]
    assert list_files(store / "a") == {"zarr.json", "c/0/0/0", "c/1/0/0", "c/2/0/0", "c/3/0/0"}
    assert list_files(store / "b") == {"zarr.json", "c/0"}
    assert np.array_equal(read_zarr3(store / "a"), np.arange(7000, dtype="i2").reshape(100, 10, 7))
    assert np.array_equal(read_tensorstore(store / "b"), [1, 2, 3, 4, 5])


def test_shards_option_through_the_v2_view(tmp_path, mount):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--view", "v2", "--shards", "2")
    zarr2_run("import sys, zarr\n"
              "a = zarr.open_array(sys.argv[1], mode='w', shape=(9, 4), chunks=(2, 4), dtype='<u2')\n"
              "a[...] = 3\n", str(mnt.path / "a"))
    mnt.unmount()
    assert read_json(store / "a" / "zarr.json")["chunk_grid"]["configuration"]["chunk_shape"] == [4, 4]
    assert list_files(store / "a") == {"zarr.json", "0.0", "1.0", "2.0"}
    assert np.array_equal(read_zarr3(store / "a"), np.full((9, 4), 3))


def test_sharded_zarr_json_written_into_a_new_directory_is_refused(tmp_path, mount):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store)
    zarr.create_array(tmp_path / "sharded", shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype="u1")
    sharded = (tmp_path / "sharded" / "zarr.json").read_bytes()
    (mnt.path / "new").mkdir()
    before = list_files(store)
    with pytest.raises(OSError) as failure:
        (mnt.path / "new" / "zarr.json").write_bytes(sharded)
    assert failure.value.errno == errno.EINVAL
    assert "sharded metadata written through the view" in mnt.log_text()
    assert list_files(store) == before
    assert not (mnt.path / "new" / "zarr.json").exists()
    with pytest.raises(OSError):  # zarr-python 3 itself, sharded, through the view
        zarr.create_array(mnt.path / "by_zarr", shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype="u1")
    mnt.unmount()
    assert list_files(store) == before


def test_sharded_zarray_written_through_the_v2_view_is_refused(tmp_path, mount):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--view", "v2")
    (mnt.path / "new").mkdir()
    zarray = {"zarr_format": 2, "shape": [8], "chunks": [2], "dtype": "<u2", "compressor": None,
              "fill_value": 0, "order": "C", "filters": None, "shard_format": "indexed", "shards": [2]}
    with pytest.raises(OSError) as failure:
        (mnt.path / "new" / ".zarray").write_text(json.dumps(zarray))
    assert failure.value.errno == errno.EINVAL
    assert "refused" in mnt.log_text()
    mnt.unmount()
    assert list_files(store) == set()


def test_chunk_keys_outside_the_grid_are_refused_in_the_v2_view(tmp_path, mount):
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--view", "v2", "--flush-after", "0.5")
    zarr2_run("import sys, zarr\n"
              "a = zarr.open_array(sys.argv[1], mode='w', shape=(4, 4), chunks=(2, 2), dtype='u1',"
              " compressor=None)\n"
              "a[...] = 1\n", str(mnt.path / "a"))
    chunk = np.full((2, 2), 9, "u1").tobytes()
    with pytest.raises(OSError) as failure:
        (mnt.path / "a" / "2.0").write_bytes(chunk)
    assert failure.value.errno == errno.EINVAL
    temp = mnt.path / "a" / "0.1.0123456789abcdef.partial"  # zarr-python 2's temp file + rename
    temp.write_bytes(chunk)
    with pytest.raises(OSError) as failure:
        os.replace(temp, mnt.path / "a" / "0.2")
    assert failure.value.errno == errno.EINVAL
    assert temp.read_bytes() == chunk  # nothing else changed
    os.unlink(temp)
    assert "outside the grid" in mnt.log_text()
    mnt.unmount()
    assert_only_shards_and_metadata(store)
    assert np.array_equal(read_zarr3(store / "a"), np.ones((4, 4)))
