#!/usr/bin/env python3
"""Long runs of the random-operation exerciser (tests/test_exerciser.py) against real mounts.

    tests/stress_exerciser.py --seeds 20 --ops 5000            # seeds 1..20, both views
    tests/stress_exerciser.py --seeds 5 --first-seed 100 --views v2
    tests/stress_exerciser.py --replay failure.txt             # a printed replay, again

Prints one line per run and a table (seed, view, ops, failures, seconds); every failure
is shrunk (``--shrink-seconds``) and printed as a replayable list, also written to
``--out DIR`` as ``seed-VIEW.txt``. Exits 1 if any run failed.

To look past a failure already known (exploration only; the CI test tolerates nothing):
``--disable OP,...`` leaves operations out (``--disable rename_dir,s_move_dir``), and
``--tolerate links,unlinked-fd,stale-entries`` stops comparing those symptoms.

Every mount and daemon it starts is stopped (by PID) when it ends, on ^C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Cleanup  # noqa: E402
from test_exerciser import WEIGHTS, Runner, parse_replay, report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=5000, help="operations per run (default 5000)")
    parser.add_argument("--views", default="v3,v2", help="comma-separated: v3, v2 (default both)")
    parser.add_argument("--shrink-seconds", type=float, default=300.0,
                        help="time to spend shrinking each failure (0: print the whole sequence)")
    parser.add_argument("--disable", default="", help="comma-separated operation names to leave out: "
                        + ", ".join(sorted(WEIGHTS)))
    parser.add_argument("--tolerate", default="", help="comma-separated known failures to look past: "
                        "links (st_nlink and st_ino of hard links), unlinked-fd (fstat ENOENT on an unlinked "
                        "file's descriptor), stale-entries (names the listing no longer shows that lstat "
                        "still finds)")
    parser.add_argument("--out", type=Path, default=None, help="write each failure's replay here")
    parser.add_argument("--replay", type=Path, default=None, help="run a printed replay (view = ..., ops = [...])")
    parser.add_argument("-v", "--verbose", action="store_true", help="print how often each operation ran")
    parser.add_argument("--tmp", type=Path, default=None, help="where to make stores and mounts (default /tmp)")
    args = parser.parse_args(argv)

    disabled = {d for d in args.disable.split(",") if d}
    unknown = disabled - set(WEIGHTS)
    if unknown:
        parser.error(f"unknown operations: {', '.join(sorted(unknown))}")
    cleanup = Cleanup()
    tolerate = {t for t in args.tolerate.split(",") if t}
    if "links" in tolerate:  # hard links that stay: their every symptom is the same failure
        disabled |= {"link", "s_cross_link"}
    known = {"links", "unlinked-fd", "stale-entries"}
    if tolerate - known:
        parser.error(f"unknown --tolerate: {', '.join(sorted(tolerate - known))}")
    runner = Runner(cleanup, args.tmp, tolerate=tolerate)
    try:
        if args.replay:
            view, ops = parse_replay(args.replay.read_text())
            failure = runner.replay(view, ops)
            print(f"replay of {len(ops)} operations, view {view}: {failure or 'passed'}")
            if failure is not None and args.shrink_seconds > 0:
                shrunk, shrunk_failure = runner.shrink(view, ops[: failure.index + 1], failure, args.shrink_seconds)
                print(report("replay", view, ops, failure, shrunk, shrunk_failure))
            return 1 if failure else 0
        rows = []
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for view in [v for v in args.views.split(",") if v]:
                started = time.monotonic()
                ops, failure, world = runner.random_run(seed, view, args.ops, disabled)
                seconds = time.monotonic() - started
                done = len(ops)
                rows.append((seed, view, done, 0 if failure is None else 1, seconds))
                print(f"seed {seed} view {view}: {done} ops in {seconds:.0f} s: {failure or 'ok'}", flush=True)
                if args.verbose:
                    print("  " + ", ".join(f"{k}={v}" for k, v in sorted(world.stats.items())), flush=True)
                if failure is not None:
                    if args.shrink_seconds > 0:
                        shrunk, shrunk_failure = runner.shrink(view, ops, failure, args.shrink_seconds)
                    else:
                        shrunk, shrunk_failure = ops, failure
                    text = report(seed, view, ops, failure, shrunk, shrunk_failure)
                    print(text, flush=True)
                    if args.out:
                        (args.out / f"{seed}-{view}.txt").write_text(text + "\n")
        print()
        print(f"{'seed':>6} {'view':>4} {'ops':>6} {'failures':>8} {'seconds':>8}")
        for seed, view, done, failures, seconds in rows:
            print(f"{seed:>6} {view:>4} {done:>6} {failures:>8} {seconds:>8.0f}")
        failed = sum(r[3] for r in rows)
        print(f"{len(rows)} runs, {failed} failed")
        return 1 if failed else 0
    finally:
        runner.close()
        cleanup.undo()


if __name__ == "__main__":
    os.umask(0o022)
    # SIGTERM (timeout, kill) unwinds like ^C: every mount made is unmounted, every daemon stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
