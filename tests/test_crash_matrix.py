"""The crash-consistency matrix: every writer idiom x kill -9 at a random moment (SPEC §5, §6).

What it covers
--------------
- Writer idioms (``IDIOMS``), each journaling "S key seq" before a write and, once its
  durable point has returned, "D key seq" (journal fsync'ed):
    write_fsync           open(O_TRUNC), write, fsync(fd)
    fdatasync             open (no O_TRUNC), pwrite over the whole chunk, fdatasync(fd)
    replace_fsync_rofd    temporary + rename onto the key, fsync of a new read-only fd on the key
    replace_fsync_dirfd   temporary + rename onto the key, fsync of the directory
    link_unlink           temporary, (unlink the old key), link onto the key, unlink the
                          temporary, fsync of a read-only fd on the key or of the directory
    tensorstore_lock      key.__lock (O_CREAT|O_EXCL), write, fsync, rename onto the key, fsync dir
    trunc_gap             open(O_TRUNC) of an existing chunk (all are written first), sleep
                          ``TRUNC_GAP``, write, fsync: a kill in the gap after a --flush-after
                          flush must find the chunk's old content, never an empty chunk
- ``--flush-after`` short (0.2) and effectively infinite (3600); ``--shards 2`` on a raw uint32
  array of 8x8 chunks (4 chunks per shard, 16 equal shards: many repacks).
- The daemon is killed with SIGKILL 0.05-1.0 s into the writing; the writer keeps going for
  ``KEEP_GOING`` s after the kill (makedirs, open, write, fsync... each error recorded), and also
  writes and fsyncs a scratch file it has held open since before the kill.

What a round checks
-------------------
1. No operation the writer started after the kill succeeded, each failed with ENOTCONN; the
   killed daemon's mount stays as a dead mount (no auto_unmount), and once it is cleared with
   ``fusermount3 -u -z`` nothing exists beneath the mountpoint.
2. The backing store, read by zarr-python 3 and tensorstore: every shard complete (index checksum,
   every entry a whole chunk), every chunk whose durable point returned before the kill holds that
   write or a later started one, every other chunk its old value or a started write.
3. ``zarrfs mount`` on the same mountpoint succeeds -- in odd rounds on the dead mount itself,
   which it must clear first -- shows the same values, and no ``.zarrfs-tmp-*`` file.

The CI part is ``test_kill_9_matrix`` (a few rounds per idiom x flush-after); the long run is
``tests/stress_crash.py --rounds 500``, which runs the same ``CrashSession.run_round``.
``ZARRFS_CRASH_SEED`` replays the kill times and writer choices of a run (printed on failure).
``ZARRFS_CRASH_EXTRA_OPTIONS`` adds mount options (e.g. ``-o noauto_unmount``), to try a variant.
"""

from __future__ import annotations

import errno
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import Cleanup, force_unmount, is_mounted, wait_until
from helpers import (TEMPORARY_PREFIX, alive, check_shard_index, chunk_content, read_backing, read_status, seq_of,
                     write_file)
from test_crash import acceptable_values, run_zarrfs, shard_files, temporaries

# The array: raw little-endian uint32, 8x8 chunks (256 bytes each), 8x8 of them, in shards of 2x2.
CHUNK = 8
GRID = 8
SHARDS = 2
CHUNK_ELEMENTS = CHUNK * CHUNK
CHUNK_NBYTES = CHUNK_ELEMENTS * 4
CHUNKS_PER_SHARD = SHARDS * SHARDS

IDIOMS = ("write_fsync", "fdatasync", "replace_fsync_rofd", "replace_fsync_dirfd", "link_unlink",
          "tensorstore_lock", "trunc_gap")
FLUSH_AFTER = ("0.2", "3600")
# trunc_gap is about flushes no fsync asked for: with --flush-after 3600 there are none.
MATRIX = [(idiom, flush) for idiom in IDIOMS for flush in FLUSH_AFTER
          if not (idiom == "trunc_gap" and flush == "3600")]

KILL_WINDOW = (0.05, 1.0)  # seconds into the writing
KEEP_GOING = 0.3  # seconds the writer goes on after the kill
DEATH_MARGIN = 0.05  # after the daemon is gone, before "after the kill" starts (its threads exit)
TRUNC_GAP = 0.8  # trunc_gap's sleep between open(O_TRUNC) and write: the kill often lands after the flush
SEQ_STRIDE = 1_000_000  # sequence numbers of one round: next_seq .. next_seq + SEQ_STRIDE - 1
EXTRA_MOUNT_OPTIONS = tuple(shlex.split(os.environ.get("ZARRFS_CRASH_EXTRA_OPTIONS", "")))


# -- the writer process ----------------------------------------------------------------

WRITER = r'''
"""A crash-matrix writer: one idiom, random chunks, until the stop file exists (through the kill)."""
import os, random, struct, sys, time

array, journal_path, stop_path, idiom = sys.argv[1:5]
seq, seed, grid, elements = (int(a) for a in sys.argv[5:9])
gap = float(sys.argv[9])
rng = random.Random(seed)
journal = os.open(journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
held = []  # descriptors of the current write, closed after it
failed = False  # an operation of the current write failed


def content(seq):
    """helpers.chunk_content(seq, elements) without numpy (a quick start)."""
    values = [(i * 2654435761 + seq * 40503) % 2**32 for i in range(elements)]
    values[0] = seq
    return struct.pack(f"<{elements}I", *values)


def note(*fields, sync=False):
    """One journal line; "S"/"D" lines end with the time (a "D" line: when the durable point returned)."""
    os.write(journal, (" ".join(str(f) for f in fields) + "\n").encode())
    if sync:
        os.fsync(journal)


def attempt(name, call, *args, **kwargs):
    """One system call, journaled "O name started ended errno"; None if it failed (the writer goes on)."""
    global failed
    started = time.monotonic()
    try:
        result = call(*args, **kwargs)
        code = 0
    except OSError as error:
        result, code, failed = None, error.errno, True
    note("O", name, f"{started:.6f}", f"{time.monotonic():.6f}", code)
    return result


def open_fd(name, path, flags):
    fd = attempt(name, os.open, path, flags, 0o644)
    if fd is not None:
        held.append(fd)
    return fd


def on_fd(name, call, fd, *args):
    if fd is not None:
        attempt(name, call, fd, *args)


def close_all():
    while held:
        attempt("close", os.close, held.pop())


def fsync_directory(directory):
    on_fd("fsync_dir", os.fsync, open_fd("open_dir", directory, os.O_RDONLY | os.O_DIRECTORY))


def fsync_read_only(path):
    on_fd("fsync_rofd", os.fsync, open_fd("open_ro", path, os.O_RDONLY))


def write_temporary(path, data, sync=False, name="open_tmp"):
    fd = open_fd(name, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    on_fd("write", os.write, fd, data)
    if sync:
        on_fd("fsync", os.fsync, fd)
    close_all()


def write_fsync(key, path, seq, data):
    fd = open_fd("open_trunc", path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    on_fd("write", os.write, fd, data)
    on_fd("fsync", os.fsync, fd)


def fdatasync(key, path, seq, data):
    fd = open_fd("open", path, os.O_WRONLY | os.O_CREAT)
    on_fd("pwrite", os.pwrite, fd, data, 0)
    on_fd("fdatasync", os.fdatasync, fd)


def replace_fsync_rofd(key, path, seq, data):
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{seq}.partial"
    write_temporary(temporary, data)
    attempt("rename", os.replace, temporary, path)
    fsync_read_only(path)


def replace_fsync_dirfd(key, path, seq, data):
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{seq}.partial"
    write_temporary(temporary, data)
    attempt("rename", os.replace, temporary, path)
    fsync_directory(os.path.dirname(path))


def link_unlink(key, path, seq, data):
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{seq}.partial"
    write_temporary(temporary, data)
    if os.path.lexists(path):  # link does not replace: the old chunk goes first (absent meanwhile)
        note("S", key, 0, f"{time.monotonic():.6f}")
        attempt("unlink_key", os.unlink, path)
    attempt("link", os.link, temporary, path)
    attempt("unlink_tmp", os.unlink, temporary)
    if seq % 2:
        fsync_read_only(path)
    else:
        fsync_directory(os.path.dirname(path))


def tensorstore_lock(key, path, seq, data):
    lock = path + ".__lock"
    write_temporary(lock, data, sync=True, name="open_lock")
    attempt("rename", os.rename, lock, path)
    fsync_directory(os.path.dirname(path))


def trunc_gap(key, path, seq, data):
    fd = open_fd("open_trunc", path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    if fd is not None:
        time.sleep(gap)  # the chunk is empty now: no flush may store that
    on_fd("write", os.write, fd, data)
    on_fd("fsync", os.fsync, fd)


# A scratch file (not a chunk key) held open from the start: once an error was seen, every
# later cycle also writes and fsyncs it, so write/fsync on a descriptor opened before the
# kill are tried whatever the idiom.
os.makedirs(os.path.join(array, "c"), exist_ok=True)
spare = os.open(os.path.join(array, "c", ".crash-matrix-spare"), os.O_WRONLY | os.O_CREAT, 0o644)
seen_error = False
note("R", f"{time.monotonic():.6f}", sync=True)
while not os.path.exists(stop_path):
    i, j = rng.randrange(grid), rng.randrange(grid)
    key, directory = f"c/{i}/{j}", os.path.join(array, "c", str(i))
    failed = False
    attempt("makedirs", os.makedirs, directory, exist_ok=True)
    note("S", key, seq, f"{time.monotonic():.6f}")
    try:
        globals()[idiom](key, os.path.join(directory, str(j)), seq, content(seq))
        if not failed:
            note("D", key, seq, f"{time.monotonic():.6f}", sync=True)
    finally:
        close_all()
    seq += 1
    seen_error = seen_error or failed
    if seen_error:
        attempt("spare_write", os.pwrite, spare, content(seq), 0)
        attempt("spare_fsync", os.fsync, spare)
        time.sleep(0.002)  # keep going, without a busy loop on a dead mount
'''


@dataclass
class Op:
    name: str
    started: float
    ended: float
    errno: int


@dataclass
class Journal:
    """A writer's journal: its writes ("S"tarted, "D"urable) and every system call it made."""
    writes: list[tuple[str, str, int | None, float]]  # (kind, key, seq or None for a deletion, time)
    ops: list[Op]

    @classmethod
    def read(cls, path: Path) -> Journal:
        writes, ops = [], []
        for fields in (line.split() for line in path.read_text().splitlines() if line):
            if fields[0] in ("S", "D") and len(fields) == 4:
                writes.append((fields[0], fields[1], int(fields[2]) or None, float(fields[3])))
            elif fields[0] == "O" and len(fields) == 5:
                ops.append(Op(fields[1], float(fields[2]), float(fields[3]), int(fields[4])))
        return cls(writes, ops)

    def until(self, killed_at: float) -> list[tuple[str, str, int | None]]:
        """The writes as ``acceptable_values`` takes them: a durable point counts only if it returned
        before the kill (one after it may be a write that wrongly succeeded: it only started)."""
        return [("D" if kind == "D" and at < killed_at else "S", key, seq) for kind, key, seq, at in self.writes]

    def durable_keys(self, killed_at: float) -> set[str]:
        return {key for kind, key, _ in self.until(killed_at) if kind == "D"}


def ready(path: Path) -> bool:
    return path.exists() and path.read_text().startswith("R ")


# -- one round's findings --------------------------------------------------------------


@dataclass
class RoundResult:
    idiom: str
    flush_after: str
    number: int
    delay: float
    cleared_by_test: bool
    fsynced_checked: int = 0  # chunks whose durable point returned this round, found in the store
    lost: int = 0  # chunks holding a value they may not hold (an fsync'ed write lost, torn, ...)
    beneath: int = 0  # files and directories found beneath the mountpoint
    torn: int = 0  # shards that are not complete, or a store that readers cannot read
    succeeded_after_kill: int = 0  # operations the writer started after the kill that succeeded
    after_kill: Counter = field(default_factory=Counter)  # (op, errno name) -> attempts after the kill
    problems: list[str] = field(default_factory=list)
    fatal: bool = False  # the session cannot go on (no store to read, no mount)

    def problem(self, text: str) -> None:
        self.problems.append(f"[{self.idiom} --flush-after {self.flush_after} round {self.number}, "
                             f"killed {self.delay:.2f} s in] {text}")

    def line(self) -> str:
        attempts = ", ".join(f"{op}:{err}={n}" for (op, err), n in sorted(self.after_kill.items()))
        return (f"{self.idiom:20} {self.flush_after:>5} round {self.number} kill@{self.delay:.2f}s "
                f"fsynced={self.fsynced_checked} lost={self.lost} beneath={self.beneath} torn={self.torn} "
                f"problems={len(self.problems)} after-kill[{attempts}]")


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "OK"


# -- a store, its mountpoint, and the rounds played on them ----------------------------


def create_array(mnt: Path) -> None:
    """The raw uint32 array, created through the mount (zarrfs stores it sharded)."""
    zarr.create_array(str(mnt / "arr"), shape=(GRID * CHUNK, GRID * CHUNK), chunks=(CHUNK, CHUNK), dtype="<u4",
                      compressors=None, fill_value=0)


def chunk_region(i: int, j: int) -> tuple[slice, slice]:
    return slice(i * CHUNK, (i + 1) * CHUNK), slice(j * CHUNK, (j + 1) * CHUNK)


def entries_beneath(directory: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, name), directory)
                  for d, dirs, files in os.walk(directory) for name in dirs + files)


class CrashSession:
    """One backing store and one mountpoint; every round kills the daemon and mounts again.

    Every mount and process it starts is registered with ``cleanup`` (by mountpoint and pid).
    """

    def __init__(self, workdir: Path, idiom: str, flush_after: str, cleanup: Cleanup, rng: random.Random):
        self.workdir, self.idiom, self.flush_after = Path(workdir), idiom, flush_after
        self.cleanup, self.rng = cleanup, rng
        self.store = self.workdir / "store"
        self.array = self.store / "arr"
        self.mnt = cleanup.mountpoint(self.workdir / "mnt", create=True)
        self.log = self.workdir / "zarrfs.log"
        self.writer_script = self.workdir / "writer.py"
        self.state: dict[str, int | None] = {}  # chunk key -> seq in the backing store after the last round
        self.next_seq = 1
        self.rounds = 0
        self.pid: int | None = None

    def options(self) -> tuple[str, ...]:
        return ("--shards", str(SHARDS), "--flush-after", self.flush_after, *EXTRA_MOUNT_OPTIONS)

    def mount(self) -> subprocess.CompletedProcess:
        result = run_zarrfs("mount", str(self.store), str(self.mnt), "--log-file", str(self.log), *self.options())
        if result.returncode == 0:
            self.pid = self.cleanup.daemon(int(read_status(self.mnt)["pid"]))
        return result

    def start(self) -> None:
        self.store.mkdir(parents=True)
        self.writer_script.write_text(WRITER)
        result = self.mount()
        assert result.returncode == 0, result.stderr
        create_array(self.mnt)
        if self.idiom == "trunc_gap":
            self.write_every_chunk()

    def write_every_chunk(self) -> None:
        """Every chunk written and fsync'ed through the mount: the rounds then truncate existing chunks."""
        for i in range(GRID):
            row = self.mnt / "arr" / "c" / str(i)
            row.mkdir(parents=True, exist_ok=True)
            for j in range(GRID):
                write_file(row / str(j), chunk_content(self.next_seq, CHUNK_ELEMENTS).tobytes())
                self.state[f"c/{i}/{j}"] = self.next_seq
                self.next_seq += 1
        self.next_seq += SEQ_STRIDE

    # -- a round ------------------------------------------------------------------------

    def run_round(self) -> RoundResult:
        """Write, kill -9, let the writer go on, check the mountpoint, the store and a new mount."""
        number, self.rounds = self.rounds, self.rounds + 1
        result = RoundResult(self.idiom, self.flush_after, number, self.rng.uniform(*KILL_WINDOW),
                             cleared_by_test=number % 2 == 0)
        journal, stop = self.workdir / f"journal-{number}", self.workdir / f"stop-{number}"
        writer = self.start_writer(journal, stop, number)
        try:
            killed_at, dead_at = self.kill_while_writing(writer, journal, result)
        finally:
            self.stop_writer(writer, stop, number, result)
        if result.fatal:
            return result
        entries = Journal.read(journal)
        check_writer_ops(entries.ops, killed_at, dead_at, result)
        self.check_dead_mount(result)
        if result.cleared_by_test:
            self.clear_dead_mount(result)
        if not is_mounted(self.mnt):
            self.check_nothing_beneath(result)
        data = self.check_backing(entries, killed_at, result)
        self.remount(result)
        if data is not None and not result.fatal:
            self.check_mount_shows(data, result)
        self.next_seq += SEQ_STRIDE
        return result

    def start_writer(self, journal: Path, stop: Path, number: int) -> subprocess.Popen:
        with open(self.workdir / f"writer-{number}.stderr", "wb") as stderr:
            return self.cleanup.process(subprocess.Popen(
                [sys.executable, str(self.writer_script), str(self.mnt / "arr"), str(journal), str(stop),
                 self.idiom, str(self.next_seq), str(self.rng.randrange(2**32)), str(GRID), str(CHUNK_ELEMENTS),
                 str(TRUNC_GAP)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr))

    def kill_while_writing(self, writer: subprocess.Popen, journal: Path, result: RoundResult):
        """kill -9 the daemon ``result.delay`` s into the writing; (time of the kill, time it is dead)."""
        if not wait_until(lambda: ready(journal) or writer.poll() is not None, timeout=20) or writer.poll() is not None:
            result.problem("the writer did not start")
            result.fatal = True
            return 0.0, 0.0
        time.sleep(result.delay)
        if writer.poll() is not None:
            result.problem("the writer ended while the daemon was alive")
        killed_at = time.monotonic()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            result.problem(f"the daemon ({self.pid}) died before the kill: see {self.log}")
        if not wait_dead(self.pid, timeout=10):
            result.problem(f"daemon {self.pid} survived SIGKILL")
            result.fatal = True
        time.sleep(DEATH_MARGIN)
        return killed_at, time.monotonic()

    def stop_writer(self, writer: subprocess.Popen, stop: Path, number: int, result: RoundResult) -> None:
        time.sleep(KEEP_GOING)
        stop.touch()
        try:
            writer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
            result.problem("the writer hung after the kill (killed)")
        if writer.returncode:
            stderr = (self.workdir / f"writer-{number}.stderr").read_text()
            result.problem(f"the writer failed (exit {writer.returncode}):\n{stderr}")

    def check_dead_mount(self, result: RoundResult) -> None:
        """The killed daemon's mount stays, and every request on it fails with ENOTCONN."""
        if not is_mounted(self.mnt):
            result.problem("after kill -9 the mount is gone (auto_unmount?): later writes land beneath it")
            return
        try:
            os.statvfs(self.mnt)
        except OSError as error:
            if error.errno != errno.ENOTCONN:
                result.problem(f"statvfs of the dead mount: {errno_name(error.errno)}, expected ENOTCONN")
        else:
            result.problem("statvfs of the killed daemon's mount succeeded")

    def clear_dead_mount(self, result: RoundResult) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=15)
        if not wait_until(lambda: not is_mounted(self.mnt), timeout=10):
            result.problem("fusermount3 -u -z did not clear the dead mount")

    def check_nothing_beneath(self, result: RoundResult) -> None:
        found = entries_beneath(self.mnt)
        if found:
            result.beneath += len(found)
            result.problem(f"{len(found)} files/directories beneath the mountpoint (removed so the run can go on): "
                           f"{found[:8]}")
            for path in self.mnt.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def check_backing(self, journal: Journal, killed_at: float, result: RoundResult) -> np.ndarray | None:
        """Complete shards; every chunk an acceptable value. Returns the array (None: unreadable)."""
        torn = 0
        for shard in shard_files(self.array):
            try:
                check_shard_index(shard, CHUNKS_PER_SHARD, CHUNK_NBYTES)
            except AssertionError as error:
                torn += 1
                result.problem(f"torn shard {shard.relative_to(self.store)}: {error}")
        result.torn += torn
        try:
            data = read_backing(self.array)
        except Exception as error:  # noqa: BLE001 - any reader failure is the finding
            result.torn += not torn  # counted once: a torn shard or, if none was found, the store
            result.fatal = True
            result.problem(f"the backing store is unreadable: {type(error).__name__}: {error}")
            return None
        allowed = acceptable_values(journal.until(killed_at), self.state)
        durable = journal.durable_keys(killed_at)
        state = {}
        for i in range(GRID):
            for j in range(GRID):
                key = f"c/{i}/{j}"
                expected = allowed.get(key, {self.state.get(key)})
                try:
                    found = seq_of(data[chunk_region(i, j)])
                except AssertionError as error:
                    found = f"torn ({error})"
                result.fsynced_checked += key in durable
                if found not in expected:
                    result.lost += 1
                    what = "fsync'ed before the kill" if key in durable else "not fsync'ed"
                    result.problem(f"{key} ({what}) holds {found}, expected one of {sorted(expected, key=str)}")
                state[key] = found if isinstance(found, int) or found is None else None
        self.state = state
        return data

    def remount(self, result: RoundResult) -> None:
        """``zarrfs mount`` on the same mountpoint (on the dead mount itself if the test left it)."""
        was = "the dead mount" if is_mounted(self.mnt) else "the cleared mountpoint"
        mounted = self.mount()
        if mounted.returncode == 0:
            return
        result.problem(f"zarrfs mount on {was} failed: {mounted.stderr.strip()}")
        force_unmount(self.mnt)  # so that the run can go on
        self.check_nothing_beneath(result)
        if self.mount().returncode:
            result.fatal = True

    def check_mount_shows(self, data: np.ndarray, result: RoundResult) -> None:
        try:
            shown = zarr.open_array(str(self.mnt / "arr"), mode="r")[...]
        except Exception as error:  # noqa: BLE001
            result.problem(f"reading the array through the new mount: {type(error).__name__}: {error}")
            return
        if not np.array_equal(shown, data):
            result.problem("the new mount shows other values than the backing store holds")
        visible = [name for name in entries_beneath(self.mnt) if os.path.basename(name).startswith(TEMPORARY_PREFIX)]
        if visible:
            result.problem(f"temporary files visible in the new mount: {visible}")

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> list[str]:
        """Unmount; what is wrong with the store or the mountpoint then."""
        problems = []
        if not wait_until(lambda: not temporaries(self.store), timeout=5):
            problems.append(f"crash temporaries not cleaned by the mount: {temporaries(self.store)}")
        if is_mounted(self.mnt):
            result = run_zarrfs("umount", str(self.mnt))
            if result.returncode:
                problems.append(f"zarrfs umount failed: {result.stderr.strip()}")
        if is_mounted(self.mnt):
            problems.append("still mounted after zarrfs umount")
        elif entries_beneath(self.mnt):
            problems.append(f"beneath the mountpoint: {entries_beneath(self.mnt)[:8]}")
        if "Traceback" in (self.log.read_text() if self.log.exists() else ""):
            problems.append(f"a traceback in the daemon log {self.log}")
        return [f"[{self.idiom} --flush-after {self.flush_after} end] {p}" for p in problems]


def check_writer_ops(ops: list[Op], killed_at: float, dead_at: float, result: RoundResult) -> None:
    """Nothing failed while the daemon was alive; everything started after its death failed (ENOTCONN)."""
    failed_alive = [op for op in ops if op.errno and op.ended < killed_at]
    if failed_alive:
        result.problem("operations failed while the daemon was alive: "
                       + ", ".join(f"{op.name}:{errno_name(op.errno)}" for op in failed_alive[:8]))
    after = [op for op in ops if op.started > dead_at and op.name != "close"]
    for op in after:
        result.after_kill[(op.name, errno_name(op.errno))] += 1
    if not after:
        result.problem("the writer attempted nothing after the kill")
    succeeded = Counter(op.name for op in after if op.errno == 0)
    result.succeeded_after_kill += sum(succeeded.values())
    if succeeded:
        result.problem(f"operations started after the kill succeeded: {dict(succeeded)}")
    other = Counter(f"{op.name}:{errno_name(op.errno)}" for op in after
                    if op.errno not in (0, errno.ENOTCONN) and not names_a_file_never_made(op, ops))
    if other:
        result.problem(f"operations after the kill failed with other errors than ENOTCONN: {dict(other)}")


MADE_BY = {  # an operation on a name -> the writer's operations that make that name
    "rename": ("open_tmp", "open_lock"), "link": ("open_tmp",), "unlink_tmp": ("open_tmp",),
    "open_ro": ("rename", "link"),
}


def names_a_file_never_made(op: Op, ops: list[Op]) -> bool:
    """ENOENT for a name whose making failed is right, and it may come from the kernel alone:
    the making's LOOKUP, answered by the live daemon, left a negative entry, then its CREATE or
    RENAME met the dead one; the next operation on the name is refused from that cached entry
    without a request (stress: rename after a failed create, open after a failed rename)."""
    if op.errno != errno.ENOENT or op.name not in MADE_BY:
        return False
    makers = [o for o in ops[:ops.index(op)] if o.name in MADE_BY[op.name]]
    return bool(makers) and makers[-1].errno != 0


def wait_dead(pid: int, timeout: float) -> bool:
    """Polls often (unlike ``wait_until``): the time of death bounds what must fail after it."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def session_seed() -> int:
    return int(os.environ.get("ZARRFS_CRASH_SEED") or random.randrange(2**31))


# -- the CI part -----------------------------------------------------------------------

ROUNDS = {"trunc_gap": 5}  # rounds per case; its bug needs the kill in the gap after a flush
DEFAULT_ROUNDS = 3


@pytest.mark.parametrize(("idiom", "flush_after"), MATRIX, ids=[f"{i}-flush{f}" for i, f in MATRIX])
def test_kill_9_matrix(idiom, flush_after, tmp_path, cleanup):
    seed = session_seed()
    print(f"ZARRFS_CRASH_SEED={seed}")  # shown on failure: rerun with it to replay the kill times
    session = CrashSession(tmp_path, idiom, flush_after, cleanup, random.Random(f"{seed}-{idiom}-{flush_after}"))
    session.start()
    for _ in range(ROUNDS.get(idiom, DEFAULT_ROUNDS)):
        result = session.run_round()
        print(result.line())
        assert not result.problems, f"ZARRFS_CRASH_SEED={seed}\n" + "\n".join(result.problems)
    problems = session.finish()
    assert not problems, "\n".join(problems)
