"""Concurrent writers (SPEC §5, §6) on real mounts: many processes, two daemons, --max-dirty.

Writers are real processes (zarr-python 3, or raw os.open/os.write/os.rename);
the result is always checked on the backing store with zarr-python 3 and
tensorstore, plus a byte-level check that every shard file is complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import is_mounted, wait_until
from zarrfs.fs.flusher import Flusher
from zarrfs.fs.tree import KeyDir, ViewTree
from zarrfs.fs.writes import Writer
from zarrfs.store.local import LocalStore
from helpers import TEMPORARY_PREFIX, check_shard_index, chunk_content, read_backing, seq_of, write_file

# -- contents and checks -----------------------------------------------------------------


def check_shards_complete(array_dir: Path, chunks_per_shard: int, chunk_nbytes: int) -> int:
    """No temporary file is left and every shard file is complete; returns the number of shards."""
    shards = [p for p in (array_dir / "c").rglob("*") if p.is_file()] if (array_dir / "c").exists() else []
    for path in shards:
        assert not path.name.startswith(TEMPORARY_PREFIX), f"{path}: a temporary file left behind"
        check_shard_index(path, chunks_per_shard, chunk_nbytes)
    return len(shards)


def check_values(data: np.ndarray, chunk: int, expected: dict[tuple[int, int], int | None], where: str) -> None:
    """Every chunk (i, j) of ``data`` holds ``chunk_content(expected[(i, j)])`` (absent when None or not listed)."""
    rows, cols = data.shape[0] // chunk, data.shape[1] // chunk
    wrong = {}
    for i in range(rows):
        for j in range(cols):
            found = seq_of(data[i * chunk:(i + 1) * chunk, j * chunk:(j + 1) * chunk])
            if found != expected.get((i, j)):
                wrong[(i, j)] = (found, expected.get((i, j)))
    assert not wrong, f"{where}: {len(wrong)} chunks wrong, (found, expected): {dict(list(wrong.items())[:10])}"


def run_processes(commands: list[list[str]], logs: list[Path], timeout: float = 120) -> None:
    """Run writer processes concurrently; each must exit 0."""
    procs = []
    try:
        for command, log in zip(commands, logs):
            with open(log, "wb") as stderr:
                procs.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=stderr))
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [(proc.args, log.read_text()) for proc, log in zip(procs, logs) if proc.returncode != 0]
    assert not failed, "writers failed:\n" + "\n".join(f"{args}:\n{text}" for args, text in failed)


# The writer process: writes its chunks of a raw uint32 array through a mount,
# pass after pass, with zarr-python 3 or with raw system calls.
WRITER = r'''
import os, random, sys
import numpy as np

array, how, chunk, grid, writer, writers, passes, fsync_every, seed, first_pass = sys.argv[1:11]
chunk, grid, writer, writers, passes = int(chunk), int(grid), int(writer), int(writers), int(passes)
first_pass = int(first_pass)
fsync_every = float(fsync_every)
rng = random.Random(int(seed))
N = chunk * chunk

def content(seq):
    values = (np.arange(N, dtype=np.uint64) * 2654435761 + seq * 40503) % 2**32
    values[0] = seq
    return values.astype("<u4")

def seq(p, i, j):
    return p * 1_000_000 + i * grid + j + 1

mine = [(i, j) for i in range(grid) for j in range(grid) if (i * grid + j) % writers == writer]
if how == "zarr":
    import zarr
    z = zarr.open_array(array, mode="r+")
for p in range(first_pass, first_pass + passes):
    order = list(mine)
    rng.shuffle(order)
    for i, j in order:
        data = content(seq(p, i, j))
        if how == "zarr":
            z[i * chunk:(i + 1) * chunk, j * chunk:(j + 1) * chunk] = data.reshape(chunk, chunk)
            continue
        directory = os.path.join(array, "c", str(i))
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, str(j))
        durable = rng.random() < fsync_every
        if rng.random() < 0.5:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            assert os.write(fd, data.tobytes()) == data.nbytes
            if durable:
                os.fsync(fd)
            os.close(fd)
        else:
            temporary = os.path.join(directory, f".{j}.{os.getpid()}.{p}.partial")  # unique: see below
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            assert os.write(fd, data.tobytes()) == data.nbytes
            if durable:
                os.fsync(fd)
            os.close(fd)
            os.rename(temporary, path)
            if durable:
                dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(dfd)
                os.close(dfd)
'''


def final_seq(passes: int, grid: int, i: int, j: int) -> int:
    """What chunk (i, j) holds after passes 0 .. passes-1."""
    return (passes - 1) * 1_000_000 + i * grid + j + 1


def writer_command(script: Path, array: Path, how: str, chunk: int, grid: int, writer: int, writers: int,
                   passes: int, fsync_every: float, seed: int, first_pass: int = 0) -> list[str]:
    return [sys.executable, str(script), str(array), how, str(chunk), str(grid), str(writer), str(writers),
            str(passes), str(fsync_every), str(seed), str(first_pass)]


@pytest.fixture
def writer_script(tmp_path) -> Path:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return script


# -- 8 writer processes on one mount ---------------------------------------------------


def test_eight_writer_processes_on_one_mount(tmp_path, mount, writer_script):
    chunk, grid, shards, passes, writers = 16, 16, 4, 3, 8
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--shards", str(shards), "--flush-after", "0.2")
    zarr.create_array(str(mnt.path / "arr"), shape=(chunk * grid,) * 2, chunks=(chunk, chunk), dtype="<u4",
                      compressors=None, fill_value=0)
    # writer w owns the chunks k = i*grid + j with k % 8 == w: every shard holds chunks of several writers;
    # writers 0-3 are zarr-python 3 (temp file + rename), 4-7 raw writes (some fsync'd, some renamed)
    commands = [writer_command(writer_script, mnt.path / "arr", "zarr" if w < 4 else "raw", chunk, grid, w,
                               writers, passes, 0.3, w) for w in range(writers)]
    run_processes(commands, [tmp_path / f"writer{w}.log" for w in range(writers)])

    expected = {(i, j): final_seq(passes, grid, i, j) for i in range(grid) for j in range(grid)}
    check_values(zarr.open_array(str(mnt.path / "arr"), mode="r")[...], chunk, expected, "through the mount")
    assert sorted(os.listdir(mnt.path / "arr" / "c" / "0")) == sorted(str(j) for j in range(grid))
    mnt.unmount()
    assert check_shards_complete(store / "arr", shards * shards, chunk * chunk * 4) == (grid // shards) ** 2
    check_values(read_backing(store / "arr"), chunk, expected, "backing store")
    assert "Traceback" not in mnt.log_text()


def test_reusing_a_temporary_name_for_renames_onto_a_chunk(tmp_path, mount):
    """The writer idiom ``write KEY.tmp; rename(KEY.tmp, KEY)``, repeated: KEY always reads back.

    (Regression: the inode of a renamed file was recomputed by hash + probe, so after the second
    rename with the same temporary name KEY gave ENOENT, or EPERM for open(O_TRUNC).)
    """
    chunk, grid = 16, 16
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--shards", "4", "--flush-after", "600")
    zarr.create_array(str(mnt.path / "arr"), shape=(chunk * grid,) * 2, chunks=(chunk, chunk), dtype="<u4",
                      compressors=None, fill_value=0)
    failures = []
    for i in range(grid):
        directory = mnt.path / "arr" / "c" / str(i)
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(3):
            data = chunk_content(100 * i + n + 1, chunk * chunk).tobytes()
            (directory / "5.tmp").write_bytes(data)
            os.rename(directory / "5.tmp", directory / "5")
            try:
                assert (directory / "5").read_bytes() == data
            except OSError as error:
                failures.append((f"c/{i}/5", n, error.strerror))
    assert not failures, f"{len(failures)} of {grid * 3} renames onto a chunk key unreadable: {failures[:5]}"


def test_a_shard_directory_being_written_is_no_key_directory_of_its_name(tmp_path, mount):
    """``c/1`` is chunk row 1 in the view and shard row 1 in the store (two chunks per shard).
    While the repacker writes the first shard of shard row 1, the store's ``c/1`` holds only that
    shard's temporary: chunk row 1 must not show as a directory meanwhile (it did, as one made
    in the store before the metadata came, and vanished once the shard was in: ``ls`` showed a
    ghost, a writer's mkdir met EEXIST). Planted here by hand; the row is then made as usual."""
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--shards", "2", "--flush-after", "600")
    zarr.create_array(str(mnt.path / "arr"), shape=(24, 8), chunks=(4, 4), dtype="<u2", compressors=None,
                      fill_value=0)  # 6 x 2 chunks: shard rows c/0 to c/2
    raw = np.full((4, 4), 7, dtype="<u2").tobytes()
    (mnt.path / "arr" / "c" / "0").mkdir(parents=True)
    (mnt.path / "arr" / "c" / "0" / "0").write_bytes(raw)
    (store / "arr" / "c" / "1").mkdir(parents=True)
    (store / "arr" / "c" / "1" / f"{TEMPORARY_PREFIX}000000000000-00000000-0").write_bytes(b"a shard being written")
    assert sorted(os.listdir(mnt.path / "arr" / "c")) == ["0"]
    row = mnt.path / "arr" / "c" / "1"
    assert not row.exists()
    row.mkdir()
    (row / "1").write_bytes(raw)
    assert (row / "1").read_bytes() == raw
    assert sorted(os.listdir(mnt.path / "arr" / "c")) == ["0", "1"]


def test_mkdir_of_a_key_directory_that_showed_since_the_kernel_looked_makes_it(tmp_path):
    """The kernel asks to make a name only after its own lookup said "absent". Should the store
    change in between (the repacker makes the shard directory ``c/2`` of shard row 2, which
    names chunk row 2 in the view, and writes its first shard there), MKDIR must still leave
    chunk row 2's directory made: refused with EEXIST, the kernel would keep "absent" cached and
    the writer's next open(c/2) fail with ENOENT once the shard is in (tensorstore: "Failed to
    open directory"). The kernel cannot be stopped between the two requests, so the requests'
    own code is driven here, on a real store.
    """
    store_dir = tmp_path / "store"
    zarr.create_array(str(store_dir / "arr"), shape=(24, 8), chunks=(4, 4), shards=(8, 8), dtype="<u2",
                      compressors=None, fill_value=0)  # 6 x 2 chunks: shard rows c/0 to c/2
    tree = ViewTree(LocalStore(str(store_dir)))
    writer = Writer(tree, Flusher(tree), chunks_per_shard=2)
    c = tree.resolve("arr/c") or writer.mkdir(tree.resolve("arr"), "c", 0o755)
    assert tree.lookup(c, "2") is None  # what the kernel's lookup was told
    (store_dir / "arr" / "c" / "2").mkdir(parents=True)  # meanwhile, the repacker's first step
    assert isinstance(writer.mkdir(c, "2", 0o755), KeyDir)  # was EEXIST
    (store_dir / "arr" / "c" / "2" / "0").write_bytes(b"")  # its shard is in: the store's c/2 is no key directory
    assert isinstance(tree.lookup(c, "2"), KeyDir)


# -- two daemons on one backing store --------------------------------------------------


def make_sharded_array(array_dir: Path, chunk: int, grid: int, shards: int) -> None:
    """A sharded raw uint32 array made directly in the backing store by zarr-python 3."""
    zarr.create_array(str(array_dir), shape=(chunk * grid,) * 2, chunks=(chunk, chunk),
                      shards=(chunk * shards,) * 2, dtype="<u4", compressors=None, fill_value=0)


def test_two_mounts_of_one_store_take_turns_in_one_shard(tmp_path, mount):
    """Two daemons, one shard, fsync'd writes one after the other: each repack merges the other's chunks."""
    chunk, grid, shards = 16, 8, 4
    n = chunk * chunk
    store = tmp_path / "store"
    store.mkdir()
    make_sharded_array(store / "arr", chunk, grid, shards)
    mount_a = mount(store, "--flush-after", "600")
    mount_b = mount(store, "--flush-after", "600", "--attr-timeout", "0.5")
    expected = {}
    for step, (i, j) in enumerate([(i, j) for i in range(shards) for j in range(shards)] * 2):
        through = mount_a if step % 2 == 0 else mount_b
        (through.path / "arr" / "c" / str(i)).mkdir(parents=True, exist_ok=True)
        write_file(through.path / "arr" / "c" / str(i) / str(j), chunk_content(step + 1, n).tobytes())
        expected[(i, j)] = step + 1
        if step % 5 == 4:
            check_values(read_backing(store / "arr"), chunk, expected, f"backing store after step {step}")
    mount_a.unmount()
    mount_b.unmount()
    assert check_shards_complete(store / "arr", shards * shards, n * 4) == 1
    check_values(read_backing(store / "arr"), chunk, expected, "backing store after both unmounted")


def test_two_mounts_of_one_store_write_the_same_shards_at_once(tmp_path, mount, writer_script):
    """Different chunks of the same shards, through two daemons at once, each fsync'd: nothing lost.

    (Regression: with process-owned POSIX record locks, closing one repack thread's descriptor of
    zarr.json dropped the other thread's lock: fsync'd chunks were lost, and fsync failed with EDEADLK.)
    """
    chunk, grid, shards, passes, rounds = 16, 16, 8, 3, 3  # 4 shards of 64 chunks: much contention
    store = tmp_path / "store"
    store.mkdir()
    make_sharded_array(store / "arr", chunk, grid, shards)
    mount_a = mount(store, "--flush-after", "600")
    mount_b = mount(store, "--flush-after", "600", "--attr-timeout", "0.5")
    # chunk k = i*grid + j goes to writer k % 8: even writers write through A, odd ones through B,
    # so each shard is written by both daemons, and each daemon repacks two shards at a time
    writers = 8
    for round_number in range(rounds):  # a race: several rounds, each checked
        commands, logs = [], []
        for w in range(writers):
            through = mount_a if w % 2 == 0 else mount_b
            commands.append(writer_command(writer_script, through.path / "arr", "raw", chunk, grid, w, writers,
                                           passes, 1.0, 100 * round_number + w, first_pass=passes * round_number))
            logs.append(tmp_path / f"writer{round_number}-{w}.log")
        run_processes(commands, logs)
        expected = {(i, j): final_seq(passes * (round_number + 1), grid, i, j)
                    for i in range(grid) for j in range(grid)}
        # every write was fsync'd: the backing store holds everything already
        check_shards_complete(store / "arr", shards * shards, chunk * chunk * 4)
        check_values(read_backing(store / "arr"), chunk, expected, f"backing store after round {round_number}")
    status_a, status_b = mount_a.status(), mount_b.status()
    assert status_a["dirty_shards"] == 0 and status_b["dirty_shards"] == 0, (status_a, status_b)
    mount_a.unmount()
    mount_b.unmount()
    check_shards_complete(store / "arr", shards * shards, chunk * chunk * 4)
    check_values(read_backing(store / "arr"), chunk, expected, "backing store after both unmounted")


def test_mounting_a_second_daemon_does_not_disturb_the_first_ones_repacks(tmp_path, mount, writer_script):
    chunk, grid, shards = 32, 16, 4
    store = tmp_path / "store"
    store.mkdir()
    make_sharded_array(store / "arr", chunk, grid, shards)
    mount_a = mount(store, "--flush-after", "600")
    writers = 2
    logs = [tmp_path / f"writer{w}.log" for w in range(writers)]
    procs = []
    try:
        for w in range(writers):  # fsync every write, pass after pass, until stopped
            with open(logs[w], "wb") as stderr:
                procs.append(subprocess.Popen(
                    writer_command(writer_script, mount_a.path / "arr", "raw", chunk, grid, w, writers, 10_000,
                                   1.0, w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr))
        assert wait_until(lambda: mount_a.status()["flushes_done"] > 20, timeout=30)
        for _ in range(20):  # another node mounts the store (and unmounts it) while A keeps repacking
            if any(p.poll() is not None for p in procs):
                break
            mount_b = mount(store, "--flush-after", "600")
            time.sleep(0.1)
            mount_b.unmount()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.wait(timeout=30)
    errors = [logs[w].read_text() for w, p in enumerate(procs) if p.returncode > 0]
    assert not errors, "a writer of mount A failed:\n" + "\n".join(errors)
    assert "failed" not in mount_a.log_text(), mount_a.log_text()
    assert mount_a.status()["flushes_failed"] == 0, mount_a.status()


def read_when(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def test_a_mount_sees_the_other_mounts_flushed_chunks_after_its_attribute_timeout(tmp_path, mount):
    chunk, grid, shards = 16, 8, 4
    store = tmp_path / "store"
    store.mkdir()
    make_sharded_array(store / "arr", chunk, grid, shards)
    n = chunk * chunk
    # one chunk exists already, so both mounts have the shard (and its index) cached
    zarr.open_array(str(store / "arr"), mode="r+")[0:chunk, 0:chunk] = chunk_content(1, n).reshape(chunk, chunk)
    mount_a = mount(store, "--flush-after", "600")
    mount_b = mount(store, "--flush-after", "600", "--attr-timeout", "0.5")
    new_in_a, new_in_b = mount_a.path / "arr" / "c" / "0" / "1", mount_b.path / "arr" / "c" / "0" / "1"
    old_in_a, old_in_b = mount_a.path / "arr" / "c" / "0" / "0", mount_b.path / "arr" / "c" / "0" / "0"
    assert old_in_b.read_bytes() == chunk_content(1, n).tobytes()
    assert not new_in_b.exists()  # B caches this "no such file" for its attribute timeout

    # a new chunk in the same shard
    write_file(new_in_a, chunk_content(2, n).tobytes())  # A: fsync returned
    started = time.monotonic()
    assert wait_until(lambda: read_when(new_in_b) == chunk_content(2, n).tobytes(), timeout=5), read_when(new_in_b)
    seen_after = time.monotonic() - started
    # an overwrite of a chunk B has just read (its attributes fresh, its pages cached)
    assert old_in_b.read_bytes() == chunk_content(1, n).tobytes()
    write_file(old_in_a, chunk_content(3, n).tobytes())
    started = time.monotonic()
    assert wait_until(lambda: read_when(old_in_b) == chunk_content(3, n).tobytes(), timeout=5), read_when(old_in_b)
    overwrite_seen_after = time.monotonic() - started
    # and the other way round
    (mount_b.path / "arr" / "c" / "1").mkdir(exist_ok=True)
    write_file(mount_b.path / "arr" / "c" / "1" / "1", chunk_content(4, n).tobytes())
    # (A never looked this name up, so it has nothing cached: the default 10 s timeout does not matter)
    assert wait_until(lambda: read_when(mount_a.path / "arr" / "c" / "1" / "1") is not None, timeout=5)
    assert (mount_a.path / "arr" / "c" / "1" / "1").read_bytes() == chunk_content(4, n).tobytes()

    zarr_b = zarr.open_array(str(mount_b.path / "arr"), mode="r")
    assert np.array_equal(zarr_b[0:chunk, 0:chunk].ravel(), chunk_content(3, n))
    assert np.array_equal(zarr_b[0:chunk, chunk:2 * chunk].ravel(), chunk_content(2, n))

    # a chunk A deletes (made durable by fsync of its directory) disappears from B
    assert new_in_b.exists()
    os.unlink(new_in_a)
    directory = os.open(new_in_a.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    started = time.monotonic()
    assert wait_until(lambda: not new_in_b.exists(), timeout=5), read_when(new_in_b)
    deletion_seen_after = time.monotonic() - started
    assert not np.any(zarr_b[0:chunk, chunk:2 * chunk])
    print(f"B saw A's new chunk after {seen_after:.2f} s, its overwrite after {overwrite_seen_after:.2f} s, "
          f"its deletion after {deletion_seen_after:.2f} s")


# -- --max-dirty -----------------------------------------------------------------------


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_past_half_of_max_dirty_the_oldest_shards_are_repacked_without_waiting(tmp_path, mount):
    """A large write goes on while its earlier shards are written: past half of --max-dirty
    the background repacks the oldest shards, long before --flush-after and with no writer
    over the limit (as the kernel's dirty_background_ratio does before dirty_ratio)."""
    chunk, shards = 64, 4  # 16 KiB chunks, shards of 16 chunks (256 KiB)
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--shards", str(shards), "--flush-after", "600", "--max-dirty", "4")
    zarr.create_array(str(mnt.path / "arr"), shape=(16 * chunk, 16 * chunk), chunks=(chunk, chunk),
                      dtype="<u4", compressors=None, fill_value=0)
    for i in range(12):  # 192 chunks: 3 MiB, past 2 MiB (half of --max-dirty), under 4 MiB
        os.makedirs(mnt.path / "arr" / "c" / str(i), exist_ok=True)
        for j in range(16):
            (mnt.path / "arr" / "c" / str(i) / str(j)).write_bytes(bytes([i, j]) * (chunk * chunk * 2))
    deadline = time.monotonic() + 30
    while mnt.status()["dirty_bytes"] > 2 << 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    status = mnt.status()
    assert status["dirty_bytes"] <= 2 << 20, status
    assert status["flushes_done"] >= 1 and status["flushes_failed"] == 0, status
    stored = sorted(p.relative_to(store / "arr").as_posix() for p in (store / "arr" / "c").rglob("*") if p.is_file())
    assert stored and stored[0] == "c/0/0", stored  # the oldest shards went first
    mnt.unmount()
    check_shards_complete(store / "arr", shards * shards, chunk * chunk * 4)


def test_max_dirty_makes_writers_wait_and_bounds_memory(tmp_path, mount, writer_script):
    chunk, shards = 64, 4  # 16 KiB chunks
    rows, cols = 40, 32  # 1280 chunks = 20 MiB
    store = tmp_path / "store"
    store.mkdir()
    mnt = mount(store, "--shards", str(shards), "--flush-after", "600", "--max-dirty", "1")
    zarr.create_array(str(mnt.path / "arr"), shape=(rows * chunk, cols * chunk), chunks=(chunk, chunk),
                      dtype="<u4", compressors=None, fill_value=0)
    pid = mnt.status()["pid"]
    samples: list[tuple[int, int, int]] = []  # (dirty_bytes, dirty_shards, VmRSS KiB)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                status = mnt.status()
                samples.append((status["dirty_bytes"], status["dirty_shards"], vm_rss_kib(pid)))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    writer = r'''
import os, sys
import numpy as np
array, chunk, rows, cols, first, step = sys.argv[1], *map(int, sys.argv[2:7])
N = chunk * chunk
for i in range(first, rows, step):
    os.makedirs(os.path.join(array, "c", str(i)), exist_ok=True)
    for j in range(cols):
        values = (np.arange(N, dtype=np.uint64) * 2654435761 + (i * cols + j + 1) * 40503) % 2**32
        values[0] = i * cols + j + 1
        fd = os.open(os.path.join(array, "c", str(i), str(j)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        assert os.write(fd, values.astype("<u4").tobytes()) == N * 4
        os.close(fd)
'''
    started = time.monotonic()
    try:
        run_processes(
            [[sys.executable, "-c", writer, str(mnt.path / "arr"), str(chunk), str(rows), str(cols), str(w), "2"]
             for w in range(2)],
            [tmp_path / f"writer{w}.log" for w in range(2)])
    finally:
        done.set()
        sampler.join(timeout=10)
    took = time.monotonic() - started
    status = mnt.status()

    assert len(samples) > 10, samples
    max_dirty = max(s[0] for s in samples)
    max_rss_mib = max(s[2] for s in samples) / 1024
    print(f"20 MiB in {took:.1f} s; {len(samples)} samples; max dirty {max_dirty / 2**20:.2f} MiB; "
          f"max RSS {max_rss_mib:.0f} MiB; {status['flushes_done']} repacks")
    assert max_dirty <= 2 * 2**20, f"dirty_bytes reached {max_dirty} with --max-dirty 1"
    assert status["dirty_bytes"] <= 2 * 2**20, status
    assert status["flushes_done"] >= 10, status  # repacks happened with no fsync and --flush-after 600
    assert max_rss_mib < 300, f"daemon RSS reached {max_rss_mib:.0f} MiB"
    assert status["flushes_failed"] == 0, status

    mnt.unmount()
    check_shards_complete(store / "arr", shards * shards, chunk * chunk * 4)
    expected = {(i, j): i * cols + j + 1 for i in range(rows) for j in range(cols)}
    check_values(read_backing(store / "arr"), chunk, expected, "backing store")
    assert not is_mounted(mnt.path)
