"""Plain helpers shared by several test modules (fixtures live in conftest.py).

Everything here is an oracle or a tool of the tests, written independently of
zarrfs: what /proc says about mounts and processes, the chunk contents writer
processes produce, reading a backing store with zarr-python 3 and tensorstore,
and checking shard files byte by byte.
"""

from __future__ import annotations

import errno
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import crc32c
import numpy as np
import tensorstore as ts
import zarr

# -- /proc: mounts and processes ----------------------------------------------------


def unescape_mount_field(field: str) -> str:
    """A /proc/mounts field as a path: the kernel writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entries(path: Path) -> list[list[str]]:
    """The /proc/mounts lines (split into fields) whose mountpoint is ``path``."""
    with open("/proc/mounts") as mounts:
        return [f for f in (line.split() for line in mounts) if unescape_mount_field(f[1]) == str(path)]


def mount_options(path: Path) -> set[str]:
    """The options of the one mount on ``path``, as the kernel reports them."""
    (entry,) = mount_entries(path)
    return set(entry[3].split(","))


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie nobody reaps (a daemon whose parent exited) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cmdline(pid: int) -> list[str]:
    """The arguments of ``pid``; [] once it is gone (it may exit while we look)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def processes_naming(path: Path) -> list[int]:
    """Pids of processes (not this one) that have ``path`` as an argument: daemons left behind."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and str(path) in cmdline(int(entry))]


# What every request on the mount of a daemon that died gets: ENOTCONN, or ECONNABORTED
# when the kernel had it in flight as the connection went.
DEAD_MOUNT_ERRORS = (errno.ENOTCONN, errno.ECONNABORTED)


def read_status(mnt: Path) -> dict:
    """The daemon's status, read from the mount's hidden control file (no ``zarrfs status`` process)."""
    return json.loads((mnt / ".zarrfs" / "status").read_text())


# -- what writer processes write -------------------------------------------------------

# Files the daemon writes beside their target and renames onto it; never part of a finished store.
TEMPORARY_PREFIX = ".zarrfs-tmp-"
ABSENT = 2**64 - 1  # offset and nbytes of a missing chunk in a shard index


def chunk_content(seq: int, elements: int) -> np.ndarray:
    """The raw uint32 chunk written for sequence number ``seq`` (>= 1): element 0 is ``seq``, the
    rest depends on it, so that a chunk read back names the write it came from (``seq_of``).

    The writer scripts that tests run as separate processes compute the same values.
    """
    values = (np.arange(elements, dtype=np.uint64) * 2654435761 + seq * 40503) % 2**32
    values[0] = seq
    return values.astype("<u4")


def seq_of(chunk: np.ndarray) -> int | None:
    """The sequence number a chunk read back holds; None for an absent (fill value) chunk.

    Fails unless the chunk is exactly some write's ``chunk_content``: a torn or mixed chunk.
    """
    flat = np.ascontiguousarray(chunk).ravel()
    if not flat.any():
        return None
    seq = int(flat[0])
    assert np.array_equal(flat, chunk_content(seq, flat.size)), f"chunk is not any writer's content (element 0 = {seq})"
    return seq


def write_file(path: Path, data: bytes, fsync: bool = True) -> None:
    """open(O_TRUNC), one write(2), fsync unless told not to, close: a writer's plain chunk write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data) == len(data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


# -- the backing store -------------------------------------------------------------------


def read_backing(array_dir: Path) -> np.ndarray:
    """The whole array read from the backing store by zarr-python 3 and by tensorstore (must agree)."""
    by_zarr = zarr.open_array(str(array_dir), mode="r")[...]
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir) + "/"}}
    by_tensorstore = ts.open(spec, open=True, read=True).result().read().result()
    assert np.array_equal(by_zarr, by_tensorstore), "zarr-python 3 and tensorstore disagree"
    return by_zarr


def check_shard_index(path: Path, chunks_per_shard: int, chunk_nbytes: int | None = None) -> int:
    """A shard file (index [bytes, crc32c] at the end) is whole: its index checksum verifies and
    every entry lies inside the data (and is ``chunk_nbytes`` long, if given). Returns how many
    chunks it holds. A half-written shard fails here whatever a reader would make of it.
    """
    data = path.read_bytes()
    index_nbytes = chunks_per_shard * 16 + 4
    assert len(data) >= index_nbytes, f"{path}: {len(data)} bytes, shorter than its index (half-written?)"
    index, checksum = data[-index_nbytes:-4], data[-4:]
    assert crc32c.crc32c(index).to_bytes(4, "little") == checksum, f"{path}: index checksum mismatch (half-written?)"
    present = 0
    for offset, nbytes in np.frombuffer(index, dtype="<u8").reshape(-1, 2):
        if offset == ABSENT and nbytes == ABSENT:
            continue
        present += 1
        assert offset + nbytes <= len(data) - index_nbytes, f"{path}: chunk at {offset}+{nbytes} is past the data"
        if chunk_nbytes is not None:
            assert nbytes == chunk_nbytes, f"{path}: a chunk of {nbytes} bytes (expected {chunk_nbytes})"
    return present


# -- changing stores in place -------------------------------------------------------------


@contextmanager
def rewritten_json(path: Path):
    """``with rewritten_json(path) as doc: ...``: change a JSON document (metadata) in place."""
    doc = json.loads(path.read_text())
    yield doc
    path.write_text(json.dumps(doc))


def v2_prototype_array(root: Path) -> Path:
    """An array of the v2 sharding prototype (SPEC §4: a ``.zarray`` with "shard_format": "indexed")
    at ``root/proto``, without shards yet: 8 x 12 int16 in chunks of 2 x 3, uncompressed, shards
    of 2 x 2 chunks (4 index entries) named like v2 chunk keys ("0.0").
    """
    array = root / "proto"
    array.mkdir(parents=True)
    (root / ".zgroup").write_text('{"zarr_format": 2}')
    zarray = {"zarr_format": 2, "shape": [8, 12], "chunks": [2, 3], "shards": [2, 2], "shard_format": "indexed",
              "dtype": "<i2", "compressor": None, "fill_value": 0, "order": "C", "filters": None}
    (array / ".zarray").write_text(json.dumps(zarray))
    return array
