"""Writes you can trust: each symptom found by trying zarrfs as a user would, reproduced
through a real mount (issue "Writes you can trust"; SPEC §5, §6).

Each test names the user-visible symptom it guards against. The classes of these
bugs are covered more broadly by test_crash_matrix.py (kill -9 over every writer
idiom), test_exerciser.py (random operations against a model), test_writer_matrix.py
(real writers) and test_listing.py (listing equals reading).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from conftest import ZARRFS, is_mounted, list_files, wait_until
from helpers import alive
from legacy import zarr2_python

CHUNK = (4, 4)
SHAPE = (16, 16)  # a 4 x 4 chunk grid; --shards 2: 2 x 2 shards of 4 chunks
RAW = 4 * 4  # bytes of one raw uint8 chunk


def raw_chunk(value: int) -> bytes:
    return bytes([value]) * RAW


def new_array(path: Path, fill: int = 0) -> zarr.Array:
    array = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=fill)
    array[...] = 1
    return array


def fsync_path(path: Path) -> None:
    """fsync through a new read-only descriptor, as a checkpointing job does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backing(store: Path, name: str) -> np.ndarray:
    return zarr.open_array(str(store / name), mode="r")[...]


def shard_files(store: Path) -> set[str]:
    return {f for f in list_files(store) if not os.path.basename(f).startswith(".zarrfs")}


@pytest.fixture
def writable(tmp_path, mount):
    """``(store, mnt)``: an empty store mounted writable, flushes only when asked."""
    store = tmp_path / "store.zarr"
    store.mkdir()
    return store, mount(store, "--flush-after", "3600", "--shards", "2")


# -- a dead daemon ------------------------------------------------------------------------


def test_writers_that_go_on_after_kill_9_write_nothing_beneath_the_mountpoint(writable):
    store, mnt = writable
    new_array(mnt / "a")
    pid = mnt.status()["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid))
    errors = []
    for attempt in (lambda: os.makedirs(mnt / "a" / "c" / "9", exist_ok=True),
                    lambda: os.open(mnt / "a" / "c" / "0" / "0", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                    lambda: os.open(mnt / "new-file", os.O_WRONLY | os.O_CREAT),
                    lambda: os.listdir(mnt / "a")):  # (stat may be answered from the kernel cache)
        with pytest.raises(OSError) as error:
            attempt()
        errors.append(error.value.errno)
    # ENOTCONN; a request the kernel had in flight when the connection died: ECONNABORTED
    assert set(errors) <= {errno.ENOTCONN, errno.ECONNABORTED} and errno.ENOTCONN in errors
    subprocess.run(["fusermount3", "-u", "-z", str(mnt.path)], check=True)
    assert os.listdir(mnt.path) == []  # nothing landed in the directory beneath


# -- renaming directories with buffered writes --------------------------------------------


@pytest.mark.parametrize("moved", ["array", "parent group"])
def test_renaming_a_directory_keeps_its_unflushed_writes(writable, moved):
    store, mnt = writable
    zarr.create_group(str(mnt / "g"))
    new_array(mnt / "g" / "a")
    (mnt / "g" / "a" / "c" / "0" / "0").write_bytes(raw_chunk(7))  # closed, not fsync'ed
    (mnt / "g" / "a" / "notes.tmp").write_bytes(b"scratch")  # a scratch file beside the chunks
    if moved == "array":
        os.rename(mnt / "g" / "a", mnt / "g" / "b")
        moved_array = Path("g/b")
    else:
        os.rename(mnt / "g", mnt / "h")
        moved_array = Path("h/a")
    assert (mnt.path / moved_array / "c" / "0" / "0").read_bytes() == raw_chunk(7)
    assert (mnt.path / moved_array / "notes.tmp").read_bytes() == b"scratch"
    (mnt.path / moved_array / "c" / "3" / "3").write_bytes(raw_chunk(9))  # and writes go on there
    started = time.monotonic()
    mnt.unmount()
    assert time.monotonic() - started < 30
    values = backing(store, str(moved_array))
    assert (values[:4, :4] == 7).all() and (values[12:, 12:] == 9).all() and values[4, 4] == 1
    assert "no longer an array" not in mnt.log_text()


# -- zarr-python 3 below missing parents ---------------------------------------------------


def test_zarr_python_3_creates_arrays_and_groups_below_missing_parents(writable):
    store, mnt = writable
    array = zarr.create_array(store=LocalStore(str(mnt.path)), name="grp/sub/arr", shape=(8, 8), chunks=(4, 4),
                              dtype="i4")
    array[...] = 5
    zarr.create_group(store=LocalStore(str(mnt.path)), path="a/b")
    assert json.loads((mnt / "grp" / "zarr.json").read_text())["node_type"] == "group"
    assert json.loads((mnt / "a" / "b" / "zarr.json").read_text())["node_type"] == "group"
    with pytest.raises(FileExistsError):  # zarr's set_if_not_exists: link() onto existing metadata
        os.link(mnt / "grp" / "zarr.json", mnt / "a" / "zarr.json")
    mnt.unmount()
    assert (backing(store, "grp/sub/arr") == 5).all()


# -- the v2 view of 1-d arrays ---------------------------------------------------------------


def test_the_v2_view_lists_the_chunks_of_1d_arrays_and_hides_their_shards(tmp_path, mount):
    store = tmp_path / "store.zarr"
    array = zarr.create_array(str(store / "x"), shape=(20,), chunks=(2,), shards=(6,), dtype="i4", compressors=None)
    array[...] = np.arange(20)
    mnt = mount(store, "--view", "v2")
    assert set(os.listdir(mnt / "x")) == {".zarray", *(str(i) for i in range(10))}
    assert not os.path.exists(mnt / "x" / "c")
    with pytest.raises(FileNotFoundError):
        (mnt / "x" / "c" / "0").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(mnt / "x", copy)
    assert len(os.listdir(copy)) == 11


# -- metadata written in place ---------------------------------------------------------------


def test_a_zarr2_group_copied_into_the_v2_view_opens_at_once(tmp_path, mount):
    source = tmp_path / "source"
    script = f"import zarr; g = zarr.open_group({str(source)!r}, mode='w'); g.attrs['a'] = 1; " \
             "x = g.create_dataset('x', shape=(6,), chunks=(2,), dtype='i4'); x[:] = [1, 2, 3, 4, 5, 6]"
    subprocess.run([str(zarr2_python()), "-c", script], check=True)
    store = tmp_path / "store.zarr"
    store.mkdir()
    mnt = mount(store, "--view", "v2")
    subprocess.run(["cp", "-r", str(source), str(mnt / "g")], check=True)
    assert json.loads((mnt / "g" / ".zgroup").read_text()) == {"zarr_format": 2}
    assert json.loads((mnt / "g" / ".zattrs").read_text()) == {"a": 1}
    read = f"import zarr; g = zarr.open_group({str(mnt / 'g')!r}, mode='r'); print(dict(g.attrs), g['x'][:].tolist())"
    out = subprocess.run([str(zarr2_python()), "-c", read], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "{'a': 1} [1, 2, 3, 4, 5, 6]"


def test_a_v3_group_zarr_json_written_in_place_reads_back_at_once(writable):
    _, mnt = writable
    os.mkdir(mnt / "grp")
    with open(mnt / "grp" / "zarr.json", "w") as f:
        f.write('{"zarr_format": 3, "node_type": "group", "attributes": {"x": 1}}')
    assert json.loads((mnt / "grp" / "zarr.json").read_text())["attributes"] == {"x": 1}


def test_a_chunk_moved_around_and_over_reads_its_last_content(writable):
    _, mnt = writable
    new_array(mnt / "a")
    c = mnt / "a" / "c"
    os.rename(c / "0" / "2", c / "2" / "2")
    (c / "0" / "2").write_bytes(raw_chunk(8))
    os.unlink(c / "2" / "2")
    os.rename(c / "0" / "2", c / "3" / "0")
    assert "0" in os.listdir(c / "3")
    assert (c / "3" / "0").read_bytes() == raw_chunk(8)
    assert not os.path.exists(c / "2" / "2") and not os.path.exists(c / "0" / "2")


# -- POSIX semantics ordinary programs rely on ------------------------------------------------


@pytest.mark.parametrize("open_mode", [os.O_RDWR, os.O_RDONLY])
def test_a_descriptor_of_an_unlinked_chunk_keeps_working(writable, open_mode):
    _, mnt = writable
    new_array(mnt / "a")
    path = mnt / "a" / "c" / "1" / "1"
    fd = os.open(path, open_mode)
    try:
        os.unlink(path)
        assert os.fstat(fd).st_size == RAW
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, RAW, 0) == raw_chunk(1)
        if open_mode == os.O_RDWR:
            assert os.pwrite(fd, b"\x05", 0) == 1
            assert os.pread(fd, 2, 0) == b"\x05\x01"
            os.ftruncate(fd, 3)
            assert os.fstat(fd).st_size == 3
    finally:
        os.close(fd)
    assert not os.path.exists(path)


def test_a_chunk_moved_over_a_plain_file_replaces_it_for_good(writable):
    store, mnt = writable
    new_array(mnt / "a")
    (mnt / "a" / "notes.txt").write_text("old notes")
    mnt.unmount()
    mnt2 = subprocess.run([*ZARRFS, "mount", str(store), str(mnt.path), "--log-file", str(mnt.log)], check=True)
    assert mnt2.returncode == 0
    os.rename(mnt / "a" / "c" / "1" / "1", mnt / "a" / "notes.txt")
    assert (mnt / "a" / "notes.txt").read_bytes() == raw_chunk(1)
    os.unlink(mnt / "a" / "notes.txt")
    assert not os.path.exists(mnt / "a" / "notes.txt")
    mnt.unmount()
    assert not (store / "a" / "notes.txt").exists()


def test_rm_r_of_an_array_with_buffered_deletions(writable):
    store, mnt = writable
    new_array(mnt / "a")
    mnt.unmount()
    subprocess.run([*ZARRFS, "mount", str(store), str(mnt.path), "--flush-after", "3600", "--shards", "2",
                    "--log-file", str(mnt.log)], check=True)
    subprocess.run(["rm", "-r", str(mnt / "a")], check=True, capture_output=True, text=True)
    assert os.listdir(mnt.path) == []
    new_array(mnt / "a")  # the same name again: its key directories are what its store says
    assert sorted(os.listdir(mnt / "a" / "c")) == ["0", "1", "2", "3"]
    mnt.unmount()
    assert (backing(store, "a") == 1).all()


def test_link_of_a_file_from_another_directory_onto_a_chunk_key(writable):
    store, mnt = writable
    new_array(mnt / "a")
    os.unlink(mnt / "a" / "c" / "2" / "2")
    os.mkdir(mnt / "tmp")
    (mnt / "tmp" / "t").write_bytes(raw_chunk(6))
    os.link(mnt / "tmp" / "t", mnt / "a" / "c" / "2" / "2")
    os.unlink(mnt / "tmp" / "t")
    assert (mnt / "a" / "c" / "2" / "2").read_bytes() == raw_chunk(6)
    mnt.unmount()
    assert (backing(store, "a")[8:12, 8:12] == 6).all()


def test_hard_links_share_an_inode_and_count_their_links(writable):
    _, mnt = writable
    new_array(mnt / "a")
    (mnt / "a" / "c" / "0" / "1").write_bytes(raw_chunk(3))
    os.link(mnt / "a" / "c" / "0" / "1", mnt / "a" / "tmp")
    first, second = os.stat(mnt / "a" / "c" / "0" / "1"), os.stat(mnt / "a" / "tmp")
    assert first.st_ino == second.st_ino
    assert first.st_nlink == second.st_nlink == 2
    os.unlink(mnt / "a" / "tmp")
    assert os.stat(mnt / "a" / "c" / "0" / "1").st_nlink == 1


# -- stopping never persists half-written files ------------------------------------------------


def test_umount_waits_for_a_writer_and_keeps_what_it_wrote(writable):
    store, mnt = writable
    new_array(mnt / "a")
    fd = os.open(mnt / "a" / "c" / "0" / "0", os.O_WRONLY | os.O_TRUNC)
    umount = subprocess.Popen([*ZARRFS, "umount", str(mnt.path)], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert umount.poll() is None and is_mounted(mnt.path)  # waiting for the writer
        os.write(fd, raw_chunk(4))
    finally:
        os.close(fd)
    assert umount.wait(timeout=60) == 0, umount.stderr.read()
    assert "waiting for 1 files open for writing" in umount.stderr.read()
    assert (backing(store, "a")[:4, :4] == 4).all()


def test_umount_of_a_busy_mount_fails_with_ebusy_and_changes_nothing(writable):
    store, mnt = writable
    new_array(mnt / "a")
    fd = os.open(mnt / "a" / "c" / "0" / "0", os.O_WRONLY | os.O_TRUNC)
    try:
        result = subprocess.run([*ZARRFS, "umount", "--timeout", "1", str(mnt.path)], capture_output=True, text=True)
        assert result.returncode != 0 and "busy" in result.stderr
        assert is_mounted(mnt.path)
        os.write(fd, raw_chunk(2))
    finally:
        os.close(fd)
    mnt.unmount()
    assert (backing(store, "a")[:4, :4] == 2).all()


def test_sigterm_between_open_o_trunc_and_write_keeps_the_old_chunk(writable):
    store, mnt = writable
    new_array(mnt / "a")
    fsync_path(mnt / "a")  # everything is in shards now
    fd = os.open(mnt / "a" / "c" / "0" / "0", os.O_WRONLY | os.O_TRUNC)
    fresh = os.open(mnt / "a" / "c" / "3" / "3", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # created, never closed
    pid = mnt.status()["pid"]
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not alive(pid), timeout=60)
    for descriptor in (fd, fresh):
        try:
            os.close(descriptor)
        except OSError:
            pass
    values = backing(store, "a")
    assert (values == 1).all()  # neither the empty file nor the new one became a chunk


def test_a_timed_flush_never_stores_the_empty_file_between_open_o_trunc_and_write(tmp_path, mount):
    store = tmp_path / "store.zarr"
    store.mkdir()
    mnt = mount(store, "--flush-after", "0.1", "--shards", "2")
    new_array(mnt / "a")
    fd = os.open(mnt / "a" / "c" / "0" / "0", os.O_WRONLY | os.O_TRUNC)
    try:
        time.sleep(1.5)  # many timed flushes of the shard happen here
        assert (backing(store, "a")[:4, :4] == 1).all()  # the old content, readable by zarr-python 3
        os.write(fd, raw_chunk(5))
    finally:
        os.close(fd)
    assert wait_until(lambda: (backing(store, "a")[:4, :4] == 5).all(), timeout=10)


# -- chunk files before their metadata ---------------------------------------------------------


def test_chunks_copied_before_their_metadata_never_land_as_plain_files(tmp_path, writable):
    store, mnt = writable
    os.makedirs(mnt / "a" / "c" / "0")
    for j in range(4):
        (mnt / "a" / "c" / "0" / str(j)).write_bytes(raw_chunk(j + 1))
    assert not [f for f in list_files(store) if f.startswith("a/c/")]  # buffered, no inode each
    assert (mnt / "a" / "c" / "0" / "2").read_bytes() == raw_chunk(3)
    source = tmp_path / "plain"
    zarr.create_array(str(source), shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=0)
    shutil.copy(source / "zarr.json", mnt / "a" / "zarr.json")  # the metadata arrives last
    assert (mnt / "a" / "c" / "0" / "2").read_bytes() == raw_chunk(3)
    mnt.unmount()
    assert shard_files(store / "a") == {"zarr.json", "c/0/0", "c/0/1"}
    values = backing(store, "a")
    assert [values[0, 4 * j] for j in range(4)] == [1, 2, 3, 4]


def test_chunk_files_on_disk_are_adopted_and_survive_a_crash_while_adopting(tmp_path, mount):
    store = tmp_path / "store.zarr"
    source = tmp_path / "plain"
    plain = zarr.create_array(str(source), shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=0)
    plain[...] = np.arange(256, dtype="u1").reshape(SHAPE)
    shutil.copytree(source, store / "a", ignore=shutil.ignore_patterns("zarr.json"))  # there before the mount
    mnt = mount(store, "--flush-after", "3600", "--shards", "2")
    pid = mnt.status()["pid"]
    shutil.copy(source / "zarr.json", mnt / "a" / "zarr.json")
    assert (zarr.open_array(str(mnt / "a"), mode="r")[...] == plain[...]).all()
    os.kill(pid, signal.SIGKILL)  # before any repack: the chunk files are staged, not lost
    assert wait_until(lambda: not alive(pid))
    subprocess.run([*ZARRFS, "mount", str(store), str(mnt.path), "--log-file", str(mnt.log)], check=True)
    assert wait_until(lambda: "adopting" in mnt.log_text(), timeout=20)
    assert (zarr.open_array(str(mnt / "a"), mode="r")[...] == plain[...]).all()
    mnt.unmount()
    assert (backing(store, "a") == plain[...]).all()
    assert not [f for f in list_files(store) if ".zarrfs-adopt" in f or ".zarrfs-tmp" in f]


# -- an internal error in the flusher --------------------------------------------------------------


def test_an_internal_error_while_flushing_keeps_the_daemon_and_the_data(writable):
    store, mnt = writable
    new_array(mnt / "a")
    (mnt / "a" / "c" / "1" / "1").write_bytes(raw_chunk(9))
    metadata = store / "a" / "zarr.json"
    good = metadata.read_bytes()
    doc = json.loads(good)
    doc["shape"] = [16, 16, 16]  # behind the mount's back: the buffered chunk no longer fits the array
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [8, 8, 8]
    doc["codecs"][0]["configuration"]["chunk_shape"] = [4, 4, 4]
    metadata.write_text(json.dumps(doc))
    time.sleep(1.5)  # the metadata stats the daemon reuses expire
    fd = os.open(mnt / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            os.fsync(fd)  # the flush fails: logged, the data kept
    finally:
        os.close(fd)
    assert alive(mnt.status()["pid"])
    metadata.write_bytes(good)
    mnt.unmount()
    assert (backing(store, "a")[4:8, 4:8] == 9).all()


# -- the repack lock -----------------------------------------------------------------------------------


def test_the_repack_lock_is_a_file_that_is_never_replaced(writable):
    store, mnt = writable
    array = new_array(mnt / "a")
    fsync_path(mnt / "a")
    lock = store / "a" / ".zarrfs-lock"
    inode = lock.stat().st_ino
    array.attrs["units"] = "m"  # zarr.json is replaced
    array.resize((16, 20))
    fsync_path(mnt / "a")
    assert lock.stat().st_ino == inode
    assert ".zarrfs-lock" not in os.listdir(mnt / "a")


def test_a_repack_waits_for_the_lock_another_node_holds(writable):
    store, mnt = writable
    new_array(mnt / "a")
    fsync_path(mnt / "a")
    fd = os.open(store / "a" / ".zarrfs-lock", os.O_RDWR)
    try:
        # every byte: whichever the shard's hash picks
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        (mnt / "a" / "c" / "0" / "0").write_bytes(raw_chunk(3))
        done = threading.Event()

        def fsync_chunk():
            chunk = os.open(mnt / "a" / "c" / "0" / "0", os.O_RDONLY)
            os.fsync(chunk)
            os.close(chunk)
            done.set()

        threading.Thread(target=fsync_chunk, daemon=True).start()
        assert not done.wait(1.5)  # the repack waits for the lock
    finally:
        os.close(fd)  # released
    assert done.wait(20)
    assert (backing(store, "a")[:4, :4] == 3).all()


# -- modes and owners ----------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (the daemon runs as root on HPC nodes)")


@needs_root
def test_a_new_shard_and_its_directories_take_the_array_owner_and_mode(writable):
    store, mnt = writable
    zarr.create_array(str(mnt / "a"), shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=0)
    for root, dirs, files in os.walk(store / "a"):
        for name in [*dirs, *files, "."]:
            os.chown(os.path.join(root, name), 1234, 1234)
    os.chmod(store / "a" / "zarr.json", 0o640)
    os.makedirs(mnt / "a" / "c" / "3", exist_ok=True)
    fd = os.open(mnt / "a" / "c" / "3" / "3", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, raw_chunk(2))
    os.fsync(fd)
    os.close(fd)
    shard = store / "a" / "c" / "1" / "1"
    assert (shard.stat().st_uid, shard.stat().st_mode & 0o777) == (1234, 0o640)
    assert shard.parent.stat().st_uid == 1234


def test_cp_r_of_an_array_makes_every_key_directory_after_a_repack(tmp_path, writable):
    """cp -r makes each key directory with mkdir (a new destination: no stat first). A
    repack of the shard holding chunk row 0 must not make rows 1..3 appear before cp
    makes them (EEXIST, and cp skipped their chunks); the copy then reads back whole."""
    store, mnt = writable
    source = tmp_path / "source"
    plain = new_array(source)
    plain[...] = np.arange(256, dtype="u1").reshape(SHAPE)
    os.makedirs(mnt / "copy" / "c" / "0")
    shutil.copy(source / "zarr.json", mnt / "copy" / "zarr.json")
    for j in range(4):
        shutil.copy(source / "c" / "0" / str(j), mnt / "copy" / "c" / "0" / str(j))
    fsync_path(mnt / "copy" / "c" / "0" / "0")  # repacks the shard of rows 0 and 1, columns 0 and 1
    assert sorted(os.listdir(mnt / "copy" / "c")) == ["0"]
    for i in range(1, 4):
        os.mkdir(mnt / "copy" / "c" / str(i))  # EEXIST before the fix
        for j in range(4):
            shutil.copy(source / "c" / str(i) / str(j), mnt / "copy" / "c" / str(i) / str(j))
    assert sorted(os.listdir(mnt / "copy" / "c")) == ["0", "1", "2", "3"]
    mnt.unmount()
    assert (backing(store, "copy") == np.arange(256, dtype="u1").reshape(SHAPE)).all()
