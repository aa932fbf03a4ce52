"""Bad input (SPEC §7): corrupt shards fail loudly with EIO, the rest is served."""

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
def test_every_chunk_of_a_broken_shard_fails_with_eio(store_copy, mount, options, damage, name):
    root, cases = store_copy
    case = cases[name]
    DAMAGE[damage](case.shard_path(root, (0, 0)), case)
    mnt = mount(root, *options)
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
def test_a_listing_still_shows_the_chunks_of_a_broken_shard(store_copy, mount, name):
    root, cases = store_copy
    case = cases[name]
    corpus.corrupt_checksum(case.shard_path(root, (0, 0)), case.index_location)
    mnt = mount(root)
    listed = os.listdir(mnt.path / case.path / "c" / "0")
    assert listed, "the chunks are listed so that copying them fails loudly"
    assert_eio(mnt.path / case.path / "c" / "0" / listed[0])


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
@pytest.mark.parametrize("corruption", ["past_end", "into_index"])
@pytest.mark.parametrize("name", [CASE, START_CASE])
def test_a_bad_entry_fails_its_chunk_and_only_its_chunk(store_copy, mount, options, corruption, name):
    root, cases = store_copy
    case = cases[name]
    shard = case.shard_path(root, (0, 0))
    args = (shard, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
    present = corpus.read_shard_chunks(*args)
    chunk = sorted(present)[0]
    if corruption == "past_end":
        corpus.corrupt_entry_past_end(*args, chunk=chunk)
    else:
        corpus.corrupt_entry_into_index(*args, chunk=chunk)
    mnt = mount(root, *options)
    i, j = divmod(chunk, case.chunks_per_shard[1])
    bad = mnt.path / case.path / "c" / str(i) / str(j)
    assert_eio(bad)
    others = [p for p in chunk_keys_of_shard(mnt.path, case, (0, 0)) if p != bad and p.exists()]
    assert others
    for path in others:
        path.read_bytes()
    assert "outside the payload" in mnt.log_text()


def test_a_malformed_zarr_json_shows_its_directory_as_plain_files(store_copy, mount):
    root, cases = store_copy
    case = cases[CASE]
    (root / case.path / "zarr.json").write_text("{ not json")
    mnt = mount(root)
    assert list_files(mnt.path / case.path) == list_files(root / case.path)
    assert (mnt.path / case.path / "c" / "0" / "0").read_bytes() == (root / case.path / "c" / "0" / "0").read_bytes()
    assert f"{case.path}/zarr.json" in mnt.log_text()


@pytest.mark.parametrize("codecs", [
    [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 1}}],
    [{"name": "transpose", "configuration": {"order": [1, 0, 2]}}, {"name": "bytes"}],
])
def test_an_unsupported_index_codec_is_refused_with_a_log_line(store_copy, mount, codecs):
    root, cases = store_copy
    case = cases[CASE]
    with rewritten_json(root / case.path / "zarr.json") as meta:
        meta["codecs"][0]["configuration"]["index_codecs"] = codecs
    mnt = mount(root)
    assert list_files(mnt.path / case.path) == list_files(root / case.path)  # shown as stored
    assert "index_codecs" in mnt.log_text()


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
def test_garbage_everywhere_never_kills_the_daemon(store_copy, mount, options):
    root, cases = store_copy
    for case in cases.values():
        for shard in corpus.shard_files(root, case)[:1]:
            shard.write_bytes(os.urandom(37))
    (root / "group2" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": "x"}')
    mnt = mount(root, *options)
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
