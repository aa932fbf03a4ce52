"""The v2 view (SPEC §4): legacy readers read sharded data through the mount.

Readers are the real ones: zarr-python 2.18 in its own venv, and tensorstore's
``zarr`` (v2) driver. Values are compared with what zarr-python 3 reads from
the sharded original.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import crc32c
import numpy as np
import pytest
import tensorstore as ts
import zarr

import corpus
from conftest import list_files
from legacy import zarr2_read, zarr2_run

CASES = corpus.case_names()


@pytest.fixture(scope="module", params=[(), ("--read-only",)], ids=["writable", "read-only"])
def v2(corpus_store, module_mount, backend, request):
    """Both kinds of mount: a read-only one serves reads by inode, with no OPEN (fs/operations.py);
    on both backends (the corpus uploaded once to the bucket for ``s3``)."""
    store, cases = corpus_store
    backing = backend.store(store, shared=True)
    return backend.mount(module_mount, backing, "--view", "v2", *request.param), {c.name: c for c in cases}


@pytest.fixture(scope="module")
def zarr2_values(v2, tmp_path_factory):
    mnt, cases = v2
    out = tmp_path_factory.mktemp("zarr2") / "values.npz"
    return zarr2_read(mnt.path, [c.path for c in cases.values()], out)


@pytest.mark.parametrize("name", CASES)
def test_zarr_python_2_reads_every_array_identically(v2, zarr2_values, name):
    _, cases = v2
    values, errors = zarr2_values
    case = cases[name]
    assert case.path not in errors, errors.get(case.path)
    assert corpus.v2_view_reads_as_expected(values[case.path], case)


@pytest.mark.parametrize("name", CASES)
def test_tensorstore_zarr_v2_driver_reads_every_array_identically(v2, name):
    mnt, cases = v2
    case = cases[name]
    array = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(mnt.path / case.path)}},
                    read=True).result()
    assert corpus.v2_view_reads_as_expected(array.read().result(), case)


def test_no_zarr_json_is_shown_and_groups_read_as_v2(v2, corpus_store):
    mnt, _ = v2
    store, _ = corpus_store
    assert not [f for f in list_files(mnt.path) if f.endswith("zarr.json")]
    assert json.loads((mnt.path / ".zgroup").read_text()) == {"zarr_format": 2}
    for group in ("", "group1", "group1/sub"):
        attributes = json.loads((store / group / "zarr.json").read_text()).get("attributes")
        shown = mnt.path / group / ".zattrs"
        assert (json.loads(shown.read_text()) if shown.exists() else {}) == (attributes or {})


def test_zarr_python_2_walks_the_hierarchy_with_attributes(v2, corpus_store):
    mnt, _ = v2
    store, _ = corpus_store
    listing = json.loads(zarr2_run(
        "import json, sys, zarr\n"
        "g = zarr.open_group(sys.argv[1], mode='r')\n"
        "print(json.dumps({'groups': sorted(g.group_keys()), 'sub': dict(g['group1/sub'].attrs),"
        " 'dims': g['group1/sub/zarr_2d_attrs_dimnames'].attrs.asdict()}))",
        str(mnt.path)))
    assert {"group1", "group2", "plain"} <= set(listing["groups"])
    assert listing["sub"] == json.loads((store / "group1/sub/zarr.json").read_text())["attributes"]
    original = json.loads((store / "group1/sub/zarr_2d_attrs_dimnames/zarr.json").read_text())
    assert listing["dims"]["_ARRAY_DIMENSIONS"] == original["dimension_names"]
    for key, value in original["attributes"].items():
        assert listing["dims"][key] == value


def test_chunk_keys_follow_the_backing_separator_without_the_c_prefix(v2):
    mnt, cases = v2
    slash = cases["zarr_2d_end_crc_default_slash"]
    assert json.loads((mnt.path / slash.path / ".zarray").read_text())["dimension_separator"] == "/"
    assert all(len(f.split("/")) == 2 and not f.startswith("c") for f in list_files(mnt.path / slash.path)
               if not f.startswith("."))
    dot = cases["zarr_2d_end_nocrc_default_dot"]
    assert json.loads((mnt.path / dot.path / ".zarray").read_text())["dimension_separator"] == "."
    assert all(len(f.split(".")) == 2 for f in list_files(mnt.path / dot.path) if not f.startswith("."))


def crc_case_store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    store = tmp_path / "crc.zarr"
    data = np.arange(64, dtype="int32").reshape(8, 8)
    codec = {"name": "sharding_indexed", "configuration": {
        "chunk_shape": [4, 4],
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}
    array = zarr.create_array(store, shape=(8, 8), chunks=(8, 8), dtype="int32", serializer=codec,
                              compressors=None, filters=None)
    array[...] = data
    return store, data


def test_a_trailing_crc32c_is_verified_and_stripped(tmp_path, mount, backend):
    store, data = crc_case_store(tmp_path)
    shard = store / "c" / "0" / "0"
    payloads = set(corpus.read_shard_chunks(shard, 4, "end", "little", True).values())
    backing = backend.store(store)
    mnt = backend.mount(mount, backing, "--view", "v2")
    assert "crc32c" not in (mnt.path / ".zarray").read_text()
    files = [f for f in list_files(mnt.path) if not f.startswith(".")]
    assert len(files) == 4
    for f in files:
        body = (mnt.path / f).read_bytes()
        assert (mnt.path / f).stat().st_size == len(body)
        assert body + crc32c.crc32c(body).to_bytes(4, "little") in payloads
    values, errors = zarr2_read(mnt.path, [""], tmp_path / "crc.npz")
    assert not errors and np.array_equal(values[""], data)
    three = backend.mount(mount, backing)  # the v3 view serves the chunks as stored, checksum included
    assert {(three.path / "c" / f).read_bytes() for f in ("0/0", "0/1", "1/0", "1/1")} == payloads


def flip_byte_3(shard: Path) -> None:
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0xFF  # inside the first payload; the index (and its checksum) stay intact
    shard.write_bytes(bytes(raw))


def test_a_chunk_whose_crc32c_fails_reads_as_eio(tmp_path, mount, backend):
    store, _ = crc_case_store(tmp_path)
    backing = backend.store(store)
    backing.alter("c/0/0", flip_byte_3)
    mnt = backend.mount(mount, backing, "--view", "v2")
    chunk_files = sorted(f for f in list_files(mnt.path) if not f.startswith("."))
    failures = 0
    for f in chunk_files:
        try:
            (mnt.path / f).read_bytes()
        except OSError as error:
            assert error.errno == errno.EIO
            failures += 1
    assert failures == 1  # only the damaged chunk; the others are served


UNTRANSLATABLE = {
    "transpose_not_reversal": (
        [{"name": "transpose", "configuration": {"order": [1, 0, 2]}}, {"name": "bytes", "configuration": {"endian": "little"}}],
        "transpose"),
    "zstd_with_checksum": (
        [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 1, "checksum": True}}],
        "checksum"),
    "crc32c_in_the_middle": (
        [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}, {"name": "gzip", "configuration": {"level": 1}}],
        "crc32c"),
}


def test_arrays_without_an_exact_v2_equivalent_are_shown_without_zarray(tmp_path, mount, backend):
    store = tmp_path / "odd.zarr"
    zarr.open_group(store, mode="w")
    for name, (codecs, _) in UNTRANSLATABLE.items():
        sharding = {"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 2, 2], "codecs": codecs}}
        array = zarr.create_array(store, name=name, shape=(4, 4, 4), chunks=(4, 4, 4), dtype="uint16",
                                  serializer=sharding, compressors=None, filters=None, attributes={"k": name})
        array[...] = np.arange(64, dtype="uint16").reshape(4, 4, 4)
    mnt = backend.mount(mount, backend.store(store), "--view", "v2")
    for name in UNTRANSLATABLE:
        shown = os.listdir(mnt.path / name)
        assert ".zarray" not in shown and "zarr.json" not in shown
        assert sorted(shown) == [".zattrs", "0", "1"]
        assert len(list_files(mnt.path / name)) == 1 + 8  # .zattrs and the chunks, at v2 keys
        assert json.loads((mnt.path / name / ".zattrs").read_text()) == {"k": name}
    log = mnt.log_text()
    for name, (_, reason) in UNTRANSLATABLE.items():
        line = next(line for line in log.splitlines() if f"{name}: no exact Zarr v2 equivalent" in line)
        assert reason in line
    assert log.count("no exact Zarr v2 equivalent") == len(UNTRANSLATABLE)  # once each


def prototype_store(tmp_path: Path, separator: str) -> tuple[Path, np.ndarray]:
    """A v2 array written by zarr-python, packed into the v2 sharding prototype format."""
    store = tmp_path / f"proto{separator.replace('/', 'slash')}.zarr"
    data = np.random.default_rng(1).integers(0, 1000, (10, 9)).astype(">i4")
    data[:4, :3] = -1  # fill value: chunks there are absent
    plain = zarr.create_array(store / "arr", shape=data.shape, chunks=(2, 3), dtype=">i4", fill_value=-1,
                              zarr_format=2, chunk_key_encoding={"name": "v2", "separator": separator},
                              compressors=None, filters=None, attributes={"units": "m"})
    plain[...] = data
    meta = json.loads((store / "arr" / ".zarray").read_text())
    per_shard, grid = (2, 2), (5, 3)
    for shard in np.ndindex(tuple(-(-g // s) for g, s in zip(grid, per_shard))):
        entries, payload = [], b""
        for local in np.ndindex(per_shard):
            coords = tuple(s * n + l for s, n, l in zip(shard, per_shard, local))
            chunk = store / "arr" / separator.join(map(str, coords))
            if chunk.exists():
                entries.append((len(payload), chunk.stat().st_size))
                payload += chunk.read_bytes()
                chunk.unlink()
            else:
                entries.append((2**64 - 1, 2**64 - 1))
        if any(e[0] != 2**64 - 1 for e in entries):
            key = store / "arr" / separator.join(map(str, shard))
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(payload + np.array(entries, dtype="<u8").tobytes())
    for d in sorted((p for p in (store / "arr").rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    meta.update({"shard_format": "indexed", "shards": list(per_shard)})
    (store / "arr" / ".zarray").write_text(json.dumps(meta))
    return store, data


@pytest.mark.parametrize("separator", [".", "/"])
@pytest.mark.parametrize("view", ["v3", "v2"])
def test_v2_sharding_prototype_arrays_show_as_plain_v2_arrays(tmp_path, mount, backend, separator, view):
    store, data = prototype_store(tmp_path, separator)
    mnt = backend.mount(mount, backend.store(store), "--view", view)
    zarray = json.loads((mnt.path / "arr" / ".zarray").read_text())
    assert "shard_format" not in zarray and "shards" not in zarray
    assert json.loads((mnt.path / "arr" / ".zattrs").read_text()) == {"units": "m"}
    values, errors = zarr2_read(mnt.path, ["arr"], tmp_path / "proto.npz")
    assert not errors, errors
    assert np.array_equal(values["arr"], data)
    assert np.array_equal(zarr.open_array(mnt.path / "arr", mode="r", zarr_format=2)[...], data)
    chunk_files = [f for f in list_files(mnt.path / "arr") if not f.startswith(".")]
    assert len(chunk_files) == 15 - 2  # 5 x 3 chunks, two of them all fill value


def test_plain_v2_arrays_pass_through(v2, corpus_store):
    mnt, _ = v2
    store, _ = corpus_store
    plain = store / "plain" / "v2_array"
    assert list_files(mnt.path / "plain" / "v2_array") == list_files(plain)
    for f in list_files(plain):
        assert (mnt.path / "plain" / "v2_array" / f).read_bytes() == (plain / f).read_bytes()


def test_the_v3_view_of_the_same_store_still_shows_zarr_json(corpus_store, mount, backend):
    store, _ = corpus_store
    mnt = backend.mount(mount, backend.store(store, shared=True), "--view", "v3")
    assert (mnt.path / "zarr.json").exists() and not (mnt.path / ".zgroup").exists()
    shutil.disk_usage(mnt.path)
