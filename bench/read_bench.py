"""Read benchmark: a zarrfs mount of a sharded array vs. the same chunks as plain files.

    .venv/bin/python bench/read_bench.py [--size-mib 1024] [--cache-dir DIR] [--repeats 3]

Setup (cached in --cache-dir, regenerated only when missing or incomplete):
  sharded-<N>MiB/arr   a uint8 2-D array written by zarr-python 3: 256x256 inner chunks
                       (64 KiB of raw bytes, no compressor) in shards of 8x8 chunks (4 MiB)
  plain-<N>MiB/arr     the same data written unsharded by zarr-python 3 with the same codecs,
                       so every chunk is a file at the key zarrfs shows (arr/c/<i>/<j>)

Each repeat runs the plain directory, then zarrfs (interleaved, so drift hits both), and
times four steps separately; the table shows the median over repeats:
  list        `find DIR -type f | wc -l` (a subprocess; includes ~ms of process start)
  stat        os.stat() of every path (the list comes from an untimed find beforehand); it
              follows the listing within the mount's 10 s attribute timeout, so for zarrfs it
              measures what a find-then-stat tool sees: attributes the listing already cached
  read cold   open+read+close of every file; for zarrfs the first read pass of a fresh mount
  read warm   the same loop again
Every zarrfs repeat uses a fresh mount (timed: `zarrfs mount` returns once it answers) whose
backing shard files were first read into the page cache, so neither side waits for the disk.
The plain directory is read once before the first repeat, so it is warm throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

CHUNK = (256, 256)  # uint8: 64 KiB per inner chunk
CHUNKS_PER_SHARD = (8, 8)  # 4 MiB shards
WIDTH = 32768  # columns: 128 chunks, 16 shards per row; --size-mib sets the rows
SEED = 20240601
STEPS = ("list", "stat", "read cold", "read warm")
ZARRFS = Path(sys.executable).with_name("zarrfs")


# -- data -------------------------------------------------------------------

def array_shape(size_mib: int) -> tuple[int, int]:
    rows = max(CHUNK[0], size_mib * (1 << 20) // WIDTH // CHUNK[0] * CHUNK[0])
    return rows, WIDTH


def ensure_dataset(cache: Path, size_mib: int) -> tuple[Path, Path]:
    """The sharded store and the plain reference, generated once per size."""
    sharded, plain = cache / f"sharded-{size_mib}MiB", cache / f"plain-{size_mib}MiB"
    marker = cache / f"dataset-{size_mib}MiB.json"  # outside the stores: the mount must not show it
    shape = array_shape(size_mib)
    description = {"shape": shape, "chunks": CHUNK, "chunks_per_shard": CHUNKS_PER_SHARD, "seed": SEED}
    if marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(description)):
        return sharded, plain
    marker.unlink(missing_ok=True)
    shutil.rmtree(sharded, ignore_errors=True)
    shutil.rmtree(plain, ignore_errors=True)
    started = time.perf_counter()
    write_arrays(sharded / "arr", plain / "arr", shape)
    os.sync()  # write back the 2x size of dirty pages now, not during the timed runs
    marker.write_text(json.dumps(description))
    print(f"generated {shape[0]}x{shape[1]} uint8 in {time.perf_counter() - started:.1f} s", flush=True)
    return sharded, plain


def write_arrays(sharded_path: Path, plain_path: Path, shape: tuple[int, int]) -> None:
    shard = (CHUNK[0] * CHUNKS_PER_SHARD[0], CHUNK[1] * CHUNKS_PER_SHARD[1])
    common = dict(shape=shape, chunks=CHUNK, dtype="uint8", compressors=None, fill_value=0, zarr_format=3)
    sharded = zarr.create_array(zarr.storage.LocalStore(sharded_path), shards=shard, **common)
    plain = zarr.create_array(zarr.storage.LocalStore(plain_path), **common)
    rng = np.random.default_rng(SEED)
    # One row of whole shards per slab (64 MiB at full width): each shard is encoded
    # once, with no read-modify-write, and memory stays bounded.
    for top in range(0, shape[0], shard[0]):
        rows = min(shard[0], shape[0] - top)
        slab = np.frombuffer(rng.bytes(rows * shape[1]), dtype=np.uint8).reshape(rows, shape[1])
        sharded[top : top + rows] = slab
        plain[top : top + rows] = slab


# -- mounting ---------------------------------------------------------------

def mount(store: Path, mountpoint: Path, log_file: Path) -> float:
    """Mount and return the wall time of `zarrfs mount` (it returns once the mount answers)."""
    started = time.perf_counter()
    subprocess.run([ZARRFS, "mount", "--log-file", log_file, store, mountpoint], check=True)
    return time.perf_counter() - started


def unmount(mountpoint: Path) -> None:
    if not os.path.ismount(mountpoint):
        return
    if subprocess.run([ZARRFS, "umount", mountpoint]).returncode:
        subprocess.run(["fusermount3", "-u", mountpoint], check=True)


def daemon_peak_rss_mib(mountpoint: Path) -> float:
    pid = json.loads((mountpoint / ".zarrfs" / "status").read_text())["pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmHWM for pid {pid}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def warm_page_cache(directory: Path) -> None:
    subprocess.run(f"find '{directory}' -type f -exec cat {{}} + >/dev/null", shell=True, check=True)


# -- the measured steps -----------------------------------------------------

def list_files(directory: Path) -> list[str]:
    return subprocess.run(["find", directory, "-type", "f"], check=True, capture_output=True,
                          text=True).stdout.splitlines()


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def count_with_find(directory: Path) -> int:
    out = subprocess.run(f"find '{directory}' -type f | wc -l", shell=True, check=True,
                         capture_output=True, text=True).stdout
    return int(out)


def stat_all(paths: list[str]) -> int:
    return sum(os.stat(p).st_size for p in paths)


def read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:  # unbuffered: one read() call, no Python-side copy
            total += len(f.read())
    return total


def run_steps(directory: Path) -> tuple[dict[str, float], int]:
    """Time the four steps on ``directory``; returns the times and the bytes read."""
    times = {}
    times["list"], count = timed(count_with_find, directory)
    paths = list_files(directory)  # untimed: the stat and read steps need the names
    assert count == len(paths), (count, len(paths))
    times["stat"], stat_bytes = timed(stat_all, paths)
    times["read cold"], cold_bytes = timed(read_all, paths)
    times["read warm"], warm_bytes = timed(read_all, paths)
    assert stat_bytes == cold_bytes == warm_bytes, (stat_bytes, cold_bytes, warm_bytes)
    return times, warm_bytes


# -- checks -----------------------------------------------------------------

def verify_mount(sharded: Path, plain: Path, mountpoint: Path, log_file: Path, samples: int = 256) -> int:
    """Same chunk keys in the mount and the plain copy, and sampled files byte-identical.

    zarr.json is left out: zarrfs writes its own unsharded metadata document.
    Returns the number of chunk files.
    """
    mount(sharded, mountpoint, log_file)
    try:
        in_mount = {os.path.relpath(p, mountpoint) for p in list_files(mountpoint)}
        in_plain = {os.path.relpath(p, plain) for p in list_files(plain)}
        if in_mount != in_plain:
            raise SystemExit(f"key sets differ: {len(in_mount ^ in_plain)} keys, e.g. "
                             f"{sorted(in_mount ^ in_plain)[:5]}")
        chunks = sorted(k for k in in_plain if not k.endswith("zarr.json"))
        for key in random.Random(SEED).sample(chunks, min(samples, len(chunks))) + [chunks[0], chunks[-1]]:
            if (mountpoint / key).read_bytes() != (plain / key).read_bytes():
                raise SystemExit(f"{key}: the mount's bytes differ from the plain copy")
        return len(chunks)
    finally:
        unmount(mountpoint)


# -- the report -------------------------------------------------------------

def print_table(plain: dict, zarrfs: dict, files: int, mib: float) -> None:
    header = f"{'step':<10} {'plain s':>9} {'zarrfs s':>9} {'ratio':>7} {'plain files/s':>14} " \
             f"{'zarrfs files/s':>15} {'plain MiB/s':>12} {'zarrfs MiB/s':>13}"
    print(header)
    print("-" * len(header))
    for step in STEPS:
        p, z = statistics.median(plain[step]), statistics.median(zarrfs[step])
        reads = step.startswith("read")
        mib_cols = f"{mib / p:>12.0f} {mib / z:>13.0f}" if reads else f"{'-':>12} {'-':>13}"
        print(f"{step:<10} {p:>9.3f} {z:>9.3f} {z / p:>7.1f} {files / p:>14.0f} {files / z:>15.0f} {mib_cols}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="array size (default 1024)")
    parser.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    sharded, plain = ensure_dataset(args.cache_dir.resolve(), args.size_mib)
    workdir = Path(tempfile.mkdtemp(prefix="zarrfs-bench-"))
    mountpoint, log_file = workdir / "mnt", workdir / "zarrfs.log"
    mountpoint.mkdir()
    try:
        chunks = verify_mount(sharded, plain, mountpoint, log_file)
        files = chunks + 1  # every find also counts arr/zarr.json
        print(f"{chunks} chunk files: the mount and the plain copy agree", flush=True)

        warm_page_cache(plain)
        load_before = load_average()
        results = {"plain": {s: [] for s in STEPS}, "zarrfs": {s: [] for s in STEPS}}
        mount_times, peak_rss = [], []
        for repeat in range(args.repeats):
            times, nbytes = run_steps(plain / "arr")
            for step, seconds in times.items():
                results["plain"][step].append(seconds)
            warm_page_cache(sharded)
            mount_times.append(mount(sharded, mountpoint, log_file))
            try:
                times, _ = run_steps(mountpoint / "arr")
                for step, seconds in times.items():
                    results["zarrfs"][step].append(seconds)
                peak_rss.append(daemon_peak_rss_mib(mountpoint))
            finally:
                unmount(mountpoint)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

        print(f"\n{args.size_mib} MiB, {files} files, median of {args.repeats} runs; load average "
              f"{load_before} before, {load_average()} after (other work on the machine skews results)\n")
        print_table(results["plain"], results["zarrfs"], files, nbytes / (1 << 20))
        print(f"\nzarrfs mount time: median {statistics.median(mount_times):.3f} s "
              f"(runs: {', '.join(f'{t:.3f}' for t in mount_times)})")
        print(f"zarrfs daemon peak RSS (VmHWM): max {max(peak_rss):.1f} MiB "
              f"(runs: {', '.join(f'{r:.1f}' for r in peak_rss)})")
        print("all runs (s): " + json.dumps({t: {s: [round(x, 4) for x in v] for s, v in r.items()}
                                              for t, r in results.items()}))
        problems = [l for l in log_file.read_text().splitlines() if " WARNING: " in l or " ERROR: " in l]
        print(f"daemon log: {len(problems)} warnings/errors" + "".join(f"\n  {l}" for l in problems[:10]))
    finally:
        unmount(mountpoint)
        if not os.path.ismount(mountpoint):  # never walk into a mount that failed to go away
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
