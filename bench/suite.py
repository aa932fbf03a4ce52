"""The zarrfs benchmark suite (issue 6): one command, `make bench`, or

    .venv/bin/python bench/suite.py [--quick] [--only read|write|scale] [--repeats N] [--datasets d1,d2,...]

Compares zarrfs with the same chunk files served by a plain directory, squashfuse_ll, fuse-zip and
ratarmount, and zarr-python 2 reading through the zarrfs v2 view with zarr-python 3 reading the
sharded original. docs/performance.md describes every step; the table printed at the end gives the
medians, the ratios and whether each target of the issue was met. Raw numbers go to
bench/results/suite-<time>.json.

Data is generated on the first run and cached in bench/.cache/ (bench/datasets.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from zarrfs.store.local import zarrfs_own

from common import (RESULTS, REPO, KeepWarm, cpu_seconds, disk_read_mib, load_average, log, peak_rss_mib,
                    remove_tree, rss_mib, run, timed, warm_files, zarrfs_status)
from datasets import D1, D2, READ_DATASETS, SCALE, SMALL, SEED, Dataset, describe, ensure_dataset, \
    ensure_scale_store, random_source
from peers import READ_SYSTEMS, PyfuseFloor, Zarrfs, ratarmount_command, unmount_everything, unmount_zarrfs
import report
import zarr_io

SAMPLE_FILES = 64  # random chunk files compared byte for byte per system, plus the first and last
WRITE_DATASETS = (D1, D2)
WRITE_SLAB_ROWS = 2048  # the zarr-python 2 writer assigns 64 MiB slabs
SAMPLE_SECONDS = 0.2

# Which systems read which dataset. D1 gets every peer. A D2 pass costs 16 times the requests of
# a D1 pass, so D2 leaves out fuse-zip (no target refers to it), and D1-zstd, which is there for
# the compressed chunks, compares only with the plain directory and squashfuse_ll. That saves about
# 5 minutes of a full run (55 minutes as it is). --all-peers runs every peer on every dataset.
SKIPPED_PEERS = {"d2": {"fuse-zip"}, "d1-zstd": {"fuse-zip", "ratarmount"}}


def systems_for(dataset: Dataset, all_peers: bool) -> list:
    skipped = set() if all_peers else SKIPPED_PEERS.get(dataset.name, set())
    return [s for s in READ_SYSTEMS if s.name not in skipped]


# -- the read benchmark --------------------------------------------------------

class ReadBench:
    """All read steps of one dataset, interleaved across systems, a fresh mount per session."""

    def __init__(self, dataset: Dataset, systems, workdir: Path, py_read: bool):
        self.dataset, self.systems, self.workdir, self.py_read = dataset, systems, workdir, py_read
        self.rel_paths = sorted(str(p.relative_to(dataset.plain)) for p in dataset.plain.rglob("*") if p.is_file())
        self.chunk_paths = [p for p in self.rel_paths if not p.endswith("zarr.json")]
        self.chunk_bytes = sum((dataset.plain / p).stat().st_size for p in self.chunk_paths)
        # One sorted list, the same for every system, so every system does the same work in the
        # same order (each tool lists its entries in its own order).
        self.list_file = workdir / f"paths-{dataset.name}.nul"
        self.list_file.write_bytes(b"".join(p.encode() + b"\0" for p in self.rel_paths))
        self.results = {s.name: {"mount": [], "list": [], "stat": [], "cat cold": [], "cat warm": [],
                                 "py read": [], "peak_rss_mib": [], "disk_mib": []} for s in systems}

    def mountpoint(self, system) -> Path:
        path = self.workdir / f"mnt-{system.name}"
        path.mkdir(exist_ok=True)
        return path

    def log_file(self, system) -> Path:
        return self.workdir / f"{system.name}.log"

    def mount(self, system):
        return system.mount(self.dataset, self.mountpoint(system), self.log_file(system))

    # checks before timing

    def verify(self, system) -> None:
        """Same file paths as the plain directory, and sampled files byte-identical, so a broken
        mount cannot produce a fast wrong number. zarrfs's zarr.json is its own (unsharded)
        document: it is checked for the inner chunk shape instead of compared."""
        with self.mount(system) as m:
            listed = find_files(m.root)
            if sorted(os.path.relpath(p, m.root) for p in listed) != self.rel_paths:
                missing = set(self.rel_paths) - {os.path.relpath(p, m.root) for p in listed}
                raise SystemExit(f"{self.dataset.name} {system.name}: {len(listed)} files listed, expected "
                                 f"{len(self.rel_paths)}; missing e.g. {sorted(missing)[:3]}")
            sample = random.Random(SEED).sample(self.chunk_paths, min(SAMPLE_FILES, len(self.chunk_paths)))
            for rel in sample + [self.chunk_paths[0], self.chunk_paths[-1]]:
                if (m.root / rel).read_bytes() != (self.dataset.plain / rel).read_bytes():
                    raise SystemExit(f"{self.dataset.name} {system.name}: {rel} differs from the plain copy")
            metadata = (m.root / "arr" / "zarr.json").read_bytes()
            if system.is_zarrfs:
                doc = json.loads(metadata)
                shape = doc["chunk_grid"]["configuration"]["chunk_shape"]
                if shape != list(self.dataset.chunk) or any(c["name"] == "sharding_indexed" for c in doc["codecs"]):
                    raise SystemExit(f"{self.dataset.name} {system.name}: zarr.json is not the unsharded view: {doc}")
            elif metadata != (self.dataset.plain / "arr" / "zarr.json").read_bytes():
                raise SystemExit(f"{self.dataset.name} {system.name}: zarr.json differs from the plain copy")

    # the timed sessions

    def step(self, system, step: str, function, *args):
        """Time one step, with the backing files read into the page cache just before it and
        kept there during it (KeepWarm says why). Also records the MiB read from disk during
        the step (by any process), which should be about 0."""
        record = self.results[system.name]
        warm_files(system.backing(self.dataset))
        disk_before = disk_read_mib()
        with KeepWarm(system.backing(self.dataset)):
            seconds, result = timed(function, *args)
        record[step].append(seconds)
        record["disk_mib"].append(disk_read_mib() - disk_before)
        return result

    def session_walk(self, system) -> None:
        """A fresh mount: list, stat every file, then two cat passes (the first on a cold daemon)."""
        record = self.results[system.name]
        warm_files(system.backing(self.dataset))
        with self.mount(system) as m:
            record["mount"].append(m.seconds)
            listed = self.step(system, "list", find_files, m.root)
            check(len(listed) == len(self.rel_paths), f"{system.name}: find listed {len(listed)} files")
            paths = [f"{m.root}/{p}" for p in self.rel_paths]
            disk_before = disk_read_mib()  # no re-warming here: stat follows the listing at once
            record["stat"].append(timed(stat_all, paths)[0])
            record["disk_mib"].append(disk_read_mib() - disk_before)
            self.step(system, "cat cold", cat_all, m.root, self.list_file)
            self.step(system, "cat warm", cat_all, m.root, self.list_file)
            record["peak_rss_mib"].append(m.peak_rss_mib())

    def session_py_read(self, system) -> None:
        """A fresh mount, no listing: Python opens and reads every file by its known path, as a
        Zarr reader does (so every name is looked up first)."""
        record = self.results[system.name]
        warm_files(system.backing(self.dataset))
        with self.mount(system) as m:
            record["mount"].append(m.seconds)
            paths = [f"{m.root}/{p}" for p in self.rel_paths]
            expected = self.chunk_bytes + os.stat(f"{m.root}/arr/zarr.json").st_size
            total = self.step(system, "py read", py_read_all, paths)
            check(total == expected, f"{system.name}: py read got {total} bytes, expected {expected}")
            record["peak_rss_mib"].append(m.peak_rss_mib())

    def run(self, repeats: int) -> dict:
        for system in self.systems:
            self.verify(system)
        log(f"{self.dataset.name}: every system lists the same {len(self.rel_paths)} files, samples identical")
        warm_files([self.dataset.plain])  # the plain directory stays warm (dentries and pages) throughout
        for repeat in range(repeats):
            for system in self.systems:
                self.session_walk(system)
                if self.py_read:
                    self.session_py_read(system)
                r = self.results[system.name]
                log(f"{self.dataset.name} repeat {repeat + 1}/{repeats} {system.name}: cat cold "
                    f"{r['cat cold'][-1]:.2f} s, warm {r['cat warm'][-1]:.2f} s"
                    + (f", py read {r['py read'][-1]:.2f} s" if self.py_read else ""))
        return {"files": len(self.rel_paths), "chunk_bytes": self.chunk_bytes, "systems": self.results}


def find_files(root: Path) -> list[str]:
    """`find ROOT -type f` (the list step times this whole call, process start included)."""
    out = subprocess.run(["find", str(root), "-type", "f"], capture_output=True, check=True).stdout
    return out.decode().splitlines()


def stat_all(paths: list[str]) -> None:
    for p in paths:
        os.stat(p)


def cat_all(root: Path, list_file: Path) -> None:
    """`xargs -0 cat <LIST >/dev/null` in ROOT: every file read by cat, few processes."""
    with open(list_file, "rb") as names:
        result = subprocess.run(["xargs", "-0", "cat"], stdin=names, cwd=root, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    check(result.returncode == 0 and not result.stderr, f"cat in {root} failed: {result.stderr[-500:]!r}")


def py_read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(f.read())
    return total


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(message)


# -- zarr-python 2 through the v2 view vs zarr-python 3 on the sharded original ----

def v2_files(dataset: Dataset, workdir: Path) -> Path:
    """A plain directory holding the array as zarr-python 2 sees it through the v2 view
    (``arr/.zarray`` and v2 chunk keys), copied out of a mount once and kept in bench/.cache:
    what the pyfuse3 floor serves to zarr-python 2."""
    copy = dataset.root / "v2-files"
    if (copy / "arr" / ".zarray").exists():
        return copy
    remove_tree(copy)
    copy.mkdir()
    mountpoint = workdir / "mnt-zarrfs-v2-copy"
    mountpoint.mkdir(exist_ok=True)
    log(f"{dataset.name}: copying the v2 view into {copy} (once)")
    with Zarrfs("zarrfs-v2", "zarrfs", ["--view", "v2", "--read-only"]).mount(
            dataset, mountpoint, workdir / "zarrfs-v2-copy.log") as m:
        run(["cp", "-r", m.root / "arr", copy / "arr.partial"])
    os.rename(copy / "arr.partial", copy / "arr")
    return copy


def bench_zarr_reads(dataset: Dataset, repeats: int, workdir: Path) -> dict:
    v2 = Zarrfs("zarrfs-v2", "zarrfs", ["--view", "v2"])
    mountpoint, log_file = workdir / "mnt-zarrfs-v2", workdir / "zarrfs-v2.log"
    mountpoint.mkdir(exist_ok=True)
    copy = v2_files(dataset, workdir)
    floor = PyfuseFloor("pyfuse3-floor", "peer", served=lambda _: copy)
    floor_mountpoint = workdir / "mnt-floor-v2"
    floor_mountpoint.mkdir(exist_ok=True)
    results = {"zarr3 native": [], "zarr2 v2 view": [], "zarr2 floor": [], "peak_rss_mib": [], "mount": [],
               "disk_mib": []}
    for repeat in range(repeats):
        warm_files([dataset.sharded])
        disk_before = disk_read_mib()
        with KeepWarm([dataset.sharded]):
            native = zarr_io.read_array(dataset.sharded / "arr", zarr2=False)
        results["zarr3 native"].append(native["seconds"])
        with v2.mount(dataset, mountpoint, log_file) as m:
            results["mount"].append(m.seconds)
            warm_files([dataset.sharded])
            with KeepWarm([dataset.sharded]):
                legacy = zarr_io.read_array(m.root / "arr", zarr2=True)
            results["peak_rss_mib"].append(m.peak_rss_mib())
        results["disk_mib"].append(disk_read_mib() - disk_before)
        results["zarr2 v2 view"].append(legacy["seconds"])
        check(legacy["blake2b"] == native["blake2b"] and legacy["shape"] == list(dataset.shape),
              f"{dataset.name}: zarr-python 2 through the v2 view read other values than zarr-python 3")
        warm_files([copy])  # (the same chunk bytes, as plain files served by the floor)
        with floor.mount(dataset, floor_mountpoint, workdir / "floor-v2.log") as m, KeepWarm([copy]):
            on_floor = zarr_io.read_array(m.root / "arr", zarr2=True)
        results["zarr2 floor"].append(on_floor["seconds"])
        check(on_floor["blake2b"] == native["blake2b"], f"{dataset.name}: the floor's v2 files read other values")
        log(f"{dataset.name} zarr repeat {repeat + 1}/{repeats}: zarr3 native {native['seconds']:.2f} s, "
            f"zarr2 via v2 view {legacy['seconds']:.2f} s, zarr2 via the pyfuse3 floor {on_floor['seconds']:.2f} s")
    return results


# -- writes: zarr-python 2 through the v2 view vs into a plain directory -------------

class WriteSampler(threading.Thread):
    """The daemon's VmRSS, CPU and (while the mount answers) dirty bytes every SAMPLE_SECONDS."""

    def __init__(self, pid: int, mountpoint: Path):
        super().__init__(daemon=True)
        self.pid, self.mountpoint = pid, mountpoint
        self.samples: list[tuple[float, float, float, int | None]] = []  # (time, RSS MiB, CPU s, dirty bytes)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rss, cpu = rss_mib(self.pid), cpu_seconds(self.pid)
            if rss is None or cpu is None:
                return
            try:
                dirty = zarrfs_status(self.mountpoint)["dirty_bytes"]
            except (OSError, ValueError, KeyError):
                dirty = None  # unmounting
            self.samples.append((time.monotonic(), rss, cpu, dirty))
            self.done.wait(SAMPLE_SECONDS)

    def max_rss(self, start: float, end: float) -> float | None:
        values = [s[1] for s in self.samples if start <= s[0] <= end]
        return max(values) if values else None

    def max_dirty_mib(self) -> float | None:
        values = [s[3] for s in self.samples if s[3] is not None]
        return max(values) / (1 << 20) if values else None

    def cpu(self, start: float, end: float) -> float | None:
        values = [s[2] for s in self.samples if start - SAMPLE_SECONDS <= s[0] <= end]
        return values[-1] - values[0] if values else None


def fresh_directory(directory: Path) -> None:
    remove_tree(directory)
    directory.mkdir(parents=True)
    subprocess.run(["sync"], check=True)  # no writeback of the previous run during this one


def count_files(directory: Path) -> int:
    """Files below ``directory``, not counting zarrfs's own (an array's lock file)."""
    return sum(1 for _, _, files in os.walk(directory) for name in files if not zarrfs_own(name))


def write_plain(dataset: Dataset, npy: Path, plain: Path) -> dict:
    fresh_directory(plain)
    warm_files([npy])
    with KeepWarm([npy]):
        w = zarr_io.write_array(plain / "data.zarr", npy, dataset.chunk, WRITE_SLAB_ROWS)
    subprocess.run(["sync", "-f", str(plain)], check=True)  # the plain side's durability
    done = time.monotonic()
    files = count_files(plain)
    check(files == dataset.n_chunks + 1, f"plain write: {files} files, expected {dataset.n_chunks} chunks + .zarray")
    return {"seconds": done - w["start"], "write": w["end"] - w["start"], "flush": done - w["end"],
            "files": files, "writer_cpu": w["writer_cpu"]}


def write_zarrfs(dataset: Dataset, npy: Path, store: Path, workdir: Path, expected_shards: int,
                 data: np.ndarray) -> dict:
    fresh_directory(store)
    warm_files([npy])
    mountpoint, log_file = workdir / "mnt-zarrfs-write", workdir / "zarrfs-write.log"
    mountpoint.mkdir(exist_ok=True)
    m = Zarrfs("zarrfs-write", "zarrfs", ["--view", "v2"]).mount(dataset, mountpoint, log_file, store=store)
    sampler = WriteSampler(m.pid, mountpoint)
    sampler.start()
    problem = None
    try:
        with KeepWarm([npy]):
            w = zarr_io.write_array(mountpoint / "data.zarr", npy, dataset.chunk, WRITE_SLAB_ROWS)
        hwm_before_umount = peak_rss_mib(m.pid)
        umount_started = time.monotonic()
        problem = unmount_zarrfs(mountpoint)  # returns once every shard is durable and the daemon gone
        done = time.monotonic()
    finally:
        unmount_zarrfs(mountpoint)
        sampler.done.set()
        sampler.join()
    files = count_files(store)
    check(problem is None, f"zarrfs write: {problem}")
    check(files == expected_shards + 1, f"zarrfs write: {files} backing files, expected {expected_shards} shards "
                                        f"+ zarr.json (and zarrfs's own lock files)")
    check_written(store / "data.zarr", data, dataset.chunk)
    return {"seconds": done - w["start"], "write": w["end"] - w["start"], "flush": done - w["end"],
            "files": files, "writer_cpu": w["writer_cpu"], "hwm_before_umount_mib": hwm_before_umount,
            "max_rss_umount_mib": sampler.max_rss(umount_started, done),
            "peak_rss_mib": max(v for v in (hwm_before_umount, sampler.max_rss(umount_started, done)) if v),
            "max_dirty_mib": sampler.max_dirty_mib(), "daemon_cpu": sampler.cpu(w["start"], done)}


def check_written(array_dir: Path, data: np.ndarray, chunk: tuple[int, int]) -> None:
    """The backing store is sharded, and zarr-python 3 reading it directly (no mount) returns the
    data: eight random windows plus the first and the last chunk."""
    import zarr

    doc = json.loads((array_dir / "zarr.json").read_text())
    check(doc["codecs"][0]["name"] == "sharding_indexed", f"backing zarr.json is not sharded: {doc['codecs']}")
    array = zarr.open_array(zarr.storage.LocalStore(array_dir, read_only=True), mode="r")
    check(array.shape == data.shape, f"backing array is {array.shape}, expected {data.shape}")
    rng = random.Random(SEED)
    windows = [(slice(0, chunk[0]), slice(0, chunk[1])),
               (slice(data.shape[0] - chunk[0], None), slice(data.shape[1] - chunk[1], None))]
    for _ in range(8):
        rows, cols = rng.randint(1, 3 * chunk[0]), rng.randint(1, 3 * chunk[1])
        top, left = rng.randrange(data.shape[0] - rows + 1), rng.randrange(data.shape[1] - cols + 1)
        windows.append((slice(top, top + rows), slice(left, left + cols)))
    for window in windows:
        check(np.array_equal(array[window], data[window]), f"backing store differs from the data at {window}")


def write_floor(dataset: Dataset, npy: Path, workdir: Path) -> dict:
    """zarr-python 2 writing the array into the pyfuse3 floor, which keeps it in memory: what
    pyfuse3 and the kernel allow for this writer's requests (temporary file, write, rename)."""
    served = workdir / "floor-write"
    remove_tree(served)
    (served / "arr").mkdir(parents=True)  # (a peer is ready once arr/ answers)
    mountpoint = workdir / "mnt-floor-write"
    mountpoint.mkdir(exist_ok=True)
    warm_files([npy])
    floor = PyfuseFloor("pyfuse3-floor", "peer", served=lambda _: served)
    with floor.mount(dataset, mountpoint, workdir / "floor-write.log") as m, KeepWarm([npy]):
        w = zarr_io.write_array(m.root / "data.zarr", npy, dataset.chunk, WRITE_SLAB_ROWS)
        files = count_files(m.root / "data.zarr")
    check(files == dataset.n_chunks + 1, f"floor write: {files} files, expected {dataset.n_chunks} chunks + .zarray")
    return {"seconds": w["end"] - w["start"], "files": files, "writer_cpu": w["writer_cpu"]}


def bench_writes(dataset: Dataset, repeats: int, workdir: Path) -> dict:
    npy = random_source()
    data = np.load(npy, mmap_mode="r")
    # zarrfs packs arrays created through the mount into shards of --shards (default 8) chunks per axis.
    grid = [s // c for s, c in zip(dataset.shape, dataset.chunk)]
    expected_shards = (-(-grid[0] // 8)) * (-(-grid[1] // 8))
    runs_dir = dataset.root / "write-runs"  # beside the backing stores: the same filesystem
    results = {"plain": [], "zarrfs": [], "floor": [], "expected_shards": expected_shards}
    try:
        for repeat in range(repeats):
            results["plain"].append(write_plain(dataset, npy, runs_dir / "plain"))
            results["zarrfs"].append(write_zarrfs(dataset, npy, runs_dir / "store", workdir, expected_shards, data))
            results["floor"].append(write_floor(dataset, npy, workdir))
            log(f"{dataset.name} write repeat {repeat + 1}/{repeats}: plain {results['plain'][-1]['seconds']:.1f} s, "
                f"zarrfs {results['zarrfs'][-1]['seconds']:.1f} s, pyfuse3 floor {results['floor'][-1]['seconds']:.1f} s")
    finally:
        remove_tree(runs_dir)
    return results


# -- scale: mount time and memory for a million chunks ----------------------------

def bench_scale(repeats: int, workdir: Path) -> dict:
    system = Zarrfs("zarrfs", "zarrfs")
    results = {}
    for dataset in (SMALL, SCALE):
        store = ensure_scale_store(dataset)
        mountpoint, log_file = workdir / f"mnt-{dataset.name}", workdir / f"{dataset.name}.log"
        mountpoint.mkdir(exist_ok=True)
        record = results[dataset.name] = {"chunks": dataset.n_chunks, "mount": [], "find": [],
                                          "rss_after_find_mib": [], "peak_rss_mib": []}
        for repeat in range(repeats):
            warm_files([store])
            with system.mount(dataset, mountpoint, log_file, store=store) as m, KeepWarm([store]):
                record["mount"].append(m.seconds)
                seconds, listed = timed(find_files, m.root)
                check(len(listed) == dataset.n_chunks + 1, f"{dataset.name}: find listed {len(listed)} files")
                record["find"].append(seconds)
                record["rss_after_find_mib"].append(rss_mib(m.pid))
                record["peak_rss_mib"].append(m.peak_rss_mib())
            log(f"{dataset.name} repeat {repeat + 1}/{repeats}: mount {record['mount'][-1]:.2f} s, find "
                f"{seconds:.1f} s, RSS {record['rss_after_find_mib'][-1]:.0f} MiB")
    return results


# -- the run ----------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, D1 only, no scale test (for development)")
    parser.add_argument("--only", choices=("read", "write", "scale"), help="run one part of the suite")
    parser.add_argument("--repeats", type=int, help="repeats of every timed step (default 3; --quick: 1)")
    parser.add_argument("--datasets", help=f"comma-separated subset of {','.join(READ_DATASETS)}")
    parser.add_argument("--all-peers", action="store_true",
                        help="every peer on every dataset (by default D2 skips fuse-zip, D1-zstd fuse-zip and ratarmount)")
    parser.add_argument("--py-read-d2", action="store_true",
                        help="also run the Python open/read loop on D2 (adds about 5 minutes per repeat)")
    parser.add_argument("--d2-write-repeats", type=int, default=1,
                        help="repeats of the D2 write (default 1: about 6 minutes each)")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    names = args.datasets.split(",") if args.datasets else (["d1"] if args.quick else list(READ_DATASETS))
    unknown = set(names) - set(READ_DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}")
    args.datasets = [READ_DATASETS[n] for n in names]
    args.parts = [args.only] if args.only else (["read", "write"] if args.quick else ["read", "write", "scale"])
    return args


def environment() -> dict:
    def version(command):
        try:
            out = subprocess.run(command, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "zarrfs"], capture_output=True,
                           text=True).stdout.strip()
    return {"commit": commit, "zarrfs_modified": bool(dirty), "nproc": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "zarr3": zarr_io.zarr3_version(), "zarr2": zarr_io.ZARR2_VERSION,
            "squashfuse": version(["dpkg-query", "-W", "-f", "${Version}", "squashfuse"]),
            "fuse-zip": version(["dpkg-query", "-W", "-f", "${Version}", "fuse-zip"]),
            "ratarmount": version([str(ratarmount_command()), "--version"]),
            "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / (1 << 30), 1)}


def prepare(args) -> None:
    """Everything the timed part needs, so that it never waits for a download or a generator."""
    ratarmount_command()
    zarr_io.zarr2_python()
    if "read" in args.parts:
        for dataset in args.datasets:
            ensure_dataset(dataset)
    if "write" in args.parts:
        random_source()
    if "scale" in args.parts:
        ensure_scale_store(SMALL)
        ensure_scale_store(SCALE)


def save(results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"suite-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    return path


def stop_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every `finally` unmounts."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    started = time.monotonic()
    prepare(args)
    results = {"args": {"parts": args.parts, "repeats": args.repeats, "datasets": [d.name for d in args.datasets],
                        "quick": args.quick, "all_peers": args.all_peers, "d2_write_repeats": args.d2_write_repeats},
               "environment": environment(), "datasets": {d.name: describe(d) for d in args.datasets},
               "load_before": load_average(), "read": {}, "zarr": {}, "write": {}, "scale": {}}
    log(f"prepared in {time.monotonic() - started:.0f} s; load average {results['load_before']}")
    workdir = Path(tempfile.mkdtemp(prefix="zarrfs-suite-"))
    complete = False
    try:
        if "read" in args.parts:
            for dataset in args.datasets:
                py_read = dataset is not D2 or args.py_read_d2
                bench = ReadBench(dataset, systems_for(dataset, args.all_peers), workdir, py_read)
                results["read"][dataset.name] = bench.run(args.repeats)
                results["zarr"][dataset.name] = bench_zarr_reads(dataset, args.repeats, workdir)
        if "write" in args.parts:
            for dataset in (d for d in WRITE_DATASETS if d in args.datasets):
                repeats = min(args.repeats, args.d2_write_repeats) if dataset is D2 else args.repeats
                results["write"][dataset.name] = bench_writes(dataset, repeats, workdir)
        if "scale" in args.parts:
            results["scale"] = bench_scale(args.repeats, workdir)
        complete = True
    finally:
        unmount_everything()
        remove_tree(workdir)
        results["load_after"] = load_average()
        results["seconds"] = time.monotonic() - started
        results["complete"] = complete
        path = save(results)
        log(f"raw results: {path.relative_to(REPO)}")
    print(report.render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
