"""The systems that serve a dataset's chunk files, each mounted with its own tool.

A System knows which backing files it reads (to warm them in the page cache before mounting),
how to mount a fresh instance and where the array appears in it. Peers run in the foreground
under Popen, so the daemon's pid (for VmHWM) is the child's; zarrfs daemonizes and reports its
pid in MNT/.zarrfs/status. Every Mount is unmounted by its context manager's exit, also on
Ctrl-C, and a registry of live mounts lets the suite's outermost `finally` clear any left over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common import CACHE, ZARRFS, force_unmount, log, peak_rss_mib, run, zarrfs_status
from datasets import Dataset

RATARMOUNT_VERSION = "1.3.0"
RATARMOUNT_VENV = CACHE / f"ratarmount-venv-{RATARMOUNT_VERSION}"
READY_TIMEOUT = 300.0  # ratarmount's first mount of D2 builds its index of 262,144 entries

LIVE_MOUNTS: set[Path] = set()  # mountpoints this process has mounted and not yet unmounted


def ratarmount_command() -> Path:
    """ratarmount from PyPI in its own venv under bench/.cache/, created on first use, so its
    dependencies never touch the project's venv."""
    executable = RATARMOUNT_VENV / "bin" / "ratarmount"
    marker = RATARMOUNT_VENV / ".complete"
    if not marker.exists():
        log(f"creating {RATARMOUNT_VENV.name} (pip install ratarmount=={RATARMOUNT_VERSION})")
        run([sys.executable, "-m", "venv", "--clear", RATARMOUNT_VENV])
        run([RATARMOUNT_VENV / "bin" / "python", "-m", "pip", "install", "-q",
             f"ratarmount=={RATARMOUNT_VERSION}"], stderr=subprocess.DEVNULL)
        marker.touch()
    return executable


@dataclass
class Mount:
    """A live instance of a system: where the array's parent directory is, the daemon's pid
    (None for the plain directory), and the wall time the mount took."""

    system: "System"
    mountpoint: Path | None
    root: Path
    pid: int | None
    seconds: float | None
    process: subprocess.Popen | None = None
    log_file: Path | None = None

    def peak_rss_mib(self) -> float | None:
        return peak_rss_mib(self.pid) if self.pid else None

    def __enter__(self) -> "Mount":
        return self

    def __exit__(self, *exc) -> None:
        self.system.unmount(self)


@dataclass
class System:
    """Base: a plain directory needs no mount."""

    name: str
    kind: str = "plain"
    options: list[str] = field(default_factory=list)

    def backing(self, dataset: Dataset) -> list[Path]:
        return [dataset.plain]

    def mount(self, dataset: Dataset, mountpoint: Path, log_file: Path) -> Mount:
        return Mount(self, None, dataset.plain, None, None)

    def unmount(self, mount: Mount) -> None:
        pass

    @property
    def is_zarrfs(self) -> bool:
        return self.kind == "zarrfs"


class ForegroundPeer(System):
    """A FUSE tool started in the foreground (-f) under Popen; ready once the mountpoint is a
    mount and the array directory in it answers a stat."""

    def command(self, dataset: Dataset, mountpoint: Path) -> list:
        raise NotImplementedError

    def mount(self, dataset: Dataset, mountpoint: Path, log_file: Path) -> Mount:
        command = self.command(dataset, mountpoint)
        started = time.perf_counter()
        with open(log_file, "ab") as out:
            # A session of its own: Ctrl-C reaches the suite, whose `finally` unmounts, not the
            # peer, which would otherwise race it.
            process = subprocess.Popen([str(c) for c in command], stdout=out, stderr=out, start_new_session=True)
        LIVE_MOUNTS.add(mountpoint)
        mount = Mount(self, mountpoint, mountpoint, process.pid, None, process, log_file)
        try:
            self._wait_ready(mount)
        except BaseException:
            self.unmount(mount)
            raise
        mount.seconds = time.perf_counter() - started
        return mount

    def _wait_ready(self, mount: Mount) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if mount.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {mount.process.returncode} before mounting:\n"
                                   f"{tail(mount.log_file)}")
            if os.path.ismount(mount.mountpoint):
                try:
                    os.stat(mount.mountpoint / "arr")
                    return
                except FileNotFoundError:
                    raise RuntimeError(f"{self.name}: no arr/ in the mount")
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount within {READY_TIMEOUT:.0f} s:\n{tail(mount.log_file)}")
            time.sleep(0.002)

    def unmount(self, mount: Mount) -> None:
        force_unmount(mount.mountpoint)
        try:
            mount.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mount.process.kill()
            mount.process.wait()
        LIVE_MOUNTS.discard(mount.mountpoint)


class SquashfuseLL(ForegroundPeer):
    def backing(self, dataset):
        return [dataset.image("sqfs")]

    def command(self, dataset, mountpoint):
        return ["squashfuse_ll", "-f", dataset.image("sqfs"), mountpoint]


class FuseZip(ForegroundPeer):
    def backing(self, dataset):
        return [dataset.image("zip")]

    def command(self, dataset, mountpoint):
        return ["fuse-zip", "-r", "-f", dataset.image("zip"), mountpoint]


class Ratarmount(ForegroundPeer):
    def backing(self, dataset):
        image = dataset.image("tar")
        return [image, *image.parent.glob(f"{image.name}.index*")]

    def command(self, dataset, mountpoint):
        # The index (tar.index.sqlite beside the tar) is built by the first, untimed mount and
        # loaded by every later one.
        return [ratarmount_command(), "-f", dataset.image("tar"), mountpoint]


@dataclass
class PyfuseFloor(ForegroundPeer):
    """bench/floor.py: the files of ``served(dataset)`` (by default the plain chunk files) served
    by a minimal pyfuse3 filesystem with every attribute in memory, i.e. what pyfuse3 and the
    kernel allow (issue 14). What is written into it stays in its memory."""

    served: Callable[[Dataset], Path] = lambda dataset: dataset.plain

    def backing(self, dataset):
        return [self.served(dataset)]

    def command(self, dataset, mountpoint):
        return [sys.executable, Path(__file__).with_name("floor.py"), self.served(dataset), mountpoint]


class Zarrfs(System):
    """`zarrfs mount` returns once the mount answers; its wall time is the mount time."""

    def backing(self, dataset):
        return [dataset.sharded]

    def mount(self, dataset: Dataset, mountpoint: Path, log_file: Path, store: Path | None = None) -> Mount:
        started = time.perf_counter()
        LIVE_MOUNTS.add(mountpoint)
        try:
            run([ZARRFS, "mount", *self.options, "--log-file", log_file, store or dataset.sharded, mountpoint])
        except BaseException:
            force_unmount(mountpoint)
            LIVE_MOUNTS.discard(mountpoint)
            raise
        seconds = time.perf_counter() - started
        pid = int(zarrfs_status(mountpoint)["pid"])
        return Mount(self, mountpoint, mountpoint, pid, seconds, log_file=log_file)

    def unmount(self, mount: Mount) -> None:
        unmount_zarrfs(mount.mountpoint)


def unmount_zarrfs(mountpoint: Path) -> str | None:
    """`zarrfs umount` (it flushes pending writes and waits for the daemon), falling back to
    fusermount3 -u / -uz; returns what went wrong, if anything."""
    problem = None
    if os.path.ismount(mountpoint):
        result = subprocess.run([str(ZARRFS), "umount", str(mountpoint)], capture_output=True, text=True)
        if result.returncode:
            problem = f"`zarrfs umount` exited {result.returncode}: {result.stderr.strip()[-500:]}"
            force_unmount(mountpoint)
    LIVE_MOUNTS.discard(mountpoint)
    return problem


def unmount_everything() -> None:
    """The suite's last resort: whatever is still mounted goes (lazily if it must)."""
    for mountpoint in list(LIVE_MOUNTS):
        force_unmount(mountpoint)
        LIVE_MOUNTS.discard(mountpoint)


def tail(path: Path | None, lines: int = 15) -> str:
    if not path or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


PLAIN = System("plain")
READ_SYSTEMS = [
    PLAIN,
    SquashfuseLL("squashfuse_ll", "peer"),
    FuseZip("fuse-zip", "peer"),
    Ratarmount("ratarmount", "peer"),
    PyfuseFloor("pyfuse3-floor", "peer"),
    Zarrfs("zarrfs", "zarrfs"),
    Zarrfs("zarrfs-ro", "zarrfs", ["--read-only"]),
]
