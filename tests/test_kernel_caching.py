"""What the kernel is asked, and what it may cache (issue 6: fewer round trips per file).

zarrfs is built against its patched pyfuse3 (patches/): files opened only to read
send no FLUSH at close, and a read-only mount answers OPEN with ENOSYS so that the
kernel reads by inode and sends no OPEN or RELEASE at all. The status file counts
the requests, which lets these tests see what the kernel sent. Caching must not
cost correctness: a shard replaced outside the mount shows once the attribute
timeout has passed, whichever way files are opened.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyfuse3
import pytest
import zarr

SHAPE, CHUNKS, SHARDS = (64, 64), (16, 16), (32, 32)  # 16 chunk files in 4 shards


def write_array(root: Path, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 255, size=SHAPE, dtype=np.uint8)
    array = zarr.create_array(str(root / "arr"), shape=SHAPE, chunks=CHUNKS, shards=SHARDS, dtype="uint8",
                              compressors=None, fill_value=0, overwrite=True)
    array[...] = data
    return data


def chunk_files(mnt: Path) -> list[Path]:
    return sorted(p for p in (mnt / "arr" / "c").rglob("*") if p.is_file())


def expected_chunk(data: np.ndarray, path: Path) -> bytes:
    i, j = int(path.parent.name), int(path.name)
    return data[i * CHUNKS[0]:(i + 1) * CHUNKS[0], j * CHUNKS[1]:(j + 1) * CHUNKS[1]].tobytes()


def read_all(paths: list[Path]) -> dict[Path, bytes]:
    contents = {}
    for path in paths:
        with open(path, "rb") as f:
            contents[path] = f.read()
    return contents


@pytest.fixture
def store(tmp_path) -> tuple[Path, np.ndarray]:
    root = tmp_path / "store"
    return root, write_array(root, seed=1)


def test_zarrfs_runs_on_its_patched_pyfuse3():
    assert {"noflush", "read_without_open"} <= getattr(pyfuse3, "FEATURES", frozenset())


def test_a_read_only_mount_reads_by_inode_without_open_or_release(store, mount):
    root, data = store
    mnt = mount(root, "--read-only")
    paths = chunk_files(mnt.path)
    assert len(paths) == 16
    for path, content in read_all(paths).items():
        assert content == expected_chunk(data, path), path
    requests = mnt.status()["requests"]
    assert requests.get("open", 0) <= 1  # the first is answered ENOSYS, then the kernel stops asking
    assert requests.get("flush", 0) <= 1 and "release" not in requests, requests  # FLUSH too: ENOSYS once
    assert requests["read"] >= 16


def test_files_opened_to_read_on_a_writable_mount_send_no_flush(store, mount):
    root, data = store
    mnt = mount(root)
    paths = chunk_files(mnt.path)
    for path, content in read_all(paths).items():
        assert content == expected_chunk(data, path), path
    requests = mnt.status()["requests"]
    assert requests["open"] >= 16 and requests["release"] >= 16
    assert "flush" not in requests


def status_counts(mnt) -> tuple[int, int]:
    """Open handles and those open for writing, once the kernel's RELEASEs (sent after
    close() returns) have arrived."""
    deadline = time.monotonic() + 5
    while True:
        status = mnt.status()
        counts = status["open_handles"], status["open_for_writing"]
        if counts == (0, 0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["plain.txt", "arr/c/0/0", "arr/zarr.json"])
def test_o_trunc_of_an_existing_file_truncates_it(store, mount, name):
    root, _ = store
    mnt = mount(root)
    path = mnt.path / name
    if name == "plain.txt":
        path.write_bytes(b"a long first content\n")
        shorter = b"short\n"
    elif name.endswith("zarr.json"):
        doc = json.loads(path.read_bytes())
        doc["attributes"] = {"long": "x" * 500}
        path.write_text(json.dumps(doc))
        doc["attributes"] = {}
        shorter = json.dumps(doc).encode()
    else:
        shorter = bytes(range(256))  # a whole chunk: 16 x 16 bytes, the same size as before
    with open(path, "wb") as f:
        f.write(shorter)
    assert path.read_bytes() == shorter if not name.endswith("zarr.json") else json.loads(path.read_bytes()) == json.loads(shorter)
    assert status_counts(mnt) == (0, 0)
    mnt.unmount()
    mnt = mount(root)
    again = (mnt.path / name).read_bytes()
    assert again == shorter if not name.endswith("zarr.json") else json.loads(again)["attributes"] == {}


def test_created_files_leave_no_handle_behind(store, mount):
    root, _ = store
    mnt = mount(root)
    for i in range(5):
        (mnt.path / f"f{i}.txt").write_bytes(b"x" * i)
    (mnt.path / "arr" / "c" / "0" / "1").write_bytes(bytes(256))
    assert status_counts(mnt) == (0, 0)
    assert [(mnt.path / f"f{i}.txt").read_bytes() for i in range(5)] == [b"x" * i for i in range(5)]


def test_a_duplicated_descriptor_writes_on_after_the_first_is_closed(store, mount):
    root, _ = store
    mnt = mount(root)
    path = mnt.path / "arr" / "c" / "1" / "1"
    fd = os.open(path, os.O_WRONLY)
    other = os.dup(fd)
    os.pwrite(fd, b"\1" * 128, 0)
    os.close(fd)
    os.pwrite(other, b"\2" * 128, 128)
    os.fsync(other)
    os.close(other)
    assert path.read_bytes() == b"\1" * 128 + b"\2" * 128
    assert status_counts(mnt) == (0, 0)
    mnt.unmount()
    assert (mount(root).path / "arr" / "c" / "1" / "1").read_bytes() == b"\1" * 128 + b"\2" * 128


@pytest.mark.parametrize("how", ["unlink", "rename over"])
def test_a_descriptor_reads_its_file_after_the_name_is_gone(store, mount, how):
    """As on ext4."""
    root, data = store
    mnt = mount(root)
    path = mnt.path / "arr" / "c" / "0" / "1"
    with open(path, "rb") as f:
        if how == "unlink":
            path.unlink()
        else:
            (mnt.path / "arr" / "c" / "1" / "0").rename(path)
        time.sleep(0.5)  # the repack of the shard
        assert f.read() == expected_chunk(data, path)
        assert os.fstat(f.fileno()).st_nlink == 0
    if how == "rename over":
        assert path.read_bytes() == expected_chunk(data, mnt.path / "arr" / "c" / "1" / "0")
    else:
        assert not path.exists()


def test_closing_a_written_file_still_flushes(store, mount):
    """close() reports failed repacks and applies metadata: writers keep their FLUSH."""
    root, _ = store
    mnt = mount(root)
    (mnt.path / "arr" / "c" / "0" / "0").write_bytes(bytes(range(256)))
    assert mnt.status()["requests"]["flush"] >= 1
    assert (mnt.path / "arr" / "c" / "0" / "0").read_bytes() == bytes(range(256))


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
def test_the_status_file_is_current_at_every_read(store, mount, options):
    root, _ = store
    mnt = mount(root, *options)
    first = json.loads((mnt.path / ".zarrfs" / "status").read_text())
    read_all(chunk_files(mnt.path))
    second = json.loads((mnt.path / ".zarrfs" / "status").read_text())
    assert second["requests"]["read"] >= first["requests"].get("read", 0) + 16


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
def test_a_shard_replaced_outside_the_mount_shows_after_the_attribute_timeout(store, mount, options):
    root, old = store
    mnt = mount(root, "--attr-timeout", "1", *options)
    paths = chunk_files(mnt.path)
    assert read_all(paths) == {p: expected_chunk(old, p) for p in paths}  # now in the page cache

    new = write_array(root, seed=2)  # same sizes, other bytes: only the shards' mtimes and inodes tell
    time.sleep(2.5)  # the attribute timeout, and zarrfs's own second of reused stats
    assert read_all(paths) == {p: expected_chunk(new, p) for p in paths}
    np.testing.assert_array_equal(zarr.open_array(str(mnt.path / "arr"), mode="r")[...], new)


def test_descriptors_kept_open_do_not_hold_replaced_shards_for_ever(store, mount):
    """zarrfs keeps the shards it read last open; a shard replaced since is reopened on the next read."""
    root, _ = store
    mnt = mount(root, "--attr-timeout", "0", "--read-only")
    paths = chunk_files(mnt.path)
    for seed in (2, 3, 4):
        data = write_array(root, seed)
        time.sleep(1.2)  # past the reused stats
        assert read_all(paths) == {p: expected_chunk(data, p) for p in paths}
    pid = mnt.status()["pid"]
    held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not [target for target in held if target.endswith("(deleted)")], held


def test_chunk_inode_numbers_are_stable_distinct_and_follow_renames(store, mount):
    root, data = store
    mnt = mount(root)
    def numbers_of(mnt) -> dict[str, int]:
        return {str(p.relative_to(mnt.path)): p.stat().st_ino for p in chunk_files(mnt.path)}

    numbers = numbers_of(mnt)
    assert len(numbers) == 16 and len(set(numbers.values())) == 16
    mnt.unmount()
    mnt = mount(root)
    assert numbers_of(mnt) == numbers  # computed, not handed out: the same after a remount

    source, target = mnt.path / "arr/c/0/1", mnt.path / "arr/c/1/1"
    moved = source.read_bytes()
    os.rename(source, target)
    assert target.stat().st_ino == numbers["arr/c/0/1"]  # the kernel keeps the inode of a renamed file
    source.write_bytes(bytes(256))  # a new file at the old name: a number of its own
    assert source.stat().st_ino not in (target.stat().st_ino, numbers["arr/c/1/1"])
    assert target.read_bytes() == moved and source.read_bytes() == bytes(256)
    mnt.unmount()
    mnt = mount(root)
    assert (mnt.path / "arr/c/1/1").read_bytes() == moved
    assert (mnt.path / "arr/c/0/1").read_bytes() == bytes(256)
