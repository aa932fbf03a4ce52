"""Small helpers the benchmark suite's modules share: paths, processes, /proc readings, unmounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
ZARRFS = Path(sys.executable).with_name("zarrfs")  # the checkout's console script in .venv


def log(message: str) -> None:
    """Progress on stderr with a timestamp, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with check=True and the arguments as strings (a str is a shell command)."""
    kwargs.setdefault("check", True)
    return subprocess.run(args if isinstance(args, str) else [str(a) for a in args], **kwargs)


def timed(function, *args, **kwargs):
    """(seconds, result) of one call, on the monotonic high-resolution clock."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status; empty once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (the peak resident set) of ``pid`` in MiB; None if it is gone or a zombie."""
    value = proc_status(pid).get("VmHWM")
    return int(value.split()[0]) / 1024 if value else None


def rss_mib(pid: int) -> float | None:
    value = proc_status(pid).get("VmRSS")
    return int(value.split()[0]) / 1024 if value else None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all threads), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"


def zarrfs_status(mountpoint: Path) -> dict:
    """The hidden status document of a zarrfs mount (pid, dirty bytes, flushes, ...)."""
    return json.loads((mountpoint / ".zarrfs" / "status").read_text())


def force_unmount(mountpoint: Path) -> None:
    """fusermount3 -u, falling back to a lazy unmount (-uz) when the mount is busy or dead;
    used for every peer and as the last resort for zarrfs."""
    if not os.path.ismount(mountpoint):
        return
    if subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode:
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


def warm_files(paths: list[Path]) -> None:
    """Read files (or every file below directories) into the page cache, untimed, so that
    neither side of a comparison waits for the disk."""
    for path in paths:
        if path.is_dir():
            run(f"find '{path}' -type f -print0 | xargs -0r cat >/dev/null", shell=True)
        elif path.exists():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


class KeepWarm:
    """While a long step runs, read its backing files again every ``interval`` seconds.

    This VM pages out page cache that has not been touched for about a minute (DAMON `pageout`,
    age >= 12 x 5 s, up to 128 MiB/s), so the shards a 100-second pass reaches last would
    otherwise come from disk. Directories of many small files (the plain copies) are skipped:
    re-reading them would cost more CPU than the passes over them take.
    """

    def __init__(self, paths: list[Path], interval: float = 20.0):
        self.paths = [p for p in paths if p.is_file() or (p.is_dir() and sum(1 for _ in p.rglob("*")) < 10_000)]
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            warm_files(self.paths)

    def __enter__(self) -> "KeepWarm":
        if self.paths:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def disk_read_mib() -> float:
    """MiB read from the machine's disks so far (all processes): the difference across a timed
    step shows whether it was served from the page cache as intended."""
    sectors = 0
    for stat in Path("/sys/block").glob("*/stat"):
        if not stat.parent.name.startswith(("loop", "ram", "zram")):
            sectors += int(stat.read_text().split()[2])
    return sectors * 512 / (1 << 20)


def remove_tree(path: Path) -> None:
    """rm -rf (quicker than shutil.rmtree on 262,144 files) that never walks into a mount that
    failed to go away; --one-file-system guards the levels below."""
    if path.exists() and not any(os.path.ismount(p) for p in [path, *path.glob("*")]):
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
