"""Durability and crash safety (SPEC §5 "reaches the backing store", §6) on real mounts.

Every test here runs real daemons and real writer processes; nothing is mocked.
What is checked is always the *backing store*, read by zarr-python 3 and
tensorstore, plus a byte-level check that every shard file is complete (its
index checksum verifies and every entry lies inside the file).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import ZARRFS, force_unmount, is_mounted, wait_until
from helpers import (TEMPORARY_PREFIX, alive, check_shard_index, chunk_content, read_backing, read_status, seq_of,
                     write_file)
from zarrfs.store.local import temporary_name

# The array every test here writes: raw little-endian uint32 chunks (no compressor),
# so a chunk file is exactly CHUNK*CHUNK*4 bytes that a writer can produce by hand.
CHUNK = 32
GRID = 16  # chunks per axis
SHARDS = 4  # --shards: inner chunks per shard per axis -> 4x4 shards of 16 chunks
CHUNK_ELEMENTS = CHUNK * CHUNK
CHUNK_NBYTES = CHUNK_ELEMENTS * 4


def content(seq: int) -> np.ndarray:
    """The chunk a writer writes for sequence number ``seq`` (>= 1), in this file's chunk size."""
    return chunk_content(seq, CHUNK_ELEMENTS)


def create_array(mnt: Path, name: str = "arr", shape=(GRID * CHUNK, GRID * CHUNK)) -> None:
    """An unsharded raw uint32 array, created through the mount (zarrfs stores it sharded)."""
    zarr.create_array(str(mnt / name), shape=shape, chunks=(CHUNK, CHUNK), dtype="<u4",
                      compressors=None, fill_value=0)


def mount_with_new_array(mount, store: Path, flush_after: str):
    """A mount (``--shards SHARDS``) of a new empty ``store``, with the array created through it."""
    store.mkdir()
    mnt = mount(store, "--shards", str(SHARDS), "--flush-after", flush_after)
    create_array(mnt.path)
    return mnt


def chunk_region(i: int, j: int) -> tuple[slice, slice]:
    return slice(i * CHUNK, (i + 1) * CHUNK), slice(j * CHUNK, (j + 1) * CHUNK)


# -- reading the backing store -------------------------------------------------------


def shard_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file() and not p.name.startswith(TEMPORARY_PREFIX)) \
        if (array_dir / "c").exists() else []


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"{TEMPORARY_PREFIX}*"))


def check_shard_complete(path: Path, chunks_per_shard: int, chunk_nbytes: int | None = CHUNK_NBYTES) -> int:
    """A shard file is complete and holds chunks; returns how many."""
    present = check_shard_index(path, chunks_per_shard, chunk_nbytes)
    assert present, f"{path}: a shard file without chunks"
    return present


def check_store_complete(array_dir: Path, chunks_per_shard: int = SHARDS * SHARDS) -> np.ndarray:
    for shard in shard_files(array_dir):
        check_shard_complete(shard, chunks_per_shard)
    return read_backing(array_dir)


# -- daemons ---------------------------------------------------------------------------


def run_zarrfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ZARRFS, *args], capture_output=True, text=True, timeout=timeout)


def kill_daemon(mnt: Path, pid: int) -> None:
    """kill -9 the daemon, then clean the dead FUSE mount it leaves."""
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), timeout=10), f"daemon {pid} survived SIGKILL"
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert wait_until(lambda: not is_mounted(mnt), timeout=10)


def start_foreground(store: Path, mnt: Path, log: Path, *options: str) -> subprocess.Popen:
    with open(log, "ab") as stderr:
        proc = subprocess.Popen([*ZARRFS, "mount", "-f", str(store), str(mnt), *options],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    mounted = wait_until(lambda: (is_mounted(mnt) and (mnt / ".zarrfs" / "status").exists()) or proc.poll() is not None,
                         timeout=20)
    assert mounted and proc.poll() is None, f"foreground daemon did not mount:\n{log.read_text()}"
    return proc


@pytest.fixture
def foreground(tmp_path):
    """``foreground(store, *options) -> (proc, mnt, log)``: a -f daemon, always stopped at teardown."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(store: Path, *options: str):
        mnt = tmp_path / f"fg{len(started)}"
        mnt.mkdir()
        log = tmp_path / f"fg{len(started)}.log"
        proc = start_foreground(store, mnt, log, *options)
        started.append((proc, mnt))
        return proc, mnt, log

    yield start
    for proc, mnt in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        force_unmount(mnt)


# -- the writer process of the kill -9 test --------------------------------------------

WRITER = r'''
import os, random, sys
import numpy as np

CHUNK, GRID = {CHUNK}, {GRID}
N = CHUNK * CHUNK

def content(seq):
    values = (np.arange(N, dtype=np.uint64) * 2654435761 + seq * 40503) % 2**32
    values[0] = seq
    return values.astype("<u4").tobytes()

array, journal_path, first_seq, writer, writers, seed = sys.argv[1:7]
seq, writer, writers = int(first_seq), int(writer), int(writers)
rng = random.Random(int(seed))
journal = os.open(journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

def note(kind, key, seq, sync):
    os.write(journal, f"{{kind}} {{key}} {{seq}}\n".encode())
    if sync:
        os.fsync(journal)

mine = [(i, j) for i in range(GRID) for j in range(GRID) if (i * GRID + j) % writers == writer]
for i in range(GRID):
    os.makedirs(os.path.join(array, "c", str(i)), exist_ok=True)
note("R", "-", 0, True)  # ready: the writes begin
while True:
    i, j = rng.choice(mine)
    key = f"c/{{i}}/{{j}}"
    path = os.path.join(array, "c", str(i), str(j))
    data = content(seq)
    durable = rng.random() < 0.8
    exists = os.path.exists(path)
    if exists and rng.random() < 0.05:
        # a deletion (seq 0 in the journal: absent)
        note("S", key, 0, False)
        os.unlink(path)
        if durable:
            directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(directory)
            os.close(directory)
            note("D", key, 0, True)
        continue
    note("S", key, seq, False)
    if exists and rng.random() < 0.4:
        # a plain overwrite in place: one write() of the whole chunk (same size)
        fd = os.open(path, os.O_WRONLY)
        assert os.pwrite(fd, data, 0) == len(data)
        if durable:
            os.fsync(fd)
        os.close(fd)
    else:
        # a temporary file beside the key, renamed onto it; then fsync the directory
        temporary = os.path.join(array, "c", str(i), f".{{j}}.{{seq}}.partial")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        assert os.write(fd, data) == len(data)
        if durable:
            os.fsync(fd)
        os.close(fd)
        os.rename(temporary, path)
        if durable:
            directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(directory)
            os.close(directory)
    if durable:
        note("D", key, seq, True)
    seq += 1
'''


def parse_journal(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [(kind, key, int(seq) or None) for kind, key, seq in  # seq 0: a deletion
            (line.split() for line in path.read_text().splitlines() if line.count(" ") == 2)]


def acceptable_values(journal: list[tuple[str, str, int]], before: dict) -> dict[str, set]:
    """Per chunk key, the sequence numbers the backing store may hold after a crash.

    The last write whose fsync returned, or any write started after it (it may have
    been flushed with another chunk of its shard); with no fsync'd write this round,
    what the store held before the round or any write started in it.
    """
    allowed: dict[str, set] = {}
    for kind, key, seq in journal:
        if kind == "S":
            allowed.setdefault(key, {before.get(key)}).add(seq)
        elif kind == "D":
            allowed[key] = {seq}
    return allowed


def test_kill_9_during_heavy_writes_loses_nothing_fsynced(tmp_path, mount):
    seed = int(os.environ.get("ZARRFS_CRASH_SEED") or random.randrange(2**31))
    print(f"ZARRFS_CRASH_SEED={seed}")  # shown on failure: rerun with it to replay the kill times
    rng = random.Random(seed)
    rounds = 8
    writers = 2
    store = tmp_path / "store"
    store.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(CHUNK=CHUNK, GRID=GRID))
    array = store / "arr"
    state: dict[str, int | None] = {}  # chunk key -> seq in the backing store after the last round
    fsynced_total = 0
    temporaries_seen = 0
    next_seq = 1
    options = ("--shards", str(SHARDS), "--flush-after", "0.3")

    mnt = mount(store, *options)
    create_array(mnt.path)
    for round_number in range(rounds):
        # 1. heavy writes, then kill -9 at a random moment
        journals = [tmp_path / f"journal-{round_number}-{w}" for w in range(writers)]
        procs = []
        try:
            for w in range(writers):
                with open(tmp_path / f"writer-{round_number}-{w}.stderr", "wb") as stderr:
                    procs.append(subprocess.Popen(
                        [sys.executable, str(script), str(mnt.path / "arr"), str(journals[w]),
                         str(next_seq + w * 1_000_000), str(w), str(writers), str(rng.randrange(2**32))],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr))
            assert wait_until(lambda: all(parse_journal(j) for j in journals) or
                              any(p.poll() is not None for p in procs), timeout=30)
            delay = rng.uniform(0.05, 1.0)
            time.sleep(delay)
            crashed = [p.returncode for p in procs if p.poll() is not None]
            assert not crashed, "a writer failed while the daemon was alive:\n" + "\n".join(
                (tmp_path / f"writer-{round_number}-{w}.stderr").read_text() for w in range(writers))
            pid = mnt.status()["pid"]
            kill_daemon(mnt.path, pid)
        finally:
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            force_unmount(mnt.path)
        next_seq += 3_000_000

        # 2. the backing store: every shard complete, every fsync'd chunk there
        data = check_store_complete(array)
        entries = [e for j in journals for e in parse_journal(j)]
        fsynced = [e for e in entries if e[0] == "D"]
        assert fsynced, f"round {round_number}: no fsync returned within {delay:.2f} s"
        fsynced_total += len(fsynced)
        allowed = acceptable_values(entries, state)
        for i in range(GRID):
            for j in range(GRID):
                key = f"c/{i}/{j}"
                found = seq_of(data[chunk_region(i, j)])
                if key in allowed:
                    assert found in allowed[key], (
                        f"round {round_number} (killed after {delay:.2f} s): {key} holds seq {found}, "
                        f"expected one of {sorted(allowed[key], key=str)}")
                else:
                    assert found == state.get(key), f"{key} changed without being written"
                state[key] = found

        # 3. leftovers of the crash, plus one planted like a crash would leave it
        left = temporaries(store)
        temporaries_seen += len(left)
        planted = array / "c" / "0" / temporary_name("0", pid)
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(b"half a shard")
        planted_root = store / temporary_name("zarr.json", pid)  # of the daemon just killed
        planted_root.write_bytes(b"{")

        # 4. remount: temporaries are never shown, and soon gone from the backing store
        mnt = mount(store, *options)
        listed = {name for _, dirs, files in os.walk(mnt.path) for name in dirs + files}
        assert not [n for n in listed if n.startswith(TEMPORARY_PREFIX)], listed
        assert not (mnt.path / "arr" / "c" / "0" / planted.name).exists()
        assert wait_until(lambda: not temporaries(store), timeout=5), temporaries(store)
        # hidden for sure, not just removed before we looked: one that exists while we list
        planted.write_bytes(b"half a shard")
        listed = {name for _, dirs, files in os.walk(mnt.path) for name in dirs + files}
        assert not [n for n in listed if n.startswith(TEMPORARY_PREFIX)], listed
        # (the store's c/0 holds the shards of shard row 0; the view's c/0 is chunk row 0,
        # shown only if a chunk of that row was stored: an early kill may have stored none)
        shown = mnt.path / "arr" / "c" / "0"
        assert not shown.exists() or planted.name not in os.listdir(shown)
        assert not (shown / planted.name).exists()
        planted.unlink()
        # what the store holds is what the new mount shows
        through_mount = zarr.open_array(str(mnt.path / "arr"), mode="r")[...]
        assert np.array_equal(through_mount, data)

    mnt.unmount()
    assert not temporaries(store)
    assert fsynced_total > rounds  # the test did exercise fsync'd writes
    print(f"{rounds} kills, {fsynced_total} fsync'd writes checked, {temporaries_seen} crash temporaries cleaned")


# -- a failed flush keeps the data and retries -----------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KiB tmpfs, unmounted at teardown."""
    where = tmp_path / "tiny"
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield where
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Use up every free byte of the filesystem of ``directory``."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\xff" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


def read_ignoring_close(path: Path) -> bytes:
    """The bytes of ``path``, read with read(2); an error of close(2) is not the reader's business here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def full_disk_mount(tiny_tmpfs, mount):
    """``full_disk_mount(flush_after) -> (store, mnt, chunk, filler)``: a mount of a store on the tiny
    tmpfs, its array created, then every free byte used up by ``filler``: flushes fail with ENOSPC.
    ``chunk`` (c/1/2) is not written yet.

    At teardown the filler goes first, so that ``mount`` then undoes the mount (its exit flush
    with room again), before ``tiny_tmpfs`` goes: fixtures are torn down in reverse order.
    """
    def make(flush_after: str):
        store = tiny_tmpfs / "store"
        mnt = mount_with_new_array(mount, store, flush_after)
        (mnt.path / "arr" / "c" / "1").mkdir(parents=True)
        return store, mnt, mnt.path / "arr" / "c" / "1" / "2", fill(tiny_tmpfs)

    yield make
    (tiny_tmpfs / "filler").unlink(missing_ok=True)


def test_failed_flush_keeps_the_data_reports_and_retries(full_disk_mount):
    store, mnt, chunk, filler = full_disk_mount("1")
    data = content(4242).tobytes()

    fd = os.open(chunk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert os.write(fd, data) == len(data)
    with pytest.raises(OSError) as failed:
        os.fsync(fd)
    assert failed.value.errno in (errno.ENOSPC, errno.EIO), failed.value
    with pytest.raises(OSError) as closing:
        os.close(fd)  # close reports it too (SPEC §6)
    assert closing.value.errno in (errno.ENOSPC, errno.EIO), closing.value

    # kept: readable through the mount, reported in the status and the log
    assert read_ignoring_close(chunk) == data
    status = mnt.status()
    assert status["flushes_failed"] > 0, status
    assert status["last_error"], status
    assert status["dirty_shards"] == 1 and status["dirty_bytes"] >= len(data), status
    assert "failed" in mnt.log_text()
    assert not (store / "arr" / "c" / "0" / "0").exists()
    assert not temporaries(store), "a failed repack left its temporary file"

    # still full: a second fsync fails again and still loses nothing
    fd = os.open(chunk, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.fsync(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert read_ignoring_close(chunk) == data

    # room again: the background retry packs it (no fsync needed)
    filler.unlink()
    assert wait_until(lambda: mnt.status()["dirty_shards"] == 0, timeout=30), mnt.status()
    assert mnt.status()["flushes_done"] > 0
    shard = store / "arr" / "c" / "0" / "0"
    assert shard.exists()
    check_shard_complete(shard, SHARDS * SHARDS)
    backing = read_backing(store / "arr")
    assert np.array_equal(backing[chunk_region(1, 2)].ravel(), content(4242))
    assert chunk.read_bytes() == data
    # and fsync now succeeds
    fd = os.open(chunk, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    mnt.unmount()
    assert not temporaries(store)


def test_failed_flush_does_not_fail_readers(full_disk_mount):
    _, mnt, chunk, filler = full_disk_mount("600")
    data = content(4243).tobytes()
    fd = os.open(chunk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    with pytest.raises(OSError):
        os.fsync(fd)
    with pytest.raises(OSError):
        os.close(fd)
    assert mnt.status()["flushes_failed"] > 0
    # a reader: open read-only, read, close -- none of it should fail
    assert chunk.read_bytes() == data
    through_mount = zarr.open_array(str(mnt.path / "arr"), mode="r")[chunk_region(1, 2)]
    assert np.array_equal(through_mount.ravel(), content(4243))
    filler.unlink()


# -- pending writes reach the store: SIGTERM, umount, --flush-after ---------------------


def write_some_chunks(mnt: Path, coords, seq0: int = 100) -> dict:
    written = {}
    for n, (i, j) in enumerate(coords):
        (mnt / "arr" / "c" / str(i)).mkdir(parents=True, exist_ok=True)
        write_file(mnt / "arr" / "c" / str(i) / str(j), content(seq0 + n).tobytes(), fsync=False)
        written[(i, j)] = seq0 + n
    return written


def check_written(array_dir: Path, written: dict) -> None:
    for shard in shard_files(array_dir):
        check_shard_complete(shard, SHARDS * SHARDS)
    data = read_backing(array_dir)
    for i in range(GRID):
        for j in range(GRID):
            assert seq_of(data[chunk_region(i, j)]) == written.get((i, j)), (i, j)


SOME_CHUNKS = [(0, 0), (0, 1), (3, 3), (4, 0), (7, 9), (15, 15), (8, 4), (8, 5)]


def test_sigterm_flushes_everything(tmp_path, foreground):
    store = tmp_path / "store"
    store.mkdir()
    proc, mnt, log = foreground(store, "--shards", str(SHARDS), "--flush-after", "600")
    create_array(mnt)
    written = write_some_chunks(mnt, SOME_CHUNKS)
    # a file still being written (created, never closed or fsync'ed): SPEC §6 says only
    # content whose close or fsync returned reaches the store, so it must stay absent
    (mnt / "arr" / "c" / "2").mkdir(parents=True, exist_ok=True)
    held = os.open(mnt / "arr" / "c" / "2" / "14", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(held, content(999).tobytes())
    status = read_status(mnt)
    assert status["dirty_shards"] > 0 and status["dirty_bytes"] >= (len(written) + 1) * CHUNK_NBYTES, status
    assert not shard_files(store / "arr"), "written before SIGTERM despite --flush-after 600"

    try:
        proc.send_signal(signal.SIGTERM)  # while a handle is still open
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        try:
            os.close(held)
        except OSError:
            pass
    assert not is_mounted(mnt)
    assert "Traceback" not in log.read_text()
    check_written(store / "arr", written)
    assert not temporaries(store)


def test_umount_flushes_everything(tmp_path, mount):
    store = tmp_path / "store"
    mnt = mount_with_new_array(mount, store, "600")
    written = write_some_chunks(mnt.path, SOME_CHUNKS)
    # zarr-python 3 writes, too (temp file + rename), without any fsync
    z = zarr.open_array(str(mnt.path / "arr"), mode="r+")
    z[chunk_region(5, 6)] = content(777).reshape(CHUNK, CHUNK)
    written[(5, 6)] = 777
    assert mnt.status()["dirty_shards"] > 0
    assert not shard_files(store / "arr")
    pid = mnt.status()["pid"]

    mnt.unmount()  # returns once the daemon is gone
    assert not alive(pid)
    check_written(store / "arr", written)
    assert "Traceback" not in mnt.log_text()
    assert not temporaries(store)


def test_flush_after_writes_without_fsync(tmp_path, mount):
    store = tmp_path / "store"
    mnt = mount_with_new_array(mount, store, "0.5")
    (mnt.path / "arr" / "c" / "6").mkdir(parents=True)
    # closed, never fsync'd
    write_file(mnt.path / "arr" / "c" / "6" / "1", content(61).tobytes(), fsync=False)
    # still open, never closed or fsync'd: SPEC §6, a timed flush takes only settled content
    held = os.open(mnt.path / "arr" / "c" / "6" / "9", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(held, content(69).tobytes())
        started = time.monotonic()

        def packed(chunk: tuple[int, int], seq: int) -> bool:
            if not shard_files(store / "arr"):
                return False
            data = zarr.open_array(str(store / "arr"), mode="r")[...]  # polled while shards change
            return seq_of(data[chunk_region(*chunk)]) == seq

        assert wait_until(lambda: packed((6, 1), 61), timeout=5), (mnt.status(), mnt.log_text())
        took = time.monotonic() - started
        time.sleep(1.0)  # two more flush periods
        check_written(store / "arr", {(6, 1): 61})  # the open file is not in the store
        print(f"--flush-after 0.5: in the backing store after {took:.2f} s")
    finally:
        os.close(held)
    assert wait_until(lambda: packed((6, 9), 69), timeout=5), (mnt.status(), mnt.log_text())  # once closed
    assert wait_until(lambda: mnt.status()["dirty_shards"] == 0, timeout=5), mnt.status()
    check_written(store / "arr", {(6, 1): 61, (6, 9): 69})
    # a later change is packed again
    write_file(mnt.path / "arr" / "c" / "6" / "1", content(62).tobytes(), fsync=False)
    assert wait_until(lambda: seq_of(zarr.open_array(str(store / "arr"), mode="r")[chunk_region(6, 1)]) == 62,
                      timeout=5)
    assert wait_until(lambda: mnt.status()["dirty_shards"] == 0, timeout=5), mnt.status()
    check_written(store / "arr", {(6, 1): 62, (6, 9): 69})
