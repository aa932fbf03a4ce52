"""The ``zarrfs`` command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import __version__
from .defaults import (DEFAULT_FLUSH_AFTER, DEFAULT_JOBS, DEFAULT_MAX_DIRTY_MIB, DEFAULT_MAX_SCRATCH_MIB,
                       DEFAULT_SHARDS, DEFAULT_TIMEOUT)

# Each command imports what it needs when it runs: the daemon's (pyfuse3, trio) would
# add a tenth of a second to every `zarrfs pack` of a job array.

COMMANDS = ("mount", "umount", "status", "info", "check", "pack", "unpack")


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one clear line on stderr (SPEC §2), not a usage dump."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"zarrfs: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zarrfs",
        description="Mount a sharded Zarr store so that every inner chunk is its own file.",
    )
    parser.add_argument("--version", action="version", version=f"zarrfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount_cmd = commands.add_parser(
        "mount", help="mount STORE on MOUNTPOINT (returns once the mount answers)",
        description="Mount STORE (a local Zarr directory, or s3://BUCKET/PREFIX) on MOUNTPOINT. Every "
                    "inner chunk of a sharded array appears as its own file; zarr.json reads as the "
                    "unsharded array.",
    )
    mount_cmd.add_argument("store", metavar="STORE")
    mount_cmd.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_endpoint_argument(mount_cmd)
    mount_cmd.add_argument("--single-writer", action="store_true",
                           help="mount an object store whose server ignores conditional writes writable "
                                "anyway: this mount must then be its only writer (docs/s3.md)")
    mount_cmd.add_argument("-f", "--foreground", action="store_true",
                           help="stay in the foreground (systemd, debugging); logs go to stderr")
    mount_cmd.add_argument("--read-only", action="store_true",
                           help="refuse every write with EROFS (also -o ro)")
    mount_cmd.add_argument("--shards", type=_positive_int, default=DEFAULT_SHARDS, metavar="N",
                           help="inner chunks per shard along every axis, for arrays created through "
                                f"the mount (never more than the array has; default {DEFAULT_SHARDS})")
    mount_cmd.add_argument("--flush-after", type=_seconds, default=DEFAULT_FLUSH_AFTER, metavar="SECONDS",
                           help="repack a changed shard this long after its last change "
                                f"(default {DEFAULT_FLUSH_AFTER:g})")
    mount_cmd.add_argument("--max-dirty", type=_mebibytes, default=DEFAULT_MAX_DIRTY_MIB, metavar="MiB",
                           help="written data held in memory before writers wait for repacks "
                                f"(default {DEFAULT_MAX_DIRTY_MIB})")
    mount_cmd.add_argument("--max-scratch", type=_mebibytes, default=DEFAULT_MAX_SCRATCH_MIB, metavar="MiB",
                           help="memory each user's scratch files (temporaries, locks) may hold; past "
                                f"it their writes fail with EDQUOT (default {DEFAULT_MAX_SCRATCH_MIB})")
    mount_cmd.add_argument("--view", choices=["v3", "v2"], default="v3",
                           help="what readers see: v3 = unsharded Zarr v3 arrays (default); "
                                "v2 = Zarr v2 metadata and chunk keys, for zarr-python 2 and other legacy readers")
    mount_cmd.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPT[,OPT...]",
                           help="FUSE mount options, e.g. allow_other; generic mount options "
                                "(rw, dev, suid, exec, defaults, nofail, ...) are ignored")
    mount_cmd.add_argument("--attr-timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                           help="how long the kernel caches names and attributes; changes other "
                                f"programs make to the store show after this (default {DEFAULT_TIMEOUT:g})")
    mount_cmd.add_argument("--log-level", default="INFO",
                           choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    mount_cmd.add_argument("--log-file", metavar="PATH",
                           help="log here (default: stderr in the foreground, syslog once daemonized)")

    umount_cmd = commands.add_parser("umount", help="flush pending work and unmount MOUNTPOINT")
    umount_cmd.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount_cmd.add_argument("--timeout", type=_positive_seconds, default=120.0, metavar="SECONDS",
                            help="wait this long for files open for writing, then fail with EBUSY "
                                 "(default 120)")
    umount_cmd.add_argument("--force", action="store_true",
                            help="do not wait for writers: only closed or fsync'ed content is kept")

    status_cmd = commands.add_parser("status", help="print the daemon's status for MOUNTPOINT")
    status_cmd.add_argument("mountpoint", metavar="MOUNTPOINT")

    info_cmd = commands.add_parser(
        "info", help="summarize STORE: arrays, shards, chunks, files saved, v2-translatable?",
        description="Per array of STORE: shape, data type, chunk and shard shapes, shard files and "
                    "present inner chunks, backing files versus files in the v3 view, and whether the "
                    "v2 view can show it (or why not). Reads shard indexes only, never chunk data.",
    )
    info_cmd.add_argument("store", metavar="STORE")
    _add_endpoint_argument(info_cmd)
    info_cmd.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info_cmd.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
                          help=f"shard indexes read concurrently (default {DEFAULT_JOBS})")

    check_cmd = commands.add_parser(
        "check", help="verify every shard and every array's metadata; exit 1 on problems",
        description="Verify every shard of STORE (file length, index checksum, entries inside the file, "
                    "not overlapping each other or the index; nested shards too) and every array's "
                    "metadata. Prints one line per problem, naming the shard by its store-relative key. "
                    "Exit status: 0 clean, 1 problems found, 2 usage errors.",
    )
    check_cmd.add_argument("store", metavar="STORE")
    _add_endpoint_argument(check_cmd)
    check_cmd.add_argument("--decode", action="store_true",
                           help="also decode every chunk with zarr-python's codecs and check its shape (slower)")
    check_cmd.add_argument("-j", "--jobs", type=_positive_int, default=DEFAULT_JOBS, metavar="N",
                           help=f"shards read concurrently (default {DEFAULT_JOBS})")

    pack_cmd = commands.add_parser(
        "pack", help="convert a per-chunk store into a sharded store, offline",
        description="Write DST, a sharded Zarr v3 store with the hierarchy, attributes and values of SRC "
                    "(a per-chunk Zarr v2 or v3 store). Encoded chunks are copied into shards without "
                    "decoding, with the metadata the mount gives arrays written into it. Arrays already "
                    "sharded, or without an exact sharded equivalent, are copied as they are. Re-running "
                    "after an interruption finishes the job and rewrites nothing complete; metadata is "
                    "written last. See docs/pack.md.",
    )
    pack_cmd.add_argument("src", metavar="SRC")
    pack_cmd.add_argument("dst", metavar="DST", help="an empty (or missing) directory, or a partial pack of SRC")
    _add_endpoint_argument(pack_cmd)
    pack_cmd.add_argument("--shards", type=_positive_int, default=DEFAULT_SHARDS, metavar="N",
                          help="inner chunks per shard along every axis (never more than the array has; "
                               f"default {DEFAULT_SHARDS}, as the mount)")
    pack_cmd.add_argument("-j", "--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="J",
                          help="shards packed at once by local processes (default: the number of cores)")
    where = pack_cmd.add_mutually_exclusive_group()
    where.add_argument("--dask", metavar="ADDRESS", dest="dask_address",
                       help="run the shard tasks on this Dask distributed scheduler (tcp://HOST:PORT)")
    where.add_argument("--part", type=_part, metavar="I/N",
                       help="do only part I of N (a batch job array); the last part to finish writes the metadata")
    pack_cmd.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")

    unpack_cmd = commands.add_parser(
        "unpack", help="write what the mount shows of a sharded store as plain files",
        description="Write into DST (empty or missing) exactly what `zarrfs mount SRC` shows: one file "
                    "per inner chunk, unsharded metadata (v3 view) or Zarr v2 metadata and keys (v2 view).",
    )
    unpack_cmd.add_argument("src", metavar="SRC")
    unpack_cmd.add_argument("dst", metavar="DST")
    _add_endpoint_argument(unpack_cmd)
    unpack_cmd.add_argument("--view", choices=["v3", "v2"], default="v3", help="which view to write (default v3)")
    return parser


def _add_endpoint_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--endpoint-url", metavar="URL",
                         help="the S3-compatible server of an s3:// STORE (default: AWS, or $AWS_ENDPOINT_URL)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _part(text: str) -> tuple[int, int]:
    from .pack import parse_part
    try:
        return parse_part(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _finite(text: str, unit: str, zero_allowed: bool) -> float:
    """A finite number of ``unit``: positive, or also zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number of {unit}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        kind = "non-negative" if zero_allowed else "positive"
        raise argparse.ArgumentTypeError(f"{text} is not a finite, {kind} number of {unit}")
    return value


def _seconds(text: str) -> float:
    return _finite(text, "seconds", zero_allowed=True)


def _positive_seconds(text: str) -> float:
    return _finite(text, "seconds", zero_allowed=False)


def _mebibytes(text: str) -> float:
    return _finite(text, "MiB", zero_allowed=False)


def _own_option(name: str, value: str):
    """Convert like the matching command-line option does."""
    name = name.replace("-", "_")
    if name == "view" and value not in ("v3", "v2"):
        raise SystemExit(f"zarrfs: error: -o view={value}: choose v3 or v2")
    converters = {"shards": _positive_int, "flush_after": _seconds, "max_dirty": _mebibytes,
                  "max_scratch": _mebibytes, "attr_timeout": _seconds,
                  "log_level": str.upper}
    try:
        return converters.get(name, str)(value)
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise SystemExit(f"zarrfs: error: -o {name}={value}: {error}") from None


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``zarrfs STORE DIR -o OPTS``, the form mount.fuse3 and fstab use."""
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        return ["mount", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    if args.command in ("mount", "umount", "status"):
        return _daemon_command(args)
    if args.command == "info":
        from .info import run_info
        return run_info(args.store, as_json=args.json, jobs=args.jobs, endpoint_url=args.endpoint_url)
    if args.command == "check":
        from .check import run_check
        return run_check(args.store, decode=args.decode, jobs=args.jobs, endpoint_url=args.endpoint_url)
    if args.command in ("pack", "unpack"):
        return _offline(args)
    return 2


def _daemon_command(args) -> int:
    """mount, umount and status: a problem the user can fix is one line."""
    from .daemon import MountError, mount, read_status, umount
    try:
        if args.command == "mount":
            return mount(_mount_options(args))
        if args.command == "umount":
            return umount(args.mountpoint, timeout=args.timeout, force=args.force)
        print(json.dumps(read_status(args.mountpoint), indent=2))
        return 0
    except MountError as error:
        print(f"zarrfs: error: {error}", file=sys.stderr)
        return 1


def _offline(args) -> int:
    """pack and unpack: bad input (and any I/O error) is one line per problem."""
    from .pack import PackError, StoreError, pack, unpack
    try:
        if args.command == "pack":
            return pack(args.src, args.dst, shards=args.shards, jobs=args.jobs, dask_address=args.dask_address,
                        part=args.part, dry_run=args.dry_run, endpoint_url=args.endpoint_url)
        return unpack(args.src, args.dst, view=args.view, endpoint_url=args.endpoint_url)
    except (PackError, StoreError, OSError) as error:
        for line in str(error).splitlines():
            print(f"zarrfs: error: {line}", file=sys.stderr)
        return 1


# zarrfs's own options may also come as -o NAME=VALUE (fstab lines, mount -t fuse.zarrfs).
OWN_OPTIONS = {"view": "view", "shards": "shards", "flush_after": "flush_after", "max_dirty": "max_dirty",
               "max_scratch": "max_scratch", "attr_timeout": "attr_timeout", "log_level": "log_level", "log_file": "log_file",
               "endpoint_url": "endpoint_url"}
OWN_FLAGS = {"single_writer": "single_writer"}  # -o NAME, without a value


def _mount_options(args):
    fuse_options = []
    for option in (o.strip() for group in args.fuse_options for o in group.split(",")):
        name, _, value = option.partition("=")
        if name.replace("-", "_") in OWN_OPTIONS and value:
            setattr(args, OWN_OPTIONS[name.replace("-", "_")], _own_option(name, value))
        elif option.replace("-", "_") in OWN_FLAGS:
            setattr(args, OWN_FLAGS[option.replace("-", "_")], True)
        elif option:
            fuse_options.append(option)
    from .daemon import MountOptions
    return MountOptions(
        store=args.store,
        mountpoint=args.mountpoint,
        foreground=args.foreground,
        read_only=args.read_only,
        view=args.view,
        shards=args.shards,
        flush_after=args.flush_after,
        max_dirty_mib=args.max_dirty,
        max_scratch_mib=args.max_scratch,
        fuse_options=fuse_options,
        timeout=args.attr_timeout,
        log_level=args.log_level,
        log_file=args.log_file,
        endpoint_url=args.endpoint_url,
        single_writer=args.single_writer,
    )


if __name__ == "__main__":
    sys.exit(main())
