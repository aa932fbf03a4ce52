"""Bad input (SPEC §7): corrupt shards fail loudly with EIO, the rest is served.

On both backends (tests/backends.py): on S3 the damage is done to the objects through obstore.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import zarr

import corpus
from conftest import list_files
from helpers import rewritten_json

CASE = "zarr_2d_end_crc_default_slash"  # 2-D, index at the end, [bytes, crc32c]
START_CASE = "ts_2d_start_crc_default_slash"  # index at the start


def chunk_keys_of_shard(mnt: Path, case: corpus.Case, shard_coords) -> list[Path]:
    """View paths of the (in-grid) chunks stored in one shard."""
    first = [s * n for s, n in zip(shard_coords, case.chunks_per_shard)]
    grid = [-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks)]
    paths = []
    for i in range(first[0], min(first[0] + case.chunks_per_shard[0], grid[0])):
        for j in range(first[1], min(first[1] + case.chunks_per_shard[1], grid[1])):
            paths.append(mnt / case.path / "c" / str(i) / str(j))
    return paths


def only(case: corpus.Case) -> list[str]:
    """What a test of one array needs of the corpus (the S3 backend uploads no more)."""
    return ["zarr.json", case.path]


def assert_eio(path: Path) -> None:
    with pytest.raises(OSError) as failure:
        path.read_bytes()
    assert failure.value.errno == errno.EIO, failure.value


def assert_rest_is_served(mnt: Path, case: corpus.Case, bad: set[Path]) -> None:
    served = [mnt / case.path / f for f in list_files(mnt / case.path)]
    good = [p for p in served if p not in bad]
    assert len(good) > 1
    for path in good:
        path.read_bytes()


DAMAGE = {
    "checksum": lambda shard, case: corpus.corrupt_checksum(shard, case.index_location),
    "truncated": lambda shard, case: corpus.truncate_shard(shard, 10),
    "empty": lambda shard, case: corpus.truncate_shard(shard, 0),
}


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", [CASE, START_CASE])
def test_every_chunk_of_a_broken_shard_fails_with_eio(store_copy, mount, backend, options, damage, name):
    root, cases = store_copy
    case = cases[name]
    backing = backend.store(root, only=only(case))
    backing.alter(f"{case.path}/c/0/0", lambda shard: DAMAGE[damage](shard, case))
    mnt = backend.mount(mount, backing, *options)
    bad = chunk_keys_of_shard(mnt.path, case, (0, 0))
    for path in bad:
        with pytest.raises(OSError) as failure:  # lookup alone must not say ENOENT
            path.stat()
        assert failure.value.errno == errno.EIO
        assert_eio(path)
    assert_rest_is_served(mnt.path, case, set(bad))
    log = mnt.log_text()
    shard_key = f"{case.path}/c/0/0"
    assert log.count(f"shard {shard_key} ") == 1, log  # once, naming the store-relative key


@pytest.mark.parametrize("name", [CASE, START_CASE])
def test_a_listing_still_shows_the_chunks_of_a_broken_shard(store_copy, mount, backend, name):
    root, cases = store_copy
    case = cases[name]
    backing = backend.store(root, only=only(case))
    backing.alter(f"{case.path}/c/0/0", lambda shard: corpus.corrupt_checksum(shard, case.index_location))
    mnt = backend.mount(mount, backing)
    listed = os.listdir(mnt.path / case.path / "c" / "0")
    assert listed, "the chunks are listed so that copying them fails loudly"
    assert_eio(mnt.path / case.path / "c" / "0" / listed[0])


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
@pytest.mark.parametrize("corruption", ["past_end", "into_index"])
@pytest.mark.parametrize("name", [CASE, START_CASE])
def test_a_bad_entry_fails_its_chunk_and_only_its_chunk(store_copy, mount, backend, options, corruption, name):
    root, cases = store_copy
    case = cases[name]
    layout = (case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    present = corpus.read_shard_chunks(case.shard_path(root, (0, 0)), *layout)
    chunk = sorted(present)[0]
    corrupt = corpus.corrupt_entry_past_end if corruption == "past_end" else corpus.corrupt_entry_into_index
    backing = backend.store(root, only=only(case))
    backing.alter(f"{case.path}/c/0/0", lambda shard: corrupt(shard, *layout, chunk=chunk))
    mnt = backend.mount(mount, backing, *options)
    i, j = divmod(chunk, case.chunks_per_shard[1])
    bad = mnt.path / case.path / "c" / str(i) / str(j)
    assert_eio(bad)
    others = [p for p in chunk_keys_of_shard(mnt.path, case, (0, 0)) if p != bad and p.exists()]
    assert others
    for path in others:
        path.read_bytes()
    assert "outside the payload" in mnt.log_text()


def test_a_malformed_zarr_json_shows_its_directory_as_plain_files(store_copy, mount, backend):
    root, cases = store_copy
    case = cases[CASE]
    backing = backend.store(root, only=only(case))
    backing.alter(f"{case.path}/zarr.json", lambda path: path.write_text("{ not json"))
    mnt = backend.mount(mount, backing)
    stored = backing.snapshot()
    assert list_files(mnt.path / case.path) == list_files(stored / case.path)
    assert (mnt.path / case.path / "c" / "0" / "0").read_bytes() == (stored / case.path / "c" / "0" / "0").read_bytes()
    assert f"{case.path}/zarr.json" in mnt.log_text()


@pytest.mark.parametrize("codecs", [
    [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 1}}],
    [{"name": "transpose", "configuration": {"order": [1, 0, 2]}}, {"name": "bytes"}],
])
def test_an_unsupported_index_codec_is_refused_with_a_log_line(store_copy, mount, backend, codecs):
    root, cases = store_copy
    case = cases[CASE]

    def change(path: Path) -> None:
        with rewritten_json(path) as meta:
            meta["codecs"][0]["configuration"]["index_codecs"] = codecs

    backing = backend.store(root, only=only(case))
    backing.alter(f"{case.path}/zarr.json", change)
    mnt = backend.mount(mount, backing)
    assert list_files(mnt.path / case.path) == list_files(backing.snapshot() / case.path)  # shown as stored
    assert "index_codecs" in mnt.log_text()


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
def test_garbage_everywhere_never_kills_the_daemon(store_copy, mount, backend, options):
    root, cases = store_copy
    backing = backend.store(root)
    for case in cases.values():
        for shard in corpus.shard_files(root, case)[:1]:
            backing.alter(str(shard.relative_to(root)), lambda path: path.write_bytes(os.urandom(37)))
    backing.alter("group2/zarr.json",
                  lambda path: path.write_text('{"zarr_format": 3, "node_type": "array", "shape": "x"}'))
    mnt = backend.mount(mount, backing, *options)
    for path in [mnt.path / f for f in list_files(mnt.path)]:
        try:
            path.read_bytes()
        except OSError as error:
            assert error.errno == errno.EIO, (path, error)
    for case in cases.values():
        try:
            zarr.open_array(mnt.path / case.path, mode="r")[...]
        except Exception:  # noqa: BLE001 - readers may fail; the daemon must not
            pass
    assert mnt.status()["pid"] > 1
    assert "internal error" not in mnt.log_text()
