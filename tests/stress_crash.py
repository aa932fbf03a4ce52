#!/usr/bin/env python3
"""Many rounds of the crash matrix (tests/test_crash_matrix.py), with a summary table.

    .venv/bin/python tests/stress_crash.py --rounds 500
    .venv/bin/python tests/stress_crash.py --rounds 60 --idiom trunc_gap --seed 7

Rounds go to the matrix cases (idiom x --flush-after) in turn, ``--rounds-per-store`` at a time on
one store and mountpoint (killed and mounted again every round), then on a fresh store. Each round
is ``CrashSession.run_round``: the same round the CI test plays. Problems are printed as they are
found; the exit status is 1 if there was any (a chunk lost, anything beneath the mountpoint, a torn
shard, an operation that succeeded after the kill, a failed remount, ...), else 0.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Cleanup, is_mounted  # noqa: E402
from test_crash_matrix import FLUSH_AFTER, IDIOMS, MATRIX, CrashSession, RoundResult  # noqa: E402


@dataclass
class Totals:
    rounds: int = 0
    fsynced: int = 0
    lost: int = 0
    beneath: int = 0
    torn: int = 0
    succeeded_after_kill: int = 0
    problems: int = 0

    def add(self, result: RoundResult) -> None:
        self.rounds += 1
        self.fsynced += result.fsynced_checked
        self.lost += result.lost
        self.beneath += result.beneath
        self.torn += result.torn
        self.succeeded_after_kill += result.succeeded_after_kill
        self.problems += len(result.problems)


COLUMNS = [("idiom", 20), ("flush-after", 11), ("rounds", 6), ("fsync'ed chunks checked", 23),
           ("chunks lost", 11), ("beneath mountpoint", 18), ("torn/unreadable shards", 22),
           ("ok after kill", 13), ("problems", 8)]


def table(totals: dict[tuple[str, str], Totals]) -> str:
    def row(cells) -> str:
        return "  ".join(str(cell).ljust(width) if n < 2 else str(cell).rjust(width)
                         for n, (cell, (_, width)) in enumerate(zip(cells, COLUMNS)))

    lines = [row(name for name, _ in COLUMNS), row("-" * w for _, w in COLUMNS)]
    everything = Totals()
    for (idiom, flush), t in totals.items():
        lines.append(row([idiom, flush, t.rounds, t.fsynced, t.lost, t.beneath, t.torn, t.succeeded_after_kill,
                          t.problems]))
        for name in vars(everything):
            setattr(everything, name, getattr(everything, name) + getattr(t, name))
    t = everything
    lines.append(row(["all", "", t.rounds, t.fsynced, t.lost, t.beneath, t.torn, t.succeeded_after_kill, t.problems]))
    return "\n".join(lines)


def play_store(workdir: Path, case: tuple[str, str], rounds: int, rng: random.Random,
               totals: Totals) -> tuple[int, list[str]]:
    """Up to ``rounds`` rounds of one case on a fresh store (fewer after a problem that ends the
    store's use); (rounds played, the problems found)."""
    idiom, flush = case
    problems: list[str] = []
    played = 0
    cleanup = Cleanup()
    try:
        session = CrashSession(workdir, idiom, flush, cleanup, rng)
        try:
            session.start()
        except AssertionError as error:
            problem = f"[{idiom} --flush-after {flush}] the first mount failed: {error}"
            print(f"  PROBLEM {problem}", flush=True)
            totals.problems += 1
            return 1, [problem]  # counted as a round, so that a broken daemon cannot loop forever
        for _ in range(rounds):
            played += 1
            started = time.monotonic()
            result = session.run_round()
            totals.add(result)
            print(f"{result.line()} ({time.monotonic() - started:.1f} s)", flush=True)
            for problem in result.problems:
                print(f"  PROBLEM {problem}", flush=True)
            problems += result.problems
            if result.fatal:
                break
        end = session.finish()
        for problem in end:
            print(f"  PROBLEM {problem}", flush=True)
        totals.problems += len(end)
        return played, problems + end
    finally:
        cleanup.undo()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500, help="kill -9 rounds in all (default 500)")
    parser.add_argument("--idiom", choices=IDIOMS, action="append", help="only these idioms (repeatable)")
    parser.add_argument("--flush-after", choices=FLUSH_AFTER, action="append", help="only these (repeatable)")
    parser.add_argument("--rounds-per-store", type=int, default=10, help="rounds on one store (default 10)")
    parser.add_argument("--seed", type=int, help="replay a run (printed at the start)")
    parser.add_argument("--workdir", type=Path, help="where stores and mountpoints go (default: a temporary "
                                                     "directory, removed unless a problem was found)")
    args = parser.parse_args()

    cases = [(i, f) for i, f in MATRIX if (not args.idiom or i in args.idiom)
             and (not args.flush_after or f in args.flush_after)]
    if not cases:
        parser.error("no matrix case matches --idiom/--flush-after")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zarrfs-stress-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"seed {seed}, {args.rounds} rounds over {len(cases)} cases, in {workdir}", flush=True)

    rng = random.Random(seed)
    totals = {case: Totals() for case in cases}
    problems: list[str] = []
    started, left, block = time.monotonic(), args.rounds, 0
    while left > 0:
        case = cases[block % len(cases)]
        rounds = min(args.rounds_per_store, left)
        store_dir = workdir / f"{block:04d}-{case[0]}-{case[1]}"
        played, found = play_store(store_dir, case, rounds, rng, totals[case])
        problems += found
        left -= played
        block += 1
        if not problems and not args.workdir and not is_mounted(store_dir / "mnt"):
            shutil.rmtree(store_dir, ignore_errors=True)

    print(f"\n{table(totals)}\n\n{sum(t.rounds for t in totals.values())} rounds in "
          f"{time.monotonic() - started:.0f} s, seed {seed}")
    if problems:
        print(f"{len(problems)} problems (work directory kept: {workdir}); the first ones:")
        for problem in problems[:20]:
            print(f"  {problem}")
        return 1
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
