"""Listing equals reading (SPEC §3, §4): what ``readdir`` shows under a sharded array is exactly
what ``open`` finds, and exactly the inner chunks present in the shards.

Arrays of 0 to 5 dimensions, each with every chunk key encoding (``default`` with ``/`` and
``.``, ``v2`` with ``.`` and ``/``), are written sharded straight into a plain directory by
zarr-python 3 (0-d ones by tensorstore: zarr-python 3.1 cannot write a sharded 0-d array), with
some inner chunks left at the fill value (so absent) and some shards absent altogether. The store
is mounted four ways: ``--view v3`` and ``--view v2``, writable and ``--read-only``. For every
array in every mount:

- the set of file names ``os.walk`` lists below the array equals the set of names ``open``
  succeeds on, probing every chunk key of the grid in all four encodings, keys just outside the
  grid, keys with too many or too few coordinates, the raw shard keys and the metadata names;
- the chunk files listed are exactly the inner chunks present in the shards (decoded here from
  the shard indexes, without zarrfs), named with the view's keys (the array's own encoding in the
  v3 view; ``i.j`` or ``i/j`` after the backing separator in the v2 view);
- every listed file reads, and reads the inner chunk's bytes: no name reaches a shard file (a
  0-d array's one chunk and its shard share the key ``c``); in the v2 view nothing named ``c``
  exists, and the only directories are the key directories of the view's encoding.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from corpus import read_shard_chunks

ENCODINGS = {"default-slash": ("default", "/"), "default-dot": ("default", "."),
             "v2-dot": ("v2", "."), "v2-slash": ("v2", "/")}
# ndim -> (shape, inner chunk shape, shard shape): edge chunks and edge shards everywhere
GEOMETRY = {
    0: ((), (), ()),
    1: ((11,), (2,), (4,)),
    2: ((7, 5), (2, 2), (4, 4)),
    3: ((5, 4, 3), (2, 2, 2), (4, 2, 2)),
    4: ((3, 3, 2, 2), (2, 2, 1, 2), (2, 4, 2, 2)),
    5: ((2, 3, 2, 2, 3), (1, 2, 1, 2, 2), (2, 2, 2, 2, 2)),
}
METADATA_NAMES = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
MOUNTS = {"v3-writable": ("--view", "v3"), "v3-read-only": ("--view", "v3", "--read-only"),
          "v2-writable": ("--view", "v2"), "v2-read-only": ("--view", "v2", "--read-only")}


@dataclass(frozen=True)
class Array:
    path: str
    ndim: int
    encoding: tuple[str, str]  # the backing array's chunk_key_encoding (name, separator)

    @property
    def shape(self):
        return GEOMETRY[self.ndim][0]

    @property
    def chunks(self):
        return GEOMETRY[self.ndim][1]

    @property
    def shards(self):
        return GEOMETRY[self.ndim][2]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / c) for n, c in zip(self.shape, self.chunks))

    @property
    def shard_grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / s) for n, s in zip(self.shape, self.shards))

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shards, self.chunks))


ARRAYS = [Array(f"d{ndim}_{name}", ndim, encoding) for ndim in GEOMETRY for name, encoding in ENCODINGS.items()]


def key(coords: tuple[int, ...], name: str, separator: str) -> str:
    """A chunk key under a chunk key encoding (the Zarr v3 spec's two, and Zarr v2's)."""
    if name == "default":
        return separator.join(["c", *map(str, coords)])
    return separator.join(map(str, coords)) if coords else "0"


def view_key(array: Array, coords: tuple[int, ...], view: str) -> str:
    """The name of a chunk in a view: the array's own key in the v3 view, a v2 key (no ``c``,
    the backing separator) in the v2 view."""
    name, separator = array.encoding
    return key(coords, name if view == "v3" else "v2", separator)


def blank(coords: tuple[int, ...], array: Array) -> bool:
    """Inner chunks left at the fill value (so absent from their shard): a third of them, and
    for arrays of 2+ dimensions every chunk of the last shard, so that one shard is missing."""
    if array.ndim >= 2 and all(c // p == g - 1 for c, p, g in zip(coords, array.chunks_per_shard, array.shard_grid)):
        return True
    return array.ndim > 0 and sum(coords) % 3 == 1


def write_array(root: Path, array: Array, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 2**15, size=array.shape, dtype="int32")  # never the fill value 0
    for coords in itertools.product(*(range(g) for g in array.grid)):
        if blank(coords, array):
            data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, array.chunks))] = 0
    name, separator = array.encoding
    if array.ndim == 0:
        metadata = {
            "shape": [], "data_type": "int32", "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": []}},
            "chunk_key_encoding": {"name": name, "configuration": {"separator": separator}},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [], "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                "index_location": "end"}}],
        }
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / array.path)}, "metadata": metadata}
        ts.open(spec, create=True).result().write(data).result()
        return
    written = zarr.create_array(root, name=array.path, shape=array.shape, chunks=array.chunks, shards=array.shards,
                                dtype="int32", fill_value=0,
                                chunk_key_encoding={"name": name, "separator": separator})
    written[...] = data


def present_chunks(root: Path, array: Array) -> dict[tuple[int, ...], bytes]:
    """``{inner chunk coords: encoded bytes}`` decoded from the shard files themselves."""
    name, separator = array.encoding
    n = math.prod(array.chunks_per_shard)
    present = {}
    for shard in itertools.product(*(range(g) for g in array.shard_grid)):
        path = root / array.path / key(shard, name, separator)
        if not path.exists():
            continue
        for index, data in read_shard_chunks(path, n).items():
            local = np.unravel_index(index, array.chunks_per_shard) if array.ndim else ()
            coords = tuple(s * p + int(i) for s, p, i in zip(shard, array.chunks_per_shard, local))
            if all(c < g for c, g in zip(coords, array.grid)):
                present[coords] = data
    return present


def shard_bytes(root: Path, array: Array) -> set[bytes]:
    name, separator = array.encoding
    files = (root / array.path / key(s, name, separator) for s in itertools.product(*map(range, array.shard_grid)))
    return {f.read_bytes() for f in files if f.exists()}


def probe_names(array: Array) -> set[str]:
    """Every name a reader might try below the array: all chunk keys of the grid in all four
    encodings (the raw shard keys among them), keys just outside the grid or with too many or too
    few coordinates, key directories, metadata."""
    coords_list = list(itertools.product(*(range(g) for g in array.grid)))
    if array.ndim:
        for axis in range(array.ndim):
            coords_list.append(tuple(g if i == axis else 0 for i, g in enumerate(array.grid)))
        coords_list += [array.grid, (0,) * (array.ndim + 1), (0,) * (array.ndim - 1), (99,) * array.ndim]
    else:
        coords_list += [(0,), (1,)]
    names = {key(coords, name, separator) for coords in coords_list for name, separator in ENCODINGS.values()}
    names |= {"c", "c/0", "0", "c.0"}
    return names | set(METADATA_NAMES)


def read_file(path: Path) -> bytes | None:
    """The bytes ``open`` + ``read`` give for a regular file, or None (ENOENT, a directory...)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def key_directories(array: Array, view: str) -> set[str]:
    """The directories the view may show below an array: prefixes of its "/"-separated keys."""
    name, separator = array.encoding
    name = name if view == "v3" else "v2"
    if separator != "/" or array.ndim == 0:
        return set()
    prefix = ["c"] if name == "default" else []
    dirs = set()
    for coords in itertools.product(*(range(g) for g in array.grid)):
        parts = prefix + [str(c) for c in coords]
        dirs |= {"/".join(parts[:n]) for n in range(1, len(parts))}
    return dirs


# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("listing") / "store.zarr"
    zarr.create_group(root, attributes={"about": "listing equals reading"})
    truth = {}
    for seed, array in enumerate(ARRAYS):
        write_array(root, array, seed)
        truth[array.path] = present_chunks(root, array), shard_bytes(root, array)
        doc = json.loads((root / array.path / "zarr.json").read_text())
        assert doc["codecs"][0]["name"] == "sharding_indexed"
    return root, truth


@pytest.fixture(scope="module", params=list(MOUNTS))
def mounted(request, store, module_mount):
    """``(view, mount, {array path: (files, directories) os.walk lists below it})``."""
    root, _ = store
    mnt = module_mount(root, *MOUNTS[request.param])
    listed = {}
    for array in ARRAYS:
        files, dirs = set(), set()
        base = mnt.path / array.path
        for directory, subdirs, names in os.walk(base):
            rel = os.path.relpath(directory, base)
            files |= {os.path.normpath(os.path.join(rel, n)) for n in names}
            dirs |= {os.path.normpath(os.path.join(rel, d)) for d in subdirs}
        listed[array.path] = files, dirs
    return MOUNTS[request.param][1], mnt, listed


@pytest.mark.parametrize("array", ARRAYS, ids=[a.path for a in ARRAYS])
def test_listing_equals_reading(store, mounted, array):
    root, truth = store
    view, mnt, listed = mounted
    present, shards = truth[array.path]
    files, dirs = listed[array.path]
    base = mnt.path / array.path

    read = {name: read_file(base / name) for name in probe_names(array) | files}
    opened = {name for name, data in read.items() if data is not None}
    assert files == opened, (f"listed but not opened: {sorted(files - opened)}; "
                             f"opened but not listed: {sorted(opened - files)}")

    chunk_files = files - set(METADATA_NAMES)
    expected = {view_key(array, coords, view): data for coords, data in present.items()}
    assert chunk_files == set(expected), (
        f"listed chunks missing from the shards: {sorted(chunk_files - set(expected))}; "
        f"chunks in the shards not listed: {sorted(set(expected) - chunk_files)}")
    assert (".zarray" if view == "v2" else "zarr.json") in files
    for name, data in expected.items():
        assert read[name] == data, f"{name}: not the inner chunk's bytes"
        assert read[name] not in shards, f"{name}: a shard file's bytes"
        assert (base / name).stat().st_size == len(data), name

    assert dirs <= key_directories(array, view), f"directories that are no key directories: {sorted(dirs)}"
    if view == "v2" or array.encoding[0] == "v2":
        assert not os.path.lexists(base / "c"), "a name 'c' the view has no use for (the backing shard keys?)"


def test_every_array_was_written_with_absent_chunks_and_absent_shards(store):
    root, truth = store
    for array in ARRAYS:
        present, _ = truth[array.path]
        n = math.prod(array.grid)
        if array.ndim:
            assert 0 < len(present) < n, array.path
        if array.ndim >= 2:
            name, separator = array.encoding
            last = tuple(g - 1 for g in array.shard_grid)
            assert not (root / array.path / key(last, name, separator)).exists(), array.path


ATTRIBUTES = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_mtime_ns")


def listed_attributes(directory: Path) -> dict[str, tuple]:
    """Every file below ``directory`` with the inode number its listing gave (d_ino) and the
    attributes the kernel holds right after the listing (from READDIRPLUS, where it sent them)."""
    found = {}
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            found |= {f"{entry.name}/{k}": v for k, v in listed_attributes(Path(entry.path)).items()}
        else:
            st = entry.stat(follow_symlinks=False)
            found[entry.name] = (entry.inode(), *(getattr(st, a) for a in ATTRIBUTES))
    return found


@pytest.mark.parametrize("options", [("--read-only",), (), ("--view", "v2")], ids=["read-only", "writable", "v2"])
def test_a_listing_gives_the_numbers_and_attributes_lookups_give(store, mount, tmp_path, options):
    """The inode numbers and attributes a listing computes for a shard's chunks at once are
    those a lookup of each name gives (here: in a second, fresh mount, whose kernel knows no
    name, so every stat is a LOOKUP). In a writable mount, chunks written and removed through
    it are listed as they are in its write buffer, and hide the stored ones."""
    root = tmp_path / "store.zarr"
    shutil.copytree(store[0], root)
    first = mount(root, *options)
    changed = set()
    if "--read-only" not in options:
        keys = first.path / "d2_default-slash" / ("" if "v2" in options else "c")
        rows = {row: set(os.listdir(keys / row)) for row in os.listdir(keys) if (keys / row).is_dir()}
        row = next(row for row, names in rows.items() if len(names) >= 2)
        removed, written = (f"{row}/{n}" for n in sorted(rows[row])[:2])
        added = next(f"{row}/{i}" for row, names in rows.items() for i in range(3) if str(i) not in names)
        os.unlink(keys / removed)
        (keys / written).write_bytes(b"\0" * 3)
        (keys / added).write_bytes(b"\1" * 5)
        removed, written, added = (str((keys / n).relative_to(first.path)) for n in (removed, written, added))
        changed = {removed, written, added}
    listed = listed_attributes(first.path)
    if changed:
        assert removed not in listed and listed[written][6] == 3 and listed[added][6] == 5
    second = mount(root, *options)  # (the store as it was: nothing is flushed yet)
    for name, attributes in listed.items():
        if name in changed:
            continue
        st = os.stat(second.path / name)
        assert attributes[0] == st.st_ino, name
        assert attributes[1:] == tuple(getattr(st, a) for a in ATTRIBUTES), name


@pytest.mark.parametrize("path", ["d2_default-slash", "d3_default-slash", "d3_v2-dot"])
def test_a_listing_follows_shards_changed_outside_the_mount(store, mount, tmp_path, path):
    """Listings of a row of key directories are made at once and kept while the shards'
    versions stay: a shard removed, put back or replaced outside the mount shows in the
    next listing once zarrfs's second of reused stats has passed."""
    root = tmp_path / "store.zarr"
    shutil.copytree(store[0], root)
    array = next(a for a in ARRAYS if a.path == path)
    mnt = mount(root, "--attr-timeout", "0.2", "--read-only")

    def listed() -> set[str]:
        return {os.path.relpath(os.path.join(d, n), mnt.path / path)
                for d, _, names in os.walk(mnt.path / path) for n in names} - set(METADATA_NAMES)

    before = listed()
    name, separator = array.encoding
    shard = root / path / key((0,) * array.ndim, name, separator)
    saved = shard.read_bytes()
    in_first_shard = {view_key(array, c, "v3") for c in itertools.product(*map(range, array.chunks_per_shard))
                      if view_key(array, c, "v3") in before}
    assert in_first_shard
    shard.unlink()
    time.sleep(1.5)
    assert listed() == before - in_first_shard
    shard.write_bytes(saved)
    time.sleep(1.5)
    assert listed() == before
    other = root / path / key((0,) * (array.ndim - 1) + (1,), name, separator)
    shard.write_bytes(other.read_bytes())  # the chunks of another shard: its absent ones too
    time.sleep(1.5)
    moved = {view_key(array, c, "v3") for c in itertools.product(*map(range, array.chunks_per_shard))
             if view_key(array, c[:-1] + (c[-1] + array.chunks_per_shard[-1],), "v3") in before}
    assert listed() == (before - in_first_shard) | moved
