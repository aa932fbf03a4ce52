"""Write benchmark: zarr-python 2 writing an array through a zarrfs mount vs. into a plain directory.

    .venv/bin/python bench/write_bench.py [--size-mib 1024] [--repeats 3] [--chunk-kib 64] [--cache-dir DIR]

Data (cached in --cache-dir, generated once, never timed): write-<rows>x<cols>.npy, a 2-D uint8
array of random bytes, --size-mib large. zarr-python 2.18 (its own venv, tests/legacy.py) writes
it with ``zarr.open_array(DIR/data.zarr, mode="w-", chunks=..., compressor=None)`` (square-ish
chunks of --chunk-kib raw bytes, 256x256 for 64 KiB) and ``z[top:top + slab] = data[...]`` for
slabs of one shard row (8 chunk rows; 64 MiB at the default size), reading the .npy through a
memory map whose pages were read into the page cache beforehand.

Each repeat runs, interleaved so drift hits all of them:
  plain        the write into a fresh plain directory beside the backing store (same
               filesystem), followed by `sync -f DIR`
  zarrfs       the write into a fresh, empty store mounted with `zarrfs mount --view v2`
               (default --max-dirty 256 MiB, default --shards 8: 4 MiB shards of 8x8 chunks),
               followed by `zarrfs umount`, which flushes everything and returns once the daemon
               is gone (every shard is fsynced and renamed into place by then)
  zarrfs md64  the same with --max-dirty 64 (first repeat only)
Timed: from just before zarr-python 2 creates the array (time.monotonic in the writer; the clock is
system-wide) until `sync -f` / `zarrfs umount` returns; so interpreter start and imports are not
timed, flushing is. "write" is the writer's part, "flush" the sync / umount.

Memory and CPU: a thread samples the daemon's VmRSS and VmHWM (/proc/PID/status, pid from
MNT/.zarrfs/status) and CPU time (/proc/PID/stat) every 0.2 s from just before the write until the
daemon is gone. Reported: VmHWM read just before `zarrfs umount` (the peak of the whole mount so
far), the largest VmRSS sampled during the write and during the umount (the final flush), the
daemon's CPU seconds over the timed span, and the writer's CPU seconds (getrusage of the child).

Checks after every run: the plain directory holds chunks + 1 files (.zarray); the backing store
holds shards + 1 files (zarr.json), its zarr.json is sharded, and zarr-python 3 reading the
backing store directly returns the data for 8 random windows plus the first and the last chunk.
Before each run: the previous run's directories are removed and `sync` runs (untimed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from legacy import ZARR2_VERSION, zarr2_python  # noqa: E402

WIDTH = 32768  # columns; --size-mib sets the rows
SHARDS = 8  # zarrfs's default --shards: inner chunks per shard along every axis
DEFAULT_MAX_DIRTY = 256  # MiB, zarrfs's default --max-dirty
SMALL_MAX_DIRTY = 64
SEED = 20240602
SAMPLE_SECONDS = 0.2
ZARRFS = Path(sys.executable).with_name("zarrfs")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

WRITER = """
import json, sys, time
import numpy as np
import zarr
assert zarr.__version__ == sys.argv[6], zarr.__version__
dest, npy = sys.argv[1], sys.argv[2]
chunks, slab = (int(sys.argv[3]), int(sys.argv[4])), int(sys.argv[5])
data = np.load(npy, mmap_mode="r")
start = time.monotonic()
z = zarr.open_array(dest, mode="w-", shape=data.shape, chunks=chunks, dtype="u1", compressor=None,
                    fill_value=0)
for top in range(0, data.shape[0], slab):
    z[top:top + slab] = data[top:top + slab]
end = time.monotonic()
print(json.dumps({"start": start, "end": end}))
"""


# -- data -------------------------------------------------------------------

def chunk_shape(chunk_kib: int) -> tuple[int, int]:
    nbytes = chunk_kib * 1024
    if chunk_kib < 1 or nbytes & (nbytes - 1):
        raise SystemExit("--chunk-kib must be a power of two")
    cols = 1 << math.ceil(math.log2(nbytes) / 2)
    if WIDTH % (cols * SHARDS):
        raise SystemExit(f"--chunk-kib {chunk_kib} is too large for {WIDTH} columns")
    return nbytes // cols, cols


def array_shape(size_mib: int, chunk: tuple[int, int]) -> tuple[int, int]:
    rows = max(chunk[0], size_mib * (1 << 20) // WIDTH // chunk[0] * chunk[0])
    return rows, WIDTH


def ensure_data(cache: Path, shape: tuple[int, int]) -> Path:
    """Random bytes of ``shape`` in a .npy, generated once (complete once it has its name)."""
    path = cache / f"write-{shape[0]}x{shape[1]}-seed{SEED}.npy"
    if path.exists():
        return path
    started = time.perf_counter()
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(SEED)
    step = max(1, (64 << 20) // shape[1])
    for top in range(0, shape[0], step):
        rows = min(step, shape[0] - top)
        out[top:top + rows] = np.frombuffer(rng.bytes(rows * shape[1]), dtype=np.uint8).reshape(rows, -1)
    out.flush()
    del out
    partial.rename(path)
    os.sync()
    print(f"generated {shape[0]}x{shape[1]} uint8 in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def warm_page_cache(path: Path) -> None:
    subprocess.run(["cat", path], check=True, stdout=subprocess.DEVNULL)


# -- the daemon --------------------------------------------------------------

def mount(store: Path, mountpoint: Path, log_file: Path, max_dirty: int) -> int:
    """Mount ``store`` with the v2 view; the daemon's pid."""
    subprocess.run([ZARRFS, "mount", "--view", "v2", "--max-dirty", str(max_dirty), "--log-file", log_file,
                    store, mountpoint], check=True)
    return int(status(mountpoint)["pid"])


def status(mountpoint: Path) -> dict:
    return json.loads((mountpoint / ".zarrfs" / "status").read_text())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def unmount(mountpoint: Path, pid: int | None = None, patience: float = 3600.0) -> str | None:
    """`zarrfs umount`. If it gives up (its own limit is 120 s) keep waiting, up to ``patience``
    seconds, for the daemon to finish flushing and go; returns what went wrong, if anything."""
    if not os.path.ismount(mountpoint):
        return None
    result = subprocess.run([ZARRFS, "umount", mountpoint], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    problem = f"`zarrfs umount` exited {result.returncode}: {result.stderr.strip()}"
    print(f"  {problem}; waiting for the daemon", flush=True)
    deadline = time.monotonic() + patience
    while pid is not None and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", mountpoint])
        problem += "; the mount was still there and was removed with fusermount3 -u (unflushed data lost)"
    return problem


class MemorySampler(threading.Thread):
    """VmRSS and VmHWM of ``pid`` every SAMPLE_SECONDS until stopped or the process is gone."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, int, float]] = []  # (monotonic, VmRSS kB, VmHWM kB, CPU s)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            sample = read_memory(self.pid)
            if sample is None:
                return
            self.samples.append((time.monotonic(), *sample))
            self.done.wait(SAMPLE_SECONDS)

    def max_rss_mib(self, start: float, end: float) -> float:
        values = [rss for t, rss, _, _ in self.samples if start <= t <= end]
        return max(values) / 1024 if values else float("nan")

    def cpu_seconds(self, start: float, end: float) -> float:
        """Daemon CPU time (user + system, all threads) between the samples nearest to
        ``start`` and ``end``; the last 0.2 s before the daemon exits can be missed."""
        values = [cpu for t, _, _, cpu in self.samples if start - SAMPLE_SECONDS <= t <= end]
        return values[-1] - values[0] if values else float("nan")


def read_memory(pid: int) -> tuple[int, int, float] | None:
    """(VmRSS kB, VmHWM kB, CPU seconds) of ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:
        cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0]), cpu
    except (KeyError, IndexError):  # a zombie has no memory lines
        return None


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- one run -----------------------------------------------------------------

def write(python: Path, dest: Path, npy: Path, chunk: tuple[int, int], slab: int) -> tuple[float, float, float]:
    """zarr-python 2 writes the .npy to ``dest``; its (start, end) in time.monotonic() and its CPU
    seconds (user + system, including interpreter start and imports)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([python, "-c", WRITER, dest, npy, str(chunk[0]), str(chunk[1]), str(slab),
                             ZARR2_VERSION], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if result.returncode:
        raise RuntimeError(f"zarr-python 2 failed writing {dest}:\n{result.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times = json.loads(result.stdout.strip().splitlines()[-1])
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return times["start"], times["end"], cpu


def fresh(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    subprocess.run(["sync"], check=True)  # no writeback of the last run during this one


def count_files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def run_plain(python, plain: Path, npy, chunk, slab, n_chunks: int) -> dict:
    fresh(plain)
    warm_page_cache(npy)
    start, end, writer_cpu = write(python, plain / "data.zarr", npy, chunk, slab)
    subprocess.run(["sync", "-f", plain], check=True)
    done = time.monotonic()
    files = count_files(plain)
    if files != n_chunks + 1:
        raise SystemExit(f"plain: {files} files, expected {n_chunks} chunks + .zarray")
    return {"seconds": done - start, "write": end - start, "flush": done - end, "files": files,
            "writer_cpu": writer_cpu}


def run_zarrfs(python, store: Path, mountpoint: Path, log_file: Path, npy, chunk, slab, max_dirty: int,
               n_shards: int, data: np.ndarray) -> dict:
    fresh(store)
    warm_page_cache(npy)
    pid = mount(store, mountpoint, log_file, max_dirty)
    sampler = MemorySampler(pid)
    problem = None
    try:
        sampler.start()
        start, end, writer_cpu = write(python, mountpoint / "data.zarr", npy, chunk, slab)
        hwm_before_umount = read_memory(pid)[1] / 1024
        before = status(mountpoint)
        umount_started = time.monotonic()
        problem = unmount(mountpoint, pid)
        done = time.monotonic()
    finally:
        unmount(mountpoint, pid)
        sampler.done.set()
        sampler.join()
    files = count_files(store)
    check_backing_store(store / "data.zarr", data, chunk, n_shards, files)
    return {"seconds": done - start, "write": end - start, "flush": done - end, "files": files,
            "hwm": hwm_before_umount, "rss_write": sampler.max_rss_mib(start, end),
            "rss_umount": sampler.max_rss_mib(umount_started, done), "writer_cpu": writer_cpu,
            "daemon_cpu_write": sampler.cpu_seconds(start, end), "daemon_cpu_umount": sampler.cpu_seconds(end, done),
            "dirty_mib_at_umount": before["dirty_bytes"] / (1 << 20), "dirty_shards_at_umount": before["dirty_shards"],
            "flushes_before_umount": before["flushes_done"], "flushes_failed": before["flushes_failed"],
            "problem": problem}


def check_backing_store(array_dir: Path, data: np.ndarray, chunk: tuple[int, int], n_shards: int,
                        files: int) -> None:
    """Only shards + zarr.json, sharded as --shards says, and zarr-python 3 reads back the data."""
    if files != n_shards + 1:
        raise SystemExit(f"backing store: {files} files, expected {n_shards} shards + zarr.json")
    doc = json.loads((array_dir / "zarr.json").read_text())
    sharding = doc["codecs"][0]
    if sharding["name"] != "sharding_indexed" or sharding["configuration"]["chunk_shape"] != list(chunk):
        raise SystemExit(f"backing zarr.json is not sharded with {chunk} inner chunks: {doc['codecs']}")
    array = zarr.open_array(zarr.storage.LocalStore(array_dir, read_only=True), mode="r")
    if array.shape != data.shape or array.dtype != data.dtype:
        raise SystemExit(f"backing array is {array.shape} {array.dtype}, expected {data.shape} {data.dtype}")
    rng = random.Random(SEED)
    windows = [(slice(0, chunk[0]), slice(0, chunk[1])),
               (slice(data.shape[0] - chunk[0], None), slice(data.shape[1] - chunk[1], None))]
    for _ in range(8):
        rows = rng.randint(1, min(3 * chunk[0], data.shape[0]))
        cols = rng.randint(1, min(3 * chunk[1], data.shape[1]))
        top, left = rng.randrange(0, data.shape[0] - rows + 1), rng.randrange(0, data.shape[1] - cols + 1)
        windows.append((slice(top, top + rows), slice(left, left + cols)))
    for window in windows:
        if not np.array_equal(array[window], data[window]):
            raise SystemExit(f"backing store differs from the data at {window}")


# -- the report --------------------------------------------------------------

def print_runs(runs: list[tuple[int, str, dict]], plain_by_repeat: dict, mib: float) -> None:
    header = (f"{'run':<14} {'total s':>8} {'write s':>8} {'flush s':>8} {'MiB/s':>6} {'ratio':>6} {'files':>6} "
              f"{'wr cpu':>7} {'dmn cpu':>8} {'HWM MiB':>8} {'RSS wr':>7} {'RSS um':>7} {'dirty@um':>9}")
    print(header)
    print("-" * len(header))
    for repeat, label, r in runs:
        ratio = r["seconds"] / plain_by_repeat[repeat]["seconds"]
        daemon = (f"{r['daemon_cpu_write'] + r['daemon_cpu_umount']:>8.1f} {r['hwm']:>8.0f} {r['rss_write']:>7.0f} "
                  f"{r['rss_umount']:>7.0f} {r['dirty_mib_at_umount']:>5.0f} MiB"
                  if "hwm" in r else f"{'-':>8} {'-':>8} {'-':>7} {'-':>7} {'-':>9}")
        print(f"{f'{repeat + 1} {label}':<14} {r['seconds']:>8.2f} {r['write']:>8.2f} {r['flush']:>8.2f} "
              f"{mib / r['seconds']:>6.0f} {ratio:>6.2f} {r['files']:>6} {r['writer_cpu']:>7.1f} {daemon}")


def print_medians(runs: list[tuple[int, str, dict]], plain_by_repeat: dict, mib: float) -> None:
    header = (f"{'variant':<14} {'runs':>4} {'total s':>8} {'write s':>8} {'flush s':>8} {'MiB/s':>7} "
              f"{'ratio':>6} {'files':>7} {'HWM MiB':>8}")
    print(header)
    print("-" * len(header))
    for label in dict.fromkeys(label for _, label, _ in runs):
        mine = [(repeat, r) for repeat, l, r in runs if l == label]
        med = lambda key: statistics.median(r[key] for _, r in mine)  # noqa: E731
        ratio = statistics.median(r["seconds"] / plain_by_repeat[repeat]["seconds"] for repeat, r in mine)
        hwm = f"{max(r['hwm'] for _, r in mine):>8.0f}" if "hwm" in mine[0][1] else f"{'-':>8}"
        print(f"{label:<14} {len(mine):>4} {med('seconds'):>8.2f} {med('write'):>8.2f} {med('flush'):>8.2f} "
              f"{mib / med('seconds'):>7.0f} {ratio:>6.2f} {mine[0][1]['files']:>7} {hwm}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="array size (default 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-kib", type=int, default=64, help="raw bytes per chunk (default 64)")
    parser.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args()

    chunk = chunk_shape(args.chunk_kib)
    shape = array_shape(args.size_mib, chunk)
    slab = chunk[0] * SHARDS
    grid = [math.ceil(s / c) for s, c in zip(shape, chunk)]
    n_chunks = math.prod(grid)
    n_shards = math.prod(math.ceil(g / SHARDS) for g in grid)
    cache = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    npy = ensure_data(cache, shape)
    data = np.load(npy, mmap_mode="r")
    mib = data.nbytes / (1 << 20)
    python = zarr2_python()

    runs_dir = cache / "write-runs"  # the plain directory and the backing store: same filesystem
    plain, store = runs_dir / "plain", runs_dir / "store"
    workdir = Path(tempfile.mkdtemp(prefix="zarrfs-write-bench-"))
    mountpoint, log_file = workdir / "mnt", workdir / "zarrfs.log"
    mountpoint.mkdir()
    print(f"{shape[0]}x{shape[1]} uint8 ({mib:.0f} MiB), chunks {chunk[0]}x{chunk[1]} ({args.chunk_kib} KiB): "
          f"{n_chunks} chunks, {n_shards} shards of {SHARDS}x{SHARDS} chunks; slabs of {slab} rows", flush=True)
    runs: list[tuple[int, str, dict]] = []
    plain_by_repeat = {}
    try:
        load_before = load_average()
        for repeat in range(args.repeats):
            plain_by_repeat[repeat] = run_plain(python, plain, npy, chunk, slab, n_chunks)
            runs.append((repeat, "plain", plain_by_repeat[repeat]))
            variants = [("zarrfs", DEFAULT_MAX_DIRTY)] + ([("zarrfs md64", SMALL_MAX_DIRTY)] if repeat == 0 else [])
            for label, max_dirty in variants:
                result = run_zarrfs(python, store, mountpoint, log_file, npy, chunk, slab, max_dirty, n_shards, data)
                runs.append((repeat, label, result))
                if result["problem"]:
                    print(f"  {label}: {result['problem']}", flush=True)
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{label} {r['seconds']:.1f} s" for rep, label, r in runs if rep == repeat), flush=True)
        load_after = load_average()

        print(f"\n{mib:.0f} MiB, {n_chunks} chunks of {args.chunk_kib} KiB -> {n_shards} shards, "
              f"{args.repeats} repeats; load average {load_before} before, {load_after} after "
              f"(other work on the machine skews results)\n")
        print_runs(runs, plain_by_repeat, mib)
        print("\nratio = total s / the same repeat's plain total s; files = files in the plain directory / the "
              "backing store\nafter the run; wr cpu = CPU s of the zarr-python 2 process (with its start); dmn cpu = "
              "the daemon's CPU s\nduring write + umount; HWM = daemon VmHWM just before `zarrfs umount`; RSS wr / "
              "RSS um = largest sampled\nVmRSS during the write / during the umount (MiB); dirty@um = dirty_bytes in "
              "the status just before umount\n")
        print_medians(runs, plain_by_repeat, mib)
        print("\nzarrfs status just before umount: " + "; ".join(
            f"{rep + 1} {label}: {r['dirty_shards_at_umount']} dirty shards, {r['flushes_before_umount']} flushes "
            f"done, {r['flushes_failed']} failed" for rep, label, r in runs if label != "plain"))
        print("daemon CPU s, write + umount: " + "; ".join(
            f"{rep + 1} {label}: {r['daemon_cpu_write']:.1f} + {r['daemon_cpu_umount']:.1f}"
            for rep, label, r in runs if label != "plain"))
        problems = [l for l in log_file.read_text().splitlines() if " WARNING: " in l or " ERROR: " in l
                    or " CRITICAL: " in l] if log_file.exists() else []
        print(f"daemon log: {len(problems)} warnings/errors" + "".join(f"\n  {l}" for l in problems[:10]))
        umount_problems = [(rep, label, r["problem"]) for rep, label, r in runs if r.get("problem")]
        for rep, label, problem in umount_problems:
            print(f"umount problem in {rep + 1} {label}: {problem}")
    finally:
        unmount(mountpoint)
        if not os.path.ismount(mountpoint):  # never walk into a mount that failed to go away
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(runs_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
