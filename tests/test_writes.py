"""Writes through the mount with the idioms real writers use (SPEC §5).

On both backends (tests/backends.py): what the backing store holds is read from a
snapshot of it (the directory itself, or a fresh download of the bucket's prefix).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import list_files

CHUNK = (4, 4)
SHAPE = (16, 12)  # a 4 x 3 chunk grid
RAW = 4 * 4 * 2  # bytes of one raw uint16 chunk


def raw_chunk(value: int) -> bytes:
    return np.full(CHUNK, value, dtype="<u2").tobytes()


@pytest.fixture
def array(tmp_path, mount, backend):
    """``(backing store, mount, array in the view)``: an empty uint16 array with raw chunks,
    created through a v3 mount of an empty store."""
    backing = backend.empty_store(tmp_path)
    mnt = backend.mount(mount, backing, "--flush-after", "600", "--shards", "2")
    zarr.create_array(mnt.path / "a", shape=SHAPE, chunks=CHUNK, dtype="<u2", compressors=None, fill_value=0)
    return backing, mnt, mnt.path / "a"


def backing_values(store: Path) -> np.ndarray:
    return zarr.open_array(store / "a", mode="r")[...]


def backing_chunk(store: Path, i: int, j: int) -> np.ndarray:
    """The values of chunk key c/i/j as the backing store holds them (read by zarr-python 3)."""
    rows, cols = CHUNK
    return backing_values(store)[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols]


def test_created_arrays_are_sharded_in_the_backing_store(array):
    backing, _, a = array
    meta = json.loads((backing.snapshot() / "a" / "zarr.json").read_text())
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["chunk_shape"] == list(CHUNK)
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [8, 8]  # --shards 2
    assert sharding["configuration"]["index_codecs"][-1]["name"] == "crc32c"
    shown = json.loads((a / "zarr.json").read_text())
    assert shown["chunk_grid"]["configuration"]["chunk_shape"] == list(CHUNK)
    assert "sharding_indexed" not in json.dumps(shown)


def test_a_written_chunk_reads_back_at_once_and_reaches_its_shard_on_fsync(array):
    backing, _, a = array
    (a / "c" / "1").mkdir(parents=True, exist_ok=True)
    fd = os.open(a / "c" / "1" / "2", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, raw_chunk(7))
    assert (a / "c" / "1" / "2").read_bytes() == raw_chunk(7)  # before fsync, before close
    assert (a / "c" / "1" / "2").stat().st_size == RAW
    assert not (backing.snapshot() / "a" / "c").exists()  # nothing reached the store yet
    os.fsync(fd)
    os.close(fd)
    expected = np.zeros(SHAPE, "<u2")
    expected[4:8, 8:12] = 7
    store = backing.snapshot()
    assert np.array_equal(backing_values(store), expected)
    assert list_files(store / "a") == {"zarr.json", "c/0/1"}  # one shard (8 x 8 elements)


def test_partial_writes_and_truncate(array):
    backing, mnt, a = array
    key = a / "c" / "0" / "0"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(raw_chunk(1))
    with open(key, "r+b") as f:
        f.seek(2)
        f.write(b"\x05\x00")
        f.flush()
        os.fsync(f.fileno())
    assert key.read_bytes()[:4] == b"\x01\x00\x05\x00"
    os.truncate(key, 10)
    assert key.read_bytes() == raw_chunk(1)[:2] + b"\x05\x00" + raw_chunk(1)[4:10]
    with open(key, "r+b") as f:
        f.truncate(RAW)
    assert key.stat().st_size == RAW
    mnt.unmount()
    values = backing_values(backing.snapshot())
    assert values[0, 0] == 1 and values[0, 1] == 5 and values[1, 3] == 0


def test_temp_file_and_rename_like_zarr_python_2(array):
    backing, mnt, a = array
    (a / "c" / "2").mkdir(parents=True, exist_ok=True)
    temp = a / "c" / "2" / "1.0123456789abcdef0123456789abcdef.partial"
    temp.write_bytes(raw_chunk(3))
    os.replace(temp, a / "c" / "2" / "1")
    assert not temp.exists()
    assert sorted(os.listdir(a / "c" / "2")) == ["1"]
    mnt.unmount()
    store = backing.snapshot()
    assert backing_chunk(store, 2, 1).tolist() == np.full(CHUNK, 3).tolist()
    assert not [f for f in list_files(store) if "partial" in f]


def test_link_then_unlink_like_zarr_python_3(array):
    backing, mnt, a = array
    (a / "c" / "3").mkdir(parents=True, exist_ok=True)
    temp = a / "c" / "3" / "0.tmp"
    temp.write_bytes(raw_chunk(9))
    os.link(temp, a / "c" / "3" / "0")
    with pytest.raises(FileExistsError):
        os.link(temp, a / "c" / "3" / "0")
    os.unlink(temp)
    assert (a / "c" / "3" / "0").read_bytes() == raw_chunk(9)
    mnt.unmount()
    assert backing_chunk(backing.snapshot(), 3, 0).tolist() == np.full(CHUNK, 9).tolist()


def test_lock_file_renamed_while_open_then_directory_fsync_like_tensorstore(array):
    backing, _, a = array
    directory = a / "c" / "1"
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "1.__lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC
    os.write(fd, raw_chunk(4))
    os.fsync(fd)
    os.rename(lock, directory / "1")
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dirfd)
    os.close(dirfd)
    os.close(fd)
    assert backing_chunk(backing.snapshot(), 1, 1).tolist() == np.full(CHUNK, 4).tolist()


def test_a_directory_removed_while_a_file_below_it_is_open_can_be_made_again(array):
    """rmdir leaves the kernel's inode of the directory dead (nothing can be made in it) while
    a descriptor open below it holds it; a directory made again at that name must be another
    inode. (Regression, found by the exerciser: the new key directory got the old number back,
    the kernel took it for the dead one, and every file created in it was ENOENT.)"""
    backing, mnt, a = array
    for directory in (a / "c" / "3", mnt.path / "notes"):
        directory.mkdir(parents=True)
        (directory / "0").write_bytes(raw_chunk(1))
        held = os.open(directory / "0", os.O_RDWR)
        try:
            os.unlink(directory / "0")
            os.rmdir(directory)
            directory.mkdir()
            (directory / "1").write_bytes(raw_chunk(2))
            assert (directory / "1").read_bytes() == raw_chunk(2)
            assert os.pread(held, RAW, 0) == raw_chunk(1)
        finally:
            os.close(held)
    mnt.unmount()
    assert backing_chunk(backing.snapshot(), 3, 1).tolist() == np.full(CHUNK, 2).tolist()
    assert (backing.snapshot() / "notes" / "1").read_bytes() == raw_chunk(2)


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def test_rename_noreplace_like_mv(array):
    _, _, a = array
    (a / "c" / "0").mkdir(parents=True, exist_ok=True)
    (a / "c" / "0" / "0").write_bytes(raw_chunk(1))
    (a / "c" / "0" / "x").write_bytes(raw_chunk(2))
    with pytest.raises(FileExistsError):
        renameat2(a / "c" / "0" / "x", a / "c" / "0" / "0", 1)  # RENAME_NOREPLACE
    renameat2(a / "c" / "0" / "x", a / "c" / "0" / "1", 1)
    assert (a / "c" / "0" / "1").read_bytes() == raw_chunk(2)
    assert (a / "c" / "0" / "0").read_bytes() == raw_chunk(1)


def test_unlink_removes_a_chunk_and_an_empty_shard_is_deleted(array, mount, backend):
    backing, mnt, a = array
    (a / "c" / "0").mkdir(parents=True, exist_ok=True)
    for j in range(2):
        (a / "c" / "0" / str(j)).write_bytes(raw_chunk(j + 1))
    mnt.unmount()
    assert (backing.snapshot() / "a" / "c" / "0" / "0").exists()
    again = backend.mount(mount, backing, "--flush-after", "600")
    for j in range(2):
        os.unlink(again.path / "a" / "c" / "0" / str(j))
    assert not (again.path / "a" / "c" / "0" / "0").exists()
    again.unmount()
    assert list_files(backing.snapshot() / "a") == {"zarr.json"}


def test_overwriting_with_o_trunc_like_cp(array):
    backing, mnt, a = array
    (a / "c" / "0").mkdir(parents=True, exist_ok=True)
    (a / "c" / "0" / "0").write_bytes(raw_chunk(1))
    (a / "c" / "0" / "0").write_bytes(raw_chunk(2))  # open(O_TRUNC) + write
    with pytest.raises(FileExistsError):
        os.open(a / "c" / "0" / "0", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    mnt.unmount()
    assert backing_values(backing.snapshot())[0, 0] == 2


def test_chunk_keys_outside_the_grid_are_refused(array):
    store, mnt, a = array
    (a / "c" / "0").mkdir(parents=True, exist_ok=True)
    with pytest.raises(OSError) as failure:
        (a / "c" / "0" / "3").write_bytes(raw_chunk(1))  # the grid has 3 columns
    assert failure.value.errno == errno.EINVAL
    with pytest.raises(OSError) as failure:
        (a / "c" / "9").mkdir()
    assert failure.value.errno in (errno.EINVAL, errno.ENOENT)
    assert "outside the grid" in mnt.log_text()


def test_sharded_metadata_written_through_the_view_is_refused(array):
    backing, mnt, a = array
    before = (backing.snapshot() / "a" / "zarr.json").read_bytes()
    sharded = before.decode()
    with pytest.raises(OSError) as failure:
        (a / "zarr.json").write_text(sharded)
    assert failure.value.errno == errno.EINVAL
    assert (backing.snapshot() / "a" / "zarr.json").read_bytes() == before
    assert "sharded metadata written through the view" in mnt.log_text()


def test_attributes_and_resize_keep_the_sharding(array):
    backing, mnt, a = array
    z = zarr.open_array(a, mode="r+")
    z[...] = np.arange(16 * 12, dtype="<u2").reshape(SHAPE)
    z.attrs["units"] = "mm"
    z.resize((8, 12))
    assert zarr.open_array(a, mode="r").shape == (8, 12)
    mnt.unmount()
    store = backing.snapshot()
    stored = zarr.open_array(store / "a", mode="r")
    assert stored.shape == (8, 12) and stored.attrs["units"] == "mm" and stored.shards == (8, 8)
    assert np.array_equal(stored[...], np.arange(16 * 12, dtype="<u2").reshape(SHAPE)[:8])
    assert list_files(store / "a") == {"zarr.json", "c/0/0", "c/0/1"}  # shrinking dropped the lower shards


def test_rm_r_of_an_array(array):
    backing, mnt, a = array
    zarr.open_array(a, mode="r+")[...] = 5
    subprocess.run(["sync", "-f", str(a / "zarr.json")], check=True)
    subprocess.run(["rm", "-r", str(a)], check=True)
    assert not a.exists()
    mnt.unmount()
    assert not (backing.snapshot() / "a").exists()


def test_plain_files_outside_arrays_are_written_and_renamed_in_the_backing_store(array):
    backing, mnt, _ = array
    (mnt.path / "notes").mkdir()
    (mnt.path / "notes" / "README.txt").write_text("hello")
    os.rename(mnt.path / "notes" / "README.txt", mnt.path / "notes" / "README.md")
    assert (mnt.path / "notes" / "README.md").read_text() == "hello"
    store = backing.snapshot()
    assert (store / "notes" / "README.md").read_text() == "hello"
    assert not (store / "notes" / "README.txt").exists()


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # symlinks and modes: POSIX only (S3: EPERM, not kept)
def test_plain_files_outside_arrays_behave_like_the_backing_directory(array):
    store, mnt, _ = array
    store = store.root
    (mnt.path / "notes").mkdir()
    (mnt.path / "notes" / "README.txt").write_text("hello")
    os.rename(mnt.path / "notes" / "README.txt", mnt.path / "notes" / "README.md")
    os.symlink("README.md", mnt.path / "notes" / "link")
    assert (store / "notes" / "README.md").read_text() == "hello"
    assert os.readlink(mnt.path / "notes" / "link") == "README.md"
    os.chmod(mnt.path / "notes" / "README.md", 0o600)
    assert (store / "notes" / "README.md").stat().st_mode & 0o777 == 0o600


def test_read_only_mounts_refuse_every_write(tmp_path, mount, backend):
    store = tmp_path / "ro.zarr"
    zarr.create_array(store, shape=(4,), chunks=(2,), shards=(4,), dtype="u1")[...] = 1
    mnt = backend.mount(mount, backend.store(store), "--read-only")
    with pytest.raises(OSError) as failure:
        (mnt.path / "c" / "0").write_bytes(b"x")
    assert failure.value.errno == errno.EROFS


def test_plain_files_in_an_array_directory_survive_and_temporaries_do_not(array):
    backing, mnt, a = array
    (a / "README.txt").write_text("calibration notes")
    (a / "c" / "0").mkdir(parents=True, exist_ok=True)
    (a / "c" / "0" / "0.tmp").write_bytes(b"junk")
    (a / "c" / "0" / "0").write_bytes(raw_chunk(1))
    mnt.unmount()
    store = backing.snapshot()
    assert (store / "a" / "README.txt").read_text() == "calibration notes"
    assert list_files(store / "a") == {"zarr.json", "README.txt", "c/0/0"}
