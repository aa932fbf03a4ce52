"""zarrfs on a bucket (SPEC §11), through real mounts on the test SeaweedFS.

What only an object store can get wrong: two daemons writing the same shards, a daemon
killed during writes, a shard replaced by another client while a reader streams it, a
missing bucket, and secrets. The suites that hold for every backend (reads, v2 view, bad
input, writes) run on the bucket too, through the ``backend`` fixture (conftest.py).

Oracles are independent of zarrfs: obstore and zarr-python 3 on a download of the prefix,
shard indexes checked byte by byte (helpers.check_shard_index), and chunk contents that
name the write they came from (helpers.chunk_content / seq_of).
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import obstore
import pytest
import zarr

from backends import Backend, ObjectStore, client
from conftest import ZARRFS, is_mounted, wait_until
from helpers import alive, check_shard_index, chunk_content, processes_naming, read_backing, seq_of
from s3server import SECRET_KEY

# One array: 8 x 8 chunks of 64 x 64 uint32 (16 KiB, raw) in 2 x 2 shards of 4 x 4 chunks.
CHUNK = (64, 64)
PER_SHARD = (4, 4)
GRID = (8, 8)
ELEMENTS = CHUNK[0] * CHUNK[1]


@pytest.fixture
def bucket(seaweedfs, s3_credentials, tmp_path) -> Backend:
    """The S3 backend on the session's SeaweedFS, the test identity in this process's environment."""
    return Backend("s3", tmp_path, seaweedfs)


def empty_array(tmp_path: Path, name: str = "a", chunk=CHUNK, per_shard=PER_SHARD, grid=GRID) -> Path:
    """A local store with one empty sharded uint32 array (raw chunks, index [bytes, crc32c] at the end)."""
    store = tmp_path / "source.zarr"
    shape = tuple(c * g for c, g in zip(chunk, grid))
    zarr.create_array(store / name, shape=shape, chunks=chunk, shards=tuple(c * s for c, s in zip(chunk, per_shard)),
                      dtype="<u4", compressors=None, fill_value=0)
    return store


def chunk_seq(i: int, j: int, base: int = 1) -> int:
    return base + i * GRID[1] + j


# A writer process: writes raw chunks through the mount (open O_TRUNC, write, fsync, close)
# and prints "i j seq" once each fsync has returned.
WRITER = r"""
import os, sys
import numpy as np
array, jobs = sys.argv[1], sys.argv[2:]
def content(seq, n):
    values = (np.arange(n, dtype=np.uint64) * 2654435761 + seq * 40503) % 2**32
    values[0] = seq
    return values.astype("<u4").tobytes()
for job in jobs:
    i, j, seq, n = map(int, job.split(":"))
    os.makedirs(os.path.join(array, "c", str(i)), exist_ok=True)
    fd = os.open(os.path.join(array, "c", str(i), str(j)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, content(seq, n))
    os.fsync(fd)
    os.close(fd)
    print(i, j, seq, flush=True)
"""


def start_writer(cleanup, array: Path, jobs: list[tuple[int, int, int]]) -> subprocess.Popen:
    args = [f"{i}:{j}:{seq}:{ELEMENTS}" for i, j, seq in jobs]
    return cleanup.process(subprocess.Popen([sys.executable, "-c", WRITER, str(array), *args],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


def read_chunk(path: Path) -> int | None:
    return seq_of(np.frombuffer(path.read_bytes(), dtype="<u4"))


def zarrfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ZARRFS, *args], capture_output=True, text=True, timeout=timeout)


def shards_decode(store: ObjectStore, array: str = "a") -> dict[str, int]:
    """Every shard object of ``array`` is whole (index checksum, entries inside the data):
    key -> chunks it holds. Read with obstore, not zarrfs."""
    snapshot = store.snapshot()
    found = {}
    for path in sorted((snapshot / array / "c").rglob("*")):
        if path.is_file():
            found[str(path.relative_to(snapshot))] = check_shard_index(path, PER_SHARD[0] * PER_SHARD[1], ELEMENTS * 4)
    return found


# -- two daemons on one prefix -------------------------------------------------------------


def test_two_daemons_writing_even_and_odd_chunks_of_the_same_shards_lose_nothing(bucket, mount, cleanup, tmp_path):
    store = bucket.store(empty_array(tmp_path))
    first = bucket.mount(mount, store, "--flush-after", "0.2")
    second = bucket.mount(mount, store, "--flush-after", "0.2")
    cells = list(itertools.product(range(GRID[0]), range(GRID[1])))
    jobs = {parity: [(i, j, chunk_seq(i, j)) for i, j in cells if (i * GRID[1] + j) % 2 == parity] for parity in (0, 1)}
    writers = [start_writer(cleanup, first / "a", jobs[0]), start_writer(cleanup, second / "a", jobs[1])]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, f"writer failed: {err[-2000:]}"
    first.unmount()
    second.unmount()

    again = bucket.mount(mount, store)
    lost = {(i, j) for i, j in cells if not (again / "a" / "c" / str(i) / str(j)).exists()}
    wrong = {(i, j): read_chunk(again / "a" / "c" / str(i) / str(j)) for i, j in cells if (i, j) not in lost}
    wrong = {cell: seq for cell, seq in wrong.items() if seq != chunk_seq(*cell)}
    logs = "\n".join(line for m in (first, second) for line in m.log_text().splitlines()
                     if "WARN" in line or "ERROR" in line)[-3000:]
    assert not lost and not wrong, (
        f"two daemons on one prefix lost {len(lost)} of {len(cells)} fsync'ed chunks "
        f"(conflicting shard PUTs must re-read, re-merge and retry): lost {sorted(lost)}, wrong {wrong}\n{logs}")
    values = read_backing(store.snapshot() / "a")
    for i, j in cells:
        block = values[i * CHUNK[0]:(i + 1) * CHUNK[0], j * CHUNK[1]:(j + 1) * CHUNK[1]]
        assert seq_of(block) == chunk_seq(i, j)
    assert sum(shards_decode(store).values()) == len(cells)


# -- kill -9 during writes -------------------------------------------------------------------


def test_kill_9_during_writes_leaves_whole_shards_and_every_fsynced_chunk(bucket, mount, cleanup, tmp_path):
    store = bucket.store(empty_array(tmp_path))
    mnt = bucket.mount(mount, store)
    pid = cleanup.daemon(mnt.status()["pid"])
    cells = list(itertools.product(range(GRID[0]), range(GRID[1])))
    # Each chunk is written twice (a new shard version each time), so that the kill lands
    # while shards that already exist are being replaced.
    jobs = [(i, j, chunk_seq(i, j, base)) for base in (1, 1001) for i, j in cells]
    writer = start_writer(cleanup, mnt / "a", jobs)
    fsynced: dict[tuple[int, int], int] = {}
    for count, line in enumerate(writer.stdout, 1):
        i, j, seq = map(int, line.split())
        fsynced[i, j] = seq
        if count == len(cells) + 20:  # the kill comes 20 chunks into the second pass
            break
    os.kill(pid, signal.SIGKILL)
    rest, _ = writer.communicate(timeout=60)
    for line in rest.splitlines():  # fsyncs that returned before the kill took effect
        i, j, seq = map(int, line.split())
        fsynced[i, j] = seq
    assert wait_until(lambda: not alive(pid), timeout=10)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt.path)], check=True, capture_output=True, timeout=30)
    assert not is_mounted(mnt.path)
    assert writer.returncode != 0, "the writer should have met the dead mount"

    checked = zarrfs("check", *bucket.zarrfs_args(store))
    assert checked.returncode == 0, f"zarrfs check after kill -9: {checked.stdout[-2000:]}{checked.stderr[-2000:]}"
    shards = shards_decode(store)
    assert shards, "nothing reached the bucket before the kill"

    again = bucket.mount(mount, store)
    missing = {cell: seq for cell, seq in fsynced.items()
               if not (again / "a" / "c" / str(cell[0]) / str(cell[1])).exists()}
    assert not missing, f"fsync'ed chunks lost by kill -9: {missing}"
    for (i, j), seq in fsynced.items():
        got = read_chunk(again / "a" / "c" / str(i) / str(j))
        assert got in (seq, chunk_seq(i, j, 1001)), ((i, j), got, seq)  # that write or a later one, whole


# -- a shard replaced by another client while a reader streams it -----------------------------

BIG_CHUNK = (256, 1024)  # 1 MiB of uint32: several FUSE reads per chunk
STREAMED = {  # array -> (chunks per shard, grid of chunks): one shard fetched by ranges, one whole
    "ranged": ((3, 4), (3, 4)),  # 12 MiB, above the 8 MiB of whole fetches
    "whole": ((2, 2), (2, 2)),  # 4 MiB
}


def versioned_store(tmp_path: Path, base: int) -> Path:
    """Both arrays, every chunk holding ``chunk_content(base + k)``: the version is in every element."""
    store = tmp_path / f"v{base}.zarr"
    for name, (per_shard, grid) in STREAMED.items():
        shape = tuple(c * g for c, g in zip(BIG_CHUNK, grid))
        array = zarr.create_array(store / name, shape=shape, chunks=BIG_CHUNK,
                                  shards=tuple(c * s for c, s in zip(BIG_CHUNK, per_shard)), dtype="<u4",
                                  compressors=None, fill_value=0)
        values = np.zeros(shape, "<u4")
        for k, (i, j) in enumerate(itertools.product(*map(range, grid))):
            values[i * BIG_CHUNK[0]:(i + 1) * BIG_CHUNK[0], j * BIG_CHUNK[1]:(j + 1) * BIG_CHUNK[1]] = \
                chunk_content(base + k, BIG_CHUNK[0] * BIG_CHUNK[1]).reshape(BIG_CHUNK)
        array[...] = values
    return store


@pytest.mark.parametrize("options", [(), ("--read-only",)], ids=["writable", "read-only"])
def test_a_reader_never_gets_a_mix_of_two_versions_of_a_shard_replaced_under_it(bucket, mount, tmp_path, options):
    old, new = versioned_store(tmp_path, 1000), versioned_store(tmp_path, 2000)
    store = bucket.store(old)
    versions = {key: ((old / key).read_bytes(), (new / key).read_bytes())
                for key in (f"{name}/c/0/0" for name in STREAMED)}
    mnt = bucket.mount(mount, store, "--attr-timeout", "0.1", *options)
    other = client(bucket.server, store.location)  # another client, not zarrfs
    stop = threading.Event()
    puts = []

    def replace_shards():
        for n in itertools.count():
            if stop.is_set():
                return
            for key, pair in versions.items():
                obstore.put(other, key, pair[(n + 1) % 2])
            puts.append(n)
            time.sleep(0.05)

    flipper = threading.Thread(target=replace_shards, daemon=True)
    flipper.start()
    seen: dict[str, set[int]] = {name: set() for name in STREAMED}
    deadline = time.monotonic() + 12
    try:
        while time.monotonic() < deadline:
            for name, (_, grid) in STREAMED.items():
                for k, (i, j) in enumerate(itertools.product(*map(range, grid))):
                    path = mnt / name / "c" / str(i) / str(j)
                    try:
                        data = path.read_bytes()
                    except OSError as error:
                        pytest.fail(f"{name} c/{i}/{j}: {error} while the shard was replaced\n{mnt.log_text()[-2000:]}")
                    chunk = np.frombuffer(data, dtype="<u4")
                    assert chunk.size == BIG_CHUNK[0] * BIG_CHUNK[1], f"{name} c/{i}/{j}: {len(data)} bytes"
                    first = int(chunk[0])
                    assert first in (1000 + k, 2000 + k), f"{name} c/{i}/{j}: element 0 is {first}"
                    assert np.array_equal(chunk, chunk_content(first, chunk.size)), \
                        (f"{name} c/{i}/{j}: a mix of two versions (element 0 from version {first // 1000}, "
                         f"{np.count_nonzero(chunk != chunk_content(first, chunk.size))} of {chunk.size} elements "
                         f"from the other)\n{mnt.log_text()[-1500:]}")
                    seen[name].add(first // 1000)
    finally:
        stop.set()
        flipper.join(timeout=30)
    assert len(puts) >= 10
    assert all(found == {1, 2} for found in seen.values()), f"the reader saw only {seen}"


# -- errors: a missing bucket, info and check on the same URLs -------------------------------------


def test_mounting_a_missing_bucket_is_one_clear_error_and_mounts_nothing(bucket, cleanup, tmp_path):
    mnt = cleanup.mountpoint(tmp_path / "mnt", create=True)
    url = "s3://no-such-bucket-zarrfs/prefix"
    result = zarrfs("mount", url, str(mnt), "--endpoint-url", bucket.server.endpoint, "--log-file",
                    str(tmp_path / "log"), timeout=90)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zarrfs: error:") and "no-such-bucket-zarrfs" in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not is_mounted(mnt)
    assert not processes_naming(mnt)
    for command in ("info", "check"):
        result = zarrfs(command, url, "--endpoint-url", bucket.server.endpoint, timeout=90)
        assert result.returncode != 0, command
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no-such-bucket-zarrfs" in lines[0], (command, result.stderr)


def test_info_and_check_take_the_same_urls_as_mount(bucket, tmp_path):
    source = empty_array(tmp_path)
    zarr.open_array(source / "a", mode="r+")[:CHUNK[0], :CHUNK[1]] = chunk_content(5, ELEMENTS).reshape(CHUNK)
    store = bucket.store(source)
    info = zarrfs("info", *bucket.zarrfs_args(store))
    assert info.returncode == 0, info.stderr
    assert "a" in info.stdout
    checked = zarrfs("check", *bucket.zarrfs_args(store))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    store.alter("a/c/0/0", lambda path: path.write_bytes(path.read_bytes()[:-3]))
    broken = zarrfs("check", *bucket.zarrfs_args(store))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "a/c/0/0" in broken.stdout + broken.stderr


def test_a_read_only_mount_writes_nothing_to_the_bucket(bucket, mount, tmp_path):
    """Not even the conditional-write probe: a read-only mount needs no write permission."""
    source = empty_array(tmp_path)
    zarr.open_array(source / "a", mode="r+")[:CHUNK[0], :CHUNK[1]] = chunk_content(5, ELEMENTS).reshape(CHUNK)
    mnt = bucket.mount(mount, bucket.store(source), "--read-only")
    assert read_chunk(mnt.path / "a" / "c" / "0" / "0") == 5
    requests = mnt.status()["store_requests"]
    assert requests.get("GET") and not {"PUT", "DELETE", "COPY"} & set(requests), requests


# -- secrets ------------------------------------------------------------------------------------


def test_no_secret_in_ps_the_log_or_the_status_file(bucket, mount, tmp_path, monkeypatch):
    source = empty_array(tmp_path)
    store = bucket.store(source)
    mnt = bucket.mount(mount, store, "--log-level", "DEBUG")
    pid = mnt.status()["pid"]
    (mnt / "a" / "c" / "0").mkdir(parents=True, exist_ok=True)
    (mnt / "a" / "c" / "0" / "0").write_bytes(chunk_content(3, ELEMENTS).tobytes())
    (mnt / "notes.txt").write_text("hello")
    os.sync()
    assert read_chunk(mnt / "a" / "c" / "0" / "0") == 3
    with pytest.raises(OSError) as failure:
        (mnt / "a" / "c" / "0" / "99").write_bytes(b"x")  # a logged refusal
    assert failure.value.errno in (errno.EINVAL, errno.ENOENT)
    status = (mnt / ".zarrfs" / "status").read_text()
    ps = subprocess.run(["ps", "axww", "-o", "pid=,args="], capture_output=True, text=True, check=True).stdout
    assert any(line.split(None, 1)[0] == str(pid) for line in ps.splitlines()), "the daemon is not in ps"
    mnt.unmount()
    log = mnt.log_text()
    assert log, "the daemon logged nothing"
    for where, text in (("ps", ps), ("the log file", log), ("the status file", status)):
        assert SECRET_KEY not in text, f"the secret access key is in {where}"

    # a wrong secret: refused, and the refusal does not repeat it
    wrong = "wrong-secret-" + os.urandom(6).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    target = tmp_path / "refused"
    target.mkdir()
    refused = zarrfs("mount", store.location, str(target), "--endpoint-url", bucket.server.endpoint,
                     "--log-file", str(tmp_path / "refused.log"), timeout=90)
    if is_mounted(target):
        subprocess.run(["fusermount3", "-u", "-z", str(target)], capture_output=True)
    assert refused.returncode != 0, "a wrong secret key was accepted"
    refused_log = (tmp_path / "refused.log").read_text() if (tmp_path / "refused.log").exists() else ""
    assert wrong not in refused.stderr + refused.stdout + refused_log
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
