"""The local backend before and after the store seam (issue 12), in one interleaved run:

    .venv/bin/python bench/seam.py --before /work/before [--repeats N] [--datasets d1]

``--before`` is a checkout of the commit before the seam (`git worktree add /work/before 97c3fa5`).
Its zarrfs is run by the same venv's console script with PYTHONPATH=<before> and a working
directory outside both trees (the venv holds an editable install of this checkout, which
PYTHONPATH precedes); which tree each daemon imported is checked before timing. The read steps
are the suite's (bench/suite.py ReadBench: list, stat, cat cold, cat warm, py read, a fresh mount
per session), interleaved over plain / zarrfs-before / zarrfs-after / their read-only twins.
Only the sharded and plain forms of the dataset are needed (no peer images).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, ZARRFS, force_unmount, load_average, log, remove_tree, run, zarrfs_status
from datasets import READ_DATASETS, _write_arrays, describe
from peers import LIVE_MOUNTS, PLAIN, Mount, Zarrfs, unmount_everything
import report
from suite import ReadBench, stop_on_sigterm

OUTSIDE = Path("/")  # the daemons' working directory: in neither tree


class ZarrfsTree(Zarrfs):
    """zarrfs from the checkout ``tree`` (None: this checkout, as the suite runs it)."""

    def __init__(self, name: str, tree: Path | None, options: list[str] | None = None):
        super().__init__(name, "zarrfs", options or [])
        self.tree = tree

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if self.tree:
            env["PYTHONPATH"] = str(self.tree)
        return env

    def imported_from(self) -> str:
        out = subprocess.run([sys.executable, "-c", "import zarrfs; print(zarrfs.__file__)"], cwd=OUTSIDE,
                             env=self.env(), capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def mount(self, dataset, mountpoint: Path, log_file: Path, store: Path | None = None) -> Mount:
        started = time.perf_counter()
        LIVE_MOUNTS.add(mountpoint)
        try:
            run([ZARRFS, "mount", *self.options, "--log-file", log_file, store or dataset.sharded, mountpoint],
                cwd=OUTSIDE, env=self.env())
        except BaseException:
            force_unmount(mountpoint)
            LIVE_MOUNTS.discard(mountpoint)
            raise
        seconds = time.perf_counter() - started
        pid = int(zarrfs_status(mountpoint)["pid"])
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        pythonpath = next((e.decode()[11:] for e in environ if e.startswith(b"PYTHONPATH=")), None)
        if pythonpath != (str(self.tree) if self.tree else None):
            raise SystemExit(f"{self.name}: daemon {pid} runs with PYTHONPATH={pythonpath}")
        return Mount(self, mountpoint, mountpoint, pid, seconds, log_file=log_file)


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def ratios(results: dict, a: str, b: str) -> str:
    steps = report.READ_STEPS
    rows = []
    for step in steps:
        x, y = report.median(results[a][step]), report.median(results[b][step])
        rows.append([step, report.fmt(y), report.fmt(x), report.fmt(report.ratio(x, y), ".2f")])
    return report.table([f"{a} / {b}", b, a, "ratio"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the commit before the seam")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", default="d1")
    parser.add_argument("--no-py-read", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()
    before = args.before.resolve()
    systems = [PLAIN, ZarrfsTree("before", before), ZarrfsTree("after", None),
               ZarrfsTree("before-ro", before, ["--read-only"]), ZarrfsTree("after-ro", None, ["--read-only"])]
    for s in systems[1:]:
        where = s.imported_from()
        expected = (before if s.tree else REPO) / "zarrfs" / "__init__.py"
        if Path(where) != expected:
            raise SystemExit(f"{s.name}: imports {where}, expected {expected}")
        log(f"{s.name}: zarrfs from {where}")
    results = {"before": commit_of(before), "after": commit_of(REPO), "repeats": args.repeats,
               "load_before": load_average(), "read": {}}
    workdir = Path(tempfile.mkdtemp(prefix="zarrfs-seam-"))
    out = [f"store seam, local backend: before {results['before']} ({before}), after {results['after']}"
           f"{' + modified zarrfs/' if subprocess.run(['git', '-C', str(REPO), 'status', '--porcelain', '--', 'zarrfs'], capture_output=True, text=True).stdout.strip() else ''}"
           f", {os.cpu_count()} cores, load average {results['load_before']} before"]
    try:
        for name in args.datasets.split(","):
            dataset = READ_DATASETS[name]
            if not dataset.sharded.exists() or not dataset.plain.exists():
                dataset.root.mkdir(parents=True, exist_ok=True)
                _write_arrays(dataset)
            bench = ReadBench(dataset, systems, workdir, py_read=not args.no_py_read)
            results["read"][name] = bench.run(args.repeats)
            section = report.read_section(name, results["read"][name], describe(dataset), args.repeats, None)
            out += ["", section.split("\n\nzarrfs")[0], "",
                    ratios(results["read"][name]["systems"], "after", "before"), "",
                    ratios(results["read"][name]["systems"], "after-ro", "before-ro")]
    finally:
        unmount_everything()
        remove_tree(workdir)
        results["load_after"] = load_average()
        out.append(f"\nload average after: {results['load_after']}")
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        path = REPO / "bench" / "results" / f"seam-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=1))
        log(f"raw results: {path.relative_to(REPO)}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
