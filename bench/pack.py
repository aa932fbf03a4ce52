"""The pack benchmark (issue 13): `zarrfs pack` against `cp -r`, with the table for docs/performance.md.

    .venv/bin/python bench/pack.py [--quick] [--datasets d1,d2] [--no-mount] [--million] [--repeats N]

For each dataset (D1: 16,384 chunk files of 64 KiB; D2: 262,144 of 4 KiB; --quick: a quarter
of each, the same chunk sizes) a per-chunk Zarr v3 store is written once into
bench/.cache/pack-*/plain (uint8, codecs [bytes], the key layout zarr-python writes), then
timed on the same disk:

  cp -r          a copy of the tree (the floor: pack reads the same bytes and writes them once)
  cp -r + sync   the same, then `sync -f`: durable, as pack's shards are (each is fsynced)
  pack -j 1/2    `zarrfs pack --shards N` (N chunks per shard along each axis: 4 MiB shards)
  pack dask      `zarrfs pack --dask` on a LocalCluster of 2 worker processes started here
  cp -r mount    `cp -r` into a `zarrfs mount` of an empty store, then `zarrfs umount` (flushes)

Every run reads the source from the page cache (it was just written or read); the
destination is removed and the filesystem synced between runs; each step is run --repeats
times (3), interleaved (round r runs each step once), and the median is reported with every
run's seconds and the 1-minute load average before each (cp -r into a mount once, in round 1).
CPU seconds are user + system of the command and the children it waited for (GNU time:
the pool's processes count, Dask's workers and the kernel's writeback do not). Peak RSS is the largest process's (GNU time's %M;
for Dask the client, workers not counted). --million adds a 1,000,000-chunk store (16-byte
chunks, 100 shards) to show that pack's memory follows the shards in flight, not the store.
Raw numbers go to bench/results/pack-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import CACHE, RESULTS, ZARRFS, force_unmount, load_average, log, remove_tree, run, timed
from datasets import D1, D2


@dataclass(frozen=True)
class PackDataset:
    name: str
    shape: tuple[int, int]
    chunk: tuple[int, int]
    shards: int  # chunks per shard along each axis

    @property
    def n_chunks(self) -> int:
        return math.prod(s // c for s, c in zip(self.shape, self.chunk))

    @property
    def root(self) -> Path:
        return CACHE / f"pack-{self.name}"

    @property
    def plain(self) -> Path:
        return self.root / "plain"


def datasets(quick: bool) -> dict[str, PackDataset]:
    scale = 2 if quick else 1  # a quarter of the chunks
    found = {}
    for d in (D1, D2):
        shape = tuple(s // scale for s in d.shape)
        name = d.name + ("-quick" if quick else "")
        found[d.name] = PackDataset(name, shape, d.chunk, d.shard[0] // d.chunk[0])
    found["million"] = PackDataset("million", (4000, 4000), (4, 4), 100)
    return found


# -- the source store ------------------------------------------------------------------


def ensure_plain(dataset: PackDataset) -> None:
    """Write the per-chunk store once (random bytes, under a temporary name, renamed when whole)."""
    if dataset.plain.exists():
        return
    log(f"{dataset.name}: writing {dataset.n_chunks:,} chunk files")
    dataset.root.mkdir(parents=True, exist_ok=True)
    partial = dataset.root / "plain.partial"
    remove_tree(partial)
    array = partial / "arr"
    array.mkdir(parents=True)
    (partial / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (array / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": list(dataset.shape), "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(dataset.chunk)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}], "attributes": {},
    }))
    rows, cols = (s // c for s, c in zip(dataset.shape, dataset.chunk))
    nbytes = math.prod(dataset.chunk)
    random = open("/dev/urandom", "rb")
    pool = random.read(nbytes * 64)  # chunk contents: slices of random bytes, distinct by offset
    for i in range(rows):
        row = array / "c" / str(i)
        row.mkdir(parents=True)
        for j in range(cols):
            start = (i * cols + j) % 63 * nbytes // 64
            (row / str(j)).write_bytes(pool[start:start + nbytes])
    random.close()
    partial.rename(dataset.plain)


# -- the runs -----------------------------------------------------------------------------


def time_command(args: list, **kwargs) -> tuple[float, float, str, float]:
    """(seconds, peak RSS MiB of the largest process, stdout, CPU seconds: user + system of
    the command and the children it waited for) of one command under GNU time."""
    with tempfile.NamedTemporaryFile("r") as report:
        seconds, result = timed(run, ["/usr/bin/time", "-f", "%M %U %S", "-o", report.name, *args],
                                capture_output=True, text=True, **kwargs)
        rss, user, system = report.read().split()[-3:]
        return seconds, int(rss) / 1024, result.stdout, float(user) + float(system)


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def bench_cp(dataset: PackDataset, out: Path, durable: bool = False) -> dict:
    """cp -r; ``durable``: then sync the filesystem, as pack makes every shard durable."""
    remove_tree(out)
    sync = ' && sync -f "$2"' if durable else ""
    seconds, rss, _, cpu = time_command(["sh", "-c", f'cp -r "$1" "$2"{sync}', "sh", dataset.plain, out])
    files = count_files(out)
    remove_tree(out)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": rss, "files_after": files}


def bench_pack(dataset: PackDataset, out: Path, *options) -> dict:
    remove_tree(out)
    seconds, rss, stdout, cpu = time_command([ZARRFS, "pack", dataset.plain, out, "--shards", dataset.shards,
                                              *options])
    assert "; complete" in stdout, stdout
    files = count_files(out)
    remove_tree(out)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": rss, "files_after": files,
            "summary": stdout.strip()}


def bench_pack_dask(dataset: PackDataset, out: Path) -> dict:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        return bench_pack(dataset, out, "--dask", cluster.scheduler_address)


def bench_cp_into_mount(dataset: PackDataset, work: Path) -> dict:
    store, mountpoint = work / "mount-store", work / "mnt"
    remove_tree(store)
    store.mkdir()
    mountpoint.mkdir(exist_ok=True)
    started = time.perf_counter()
    run([ZARRFS, "mount", store, mountpoint, "--shards", dataset.shards, "--log-file", work / "mount.log"])
    try:
        copy = run(["cp", "-r", dataset.plain / "arr", mountpoint / "arr"], check=False, capture_output=True,
                   text=True)
        run([ZARRFS, "umount", mountpoint])
    finally:
        force_unmount(mountpoint)
    seconds = time.perf_counter() - started
    files = count_files(store)
    remove_tree(store)
    # cp's complaints are kept, not fatal: the mount's answer is a result too
    return {"seconds": seconds, "files_after": files, "cp_errors": copy.stderr.count("\n")}


def one_run(step) -> dict:
    """One run after a sync (no run pays for the writeback of the one before), with the
    1-minute load average just before it."""
    os.sync()
    load = float(load_average().split()[0])
    return {**step(), "load": load}


def median_of(runs: list[dict]) -> dict:
    """The run with the median time, and every run's seconds and load average."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [r["seconds"] for r in runs],
            "all_loads": [r["load"] for r in runs]}


def bench_dataset(dataset: PackDataset, work: Path, mount: bool, full: bool, repeats: int) -> dict:
    ensure_plain(dataset)
    out = work / "out"
    result = {"dataset": dataset.name, "chunks": dataset.n_chunks, "chunk_bytes": math.prod(dataset.chunk),
              "files_before": count_files(dataset.plain)}
    steps = {"pack -j 2": lambda: bench_pack(dataset, out, "--jobs", "2")}
    if full:
        steps = {"cp -r": lambda: bench_cp(dataset, out),
                 "cp -r + sync": lambda: bench_cp(dataset, out, durable=True),
                 "pack -j 1": lambda: bench_pack(dataset, out, "--jobs", "1"),
                 **steps,
                 "pack dask (2 workers)": lambda: bench_pack_dask(dataset, out)}
    if mount:
        steps["cp -r into mount"] = lambda: bench_cp_into_mount(dataset, work)
    # Interleaved: round r runs every step once, so that a burst of load from elsewhere hits
    # all steps alike, not all repeats of one step.
    runs: dict[str, list[dict]] = {name: [] for name in steps}
    for round_ in range(repeats):
        for name, step in steps.items():
            if name == "cp -r into mount" and round_:  # once: minutes on D2
                continue
            runs[name].append(one_run(step))
            log(f"{dataset.name}: {name}: {runs[name][-1]['seconds']:.2f} s (load {runs[name][-1]['load']:.1f})")
    for name in steps:
        result[name] = median_of(runs[name])
    return result


def table(results: list[dict]) -> str:
    lines = ["| dataset | step | seconds (all runs) | load | CPU s | MiB/s | vs cp -r | vs into mount | "
             "files before → after | peak RSS MiB |",
             "|---|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in results:
        total = r["chunks"] * r["chunk_bytes"] / 2**20
        cp = r["cp -r"]["seconds"] if "cp -r" in r else None
        mount = r["cp -r into mount"]["seconds"] if "cp -r into mount" in r else None
        for step in (k for k in r if isinstance(r[k], dict)):
            s = r[step]
            rss = f"{s['peak_rss_mib']:.0f}" if "peak_rss_mib" in s else "—"
            ratio = f"{s['seconds'] / cp:.2f} ×" if cp else "—"
            faster = f"{mount / s['seconds']:.1f} × faster" if mount and step.startswith("pack") else "—"
            errors = f" ({s['cp_errors']} cp errors)" if s.get("cp_errors") else ""
            every = ", ".join(f"{x:.2f}" for x in s.get("all_seconds", [s["seconds"]]))
            loads = "–".join(f"{x:.1f}" for x in (min(s["all_loads"]), max(s["all_loads"]))) if "all_loads" in s else "—"
            cpu = f"{s['cpu_seconds']:.2f}" if "cpu_seconds" in s else "—"
            lines.append(f"| {r['dataset']} | {step}{errors} | {s['seconds']:.2f} ({every}) | {loads} | {cpu} | "
                         f"{total / s['seconds']:.0f} | {ratio} | {faster} | {r['files_before']:,} → "
                         f"{s['files_after']:,} | {rss} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of D1 and D2")
    parser.add_argument("--datasets", default="d1,d2", help="comma-separated: d1, d2")
    parser.add_argument("--no-mount", action="store_true", help="leave out cp -r into a mount (slow on D2)")
    parser.add_argument("--million", action="store_true", help="also the 1,000,000-chunk store (pack only)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per step; the median is reported (default 3)")
    args = parser.parse_args()
    known = datasets(args.quick)
    chosen = [known[name] for name in args.datasets.split(",")]
    if args.million:  # last: its memory, not its speed (pack -j 2 only)
        chosen.append(known["million"])
    results = []
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"pack-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with tempfile.TemporaryDirectory(dir=CACHE.parent, prefix=".pack-work-") as work:
        for dataset in chosen:
            full = dataset.name != "million"
            results.append(bench_dataset(dataset, Path(work), mount=full and not args.no_mount, full=full,
                                         repeats=args.repeats if full else 1))
            # after each dataset, so that a long run that dies keeps what it measured
            path.write_text(json.dumps({"args": vars(args), "cores": os.cpu_count(), "load": load_average(),
                                        "results": results}, indent=2))
    print(table(results))
    print(f"\nraw numbers: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
