#!/usr/bin/env python3
"""Listing speed (issue 14, item 1): `find -type f` and a stat of every file, zarrfs against the floor.

    .venv/bin/python bench/listing.py [--datasets d1,d2] [--repeats 3] [--systems floor,zarrfs,zarrfs-ro]

Each repeat mounts every system afresh, in turn (interleaved), and in that session times
`find MNT -type f` (a subprocess; its output is counted and must be every chunk), then
`os.stat` of every file in a Python loop, in sorted order (the suite's "list" and "stat"
steps), and the CPU seconds the serving daemon spent during the listing ("list_cpu": less
sensitive to the machine's load than the wall time). A second fresh session times the stat loop alone ("stat cold": every name is looked
up, as a reader that goes straight to known keys does). The load average is recorded before
each repeat: the machine is shared, so only ratios within a repeat mean much.
zarrfs's request counts (from its status file) show what each step cost in round trips.
Data: bench/.cache/<dataset>/{sharded,plain} as bench/datasets.py writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, cpu_seconds, load_average, log, warm_files, zarrfs_status
from datasets import D1, D2
from peers import PyfuseFloor, Zarrfs, unmount_everything

SYSTEMS = {
    "floor": PyfuseFloor("pyfuse3-floor", "peer"),
    "zarrfs": Zarrfs("zarrfs", "zarrfs"),
    "zarrfs-ro": Zarrfs("zarrfs-ro", "zarrfs", ["--read-only"]),
}
DATASETS = {"d1": D1, "d2": D2}


def file_list(dataset) -> list[str]:
    """Relative paths of every chunk file (from the plain copy), sorted."""
    root = dataset.plain
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files
                  if f != "zarr.json")


def timed_find(mountpoint: Path) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run(["find", str(mountpoint), "-type", "f"], capture_output=True, check=True).stdout
    return time.perf_counter() - started, out.count(b"\n")


def timed_stats(mountpoint: Path, paths: list[str]) -> float:
    full = [os.path.join(mountpoint, p) for p in paths]
    started = time.perf_counter()
    for path in full:
        os.stat(path)
    return time.perf_counter() - started


def requests(mount) -> dict:
    return zarrfs_status(mount.mountpoint).get("requests", {}) if mount.system.is_zarrfs else {}


def session(system, dataset, mountpoint: Path, log_file: Path, paths: list[str], listing: bool) -> dict:
    warm_files(system.backing(dataset))
    with system.mount(dataset, mountpoint, log_file) as mount:
        result = {}
        cpu = cpu_seconds(mount.pid)
        if listing:
            result["list"], count = timed_find(mountpoint)
            result["list_cpu"] = cpu_seconds(mount.pid) - cpu  # the serving daemon's, user + system
            # zarr.json is a file of the mount too
            if count != len(paths) + 1:
                raise RuntimeError(f"{system.name}: find listed {count} files, expected {len(paths) + 1}")
            result["list_requests"] = requests(mount)
            result["stat"] = timed_stats(mountpoint, paths)
        else:
            result["stat_cold"] = timed_stats(mountpoint, paths)
        result["requests"] = requests(mount)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--datasets", default="d1,d2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", default="floor,zarrfs,zarrfs-ro")
    parser.add_argument("--no-cold", action="store_true", help="skip the stat-without-listing session")
    args = parser.parse_args()
    systems = [SYSTEMS[s] for s in args.systems.split(",")]
    runs: dict = {}
    work = Path(tempfile.mkdtemp(prefix="zarrfs-listing-"))
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    try:
        for name in args.datasets.split(","):
            dataset = DATASETS[name]
            paths = file_list(dataset)
            for repeat in range(args.repeats):
                load = load_average()
                for system in systems:
                    log_file = work / f"{system.name}.log"
                    result = session(system, dataset, mountpoint, log_file, paths, listing=True)
                    if not args.no_cold:
                        result.update({k: v for k, v in session(system, dataset, mountpoint, log_file, paths,
                                                                listing=False).items() if k != "requests"})
                    result["load"] = load
                    runs.setdefault(name, {}).setdefault(system.name, []).append(result)
                    log(f"{name} #{repeat + 1} {system.name}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)) + f" (load {load})")
    finally:
        unmount_everything()
    report(runs, systems)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"listing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(runs, indent=1))
    log(f"saved {out}")
    return 0


def report(runs: dict, systems) -> None:
    """Medians per step, and each zarrfs row's ratio to the floor."""
    for name, by_system in runs.items():
        print(f"\n{name}: medians of {len(next(iter(by_system.values())))} (s); ratio to the floor")
        steps = [s for s in ("list", "list_cpu", "stat", "stat_cold") if s in next(iter(by_system.values()))[0]]
        print("system".ljust(16) + "".join(s.rjust(18) for s in steps))
        floor = by_system.get("pyfuse3-floor")
        for system in systems:
            rows = by_system[system.name]
            cells = []
            for step in steps:
                median = statistics.median(r[step] for r in rows)
                ratio = f" ({median / statistics.median(r[step] for r in floor):.2f}x)" if floor else ""
                cells.append(f"{median:.3f}{ratio}".rjust(18))
            print(system.name.ljust(16) + "".join(cells))
        print("loads: " + "; ".join(r["load"] for r in next(iter(by_system.values()))))


if __name__ == "__main__":
    sys.exit(main())
