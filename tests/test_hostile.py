"""Hostile input (SPEC §7) and the security model (SPEC §8; docs/hpc-admin.md, "Security model").

The hostile corpus is a table, ``ROWS``: one row per hostile object, saying how to plant it (in
its own copy of a corpus array, ``h/<row>``, or a directory of its own) and what the mount must
show. All rows live in one store, mounted once per view, so every row also checks that the others
cost it nothing. Each row is probed from a child process under a watchdog (every request answers
within ``WATCHDOG`` seconds), three times over, and then: the daemon lives, its RSS is bounded, no
byte from outside the store was served, every chunk key gives what its kind says, the log names
the object as often as its kind says (once for a bad object, however often it was read) and holds
no internal error.

    kind      what the mount shows in the row's directory
    plain     exactly the backing files (names, types, bytes, link targets): bad metadata
    eio       every chunk key of the ``bad`` shards is EIO (absent ones too: never ENOENT),
              every other chunk its stored bytes or ENOENT when absent
    entry     the ``bad`` chunks EIO, every other chunk as stored
    served    every chunk as the planted shards' indexes say (the test's own reader)
    lenient   ``plain`` or ``served``: metadata fields zarrfs passes on without interpreting

The second half runs as a second user against an ``allow_other`` mount (and a default one): backing
permissions are enforced, symlinks lead nowhere outside the store, created files and shards get the
documented owners and modes, open handles share descriptors, scratch memory is bounded per user.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import crc32c
import numpy as np
import pytest
import zarr

import corpus
from conftest import ZARRFS, Cleanup, is_mounted
from helpers import alive, rewritten_json

CASE = "zarr_2d_end_crc_default_slash"  # 16x16 uint8, shards of 2x2 chunks of 4x4, "c/i/j", chunk (0, 1) absent
START_CASE = "ts_2d_start_crc_default_slash"  # the same with the index at the start
WATCHDOG = 10.0  # seconds a probe (dozens of requests) may take
RSS_LIMIT_KIB = 400 << 10
SECRET = b"SECRET-BYTES-42!"  # 16 bytes: one 4x4 uint8 chunk of the shards planted outside the store
USER = "zarrfs-hostile"  # the second user (made with useradd when missing)
MiB = 1 << 20


# -- children under a watchdog ----------------------------------------------------------------


def in_child(function: Callable, *args, user: tuple[int, int] | None = None, timeout: float = WATCHDOG,
             on_hang: Callable[[], None] | None = None):
    """``function(*args)`` (JSON-able result) in a forked child, as ``user`` (uid, gid) if given.
    A child that does not finish within ``timeout`` (a request that does not answer) fails the
    test, after ``on_hang()``; a child that dies fails it too."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            if user is not None:
                os.setgroups([])
                os.setresgid(user[1], user[1], user[1])
                os.setresuid(user[0], user[0], user[0])
            os.umask(0o022)
            payload = json.dumps({"result": function(*args)})
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            payload = json.dumps({"error": f"{type(error).__name__}: {error}"})
        try:
            data = payload.encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    received, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                if on_hang is not None:
                    on_hang()
                _reap(pid)
                pytest.fail(f"hung: {function.__name__}{args!r} did not finish within {timeout} s")
            data = os.read(read_end, 1 << 16)
            if not data:
                break
            received.append(data)
    finally:
        os.close(read_end)
    os.waitpid(pid, 0)
    answer = json.loads(b"".join(received) or b'{"error": "the child died"}')
    if "error" in answer:
        pytest.fail(f"{function.__name__}{args!r} failed: {answer['error']}")
    return answer["result"]


def _reap(pid: int) -> None:
    for _ in range(100):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.05)


def attempt(action: Callable, *args) -> int:
    """0, or the errno of ``action(*args)``."""
    try:
        action(*args)
        return 0
    except OSError as error:
        return error.errno


def read_file(path: str, flags: int = 0) -> bytes:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def look(path: str) -> dict:
    """One name as ``lstat`` and a read show it (never following a symlink, never opening
    anything but a regular file): the same record for the backing store and the mount."""
    try:
        st = os.lstat(path)
    except OSError as error:
        return {"err": error.errno}
    if stat.S_ISDIR(st.st_mode):
        return {"kind": "dir"}
    if stat.S_ISLNK(st.st_mode):
        return {"kind": "link", "target": os.readlink(path)}
    if not stat.S_ISREG(st.st_mode):
        return {"kind": "other", "type": stat.S_IFMT(st.st_mode)}
    info = {"kind": "file", "size": st.st_size}
    try:
        data = read_file(path, os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        return {**info, "err": error.errno}
    info["sha"] = digest(data)
    if len(data) != st.st_size:
        info["read"] = len(data)
    if SECRET in data:
        info["secret"] = True
    return info


def walk(top: str) -> dict:
    """``{relative path: look()}`` of everything below ``top`` ("" is ``top``)."""
    tree = {"": {"kind": "dir"}}

    def visit(path: str, rel: str) -> None:
        try:
            names = sorted(os.listdir(path))
        except OSError as error:
            tree[rel]["err"] = error.errno
            return
        for name in names:
            child, child_rel = os.path.join(path, name), f"{rel}/{name}" if rel else name
            tree[child_rel] = look(child)
            if tree[child_rel] == {"kind": "dir"}:
                visit(child, child_rel)

    visit(top, "")
    return tree


def look_chunk(path: str) -> dict:
    """A chunk key as a reader finds it: stat, then read (following what the kernel follows)."""
    result = {}
    try:
        result["size"] = os.stat(path).st_size
    except OSError as error:
        result["stat"] = error.errno
    try:
        data = read_file(path)
    except OSError as error:
        result["read"] = error.errno
    else:
        result["sha"] = digest(data)
        if SECRET in data:
            result["secret"] = True
    return result


def probe(top: str, chunk_paths: list[str], passes: int = 3) -> dict:
    """The mount below ``top``: the chunk keys, then the tree, each looked at ``passes`` times
    (a bad object must answer the same every time, and be logged once). Chunk keys first: a
    listing gives the kernel attributes it may answer later lookups with."""
    seen, unstable = {}, []
    for part, look_once in (("chunks", lambda: {p: look_chunk(os.path.join(top, p)) for p in chunk_paths}),
                            ("tree", lambda: walk(top))):
        for n in range(passes):
            again = look_once()
            seen.setdefault(part, again)
            if again != seen[part]:
                unstable.append(f"{part} pass {n + 1}")
    return {**seen, "unstable": unstable}


def daemon_pid(mnt: str) -> int:
    with open(os.path.join(mnt, ".zarrfs", "status")) as f:
        return int(json.load(f)["pid"])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))


# -- planting ---------------------------------------------------------------------------------


def replace_with(path: Path, make: Callable[[Path], None]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    make(path)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def socket_node(path: Path) -> None:
    os.mknod(path, stat.S_IFSOCK | 0o644)


def zero_device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # what /dev/zero is


def link_to(target) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def secret_shard(path: Path, n_chunks: int = 4) -> Path:
    """A valid shard (index of CASE's format) whose every chunk is SECRET."""
    path.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_shard(path, {i: SECRET for i in range(n_chunks)}, n_chunks)
    return path


def rewrite_index(case: corpus.Case, shard: Path, change: Callable) -> None:
    """``change(index, shard size, index span)`` edits the (n, 2) index; re-encoded with a valid CRC."""
    data = shard.read_bytes()
    index = corpus.read_shard_index(shard, case.n_chunks, case.index_location, case.index_endian,
                                    case.index_crc).copy()
    nbytes = case.n_chunks * 16 + 4 * case.index_crc
    span = (0, nbytes) if case.index_location == "start" else (len(data) - nbytes, len(data))
    change(index, len(data), span)
    raw = index.astype("<u8" if case.index_endian == "little" else ">u8").tobytes()
    raw += crc32c.crc32c(raw).to_bytes(4, "little") if case.index_crc else b""
    shard.write_bytes(data[: span[0]] + raw + data[span[1]:])


def entry(value: Callable) -> Callable:
    """A planter setting index entry 0 of shard (0, 0) to ``value(index, size, span)``."""
    def plant(array, outside, case):
        def change(index, size, span):
            index[0] = value(index, size, span)
        rewrite_index(case, case.shard_path(array.parents[1], (0, 0)), change)
    return plant


def on_shard(action: Callable) -> Callable:
    return lambda array, outside, case: action(case.shard_path(array.parents[1], (0, 0)), case)


def metadata(change: Callable[[dict], None]) -> Callable:
    def plant(array, outside, case):
        with rewritten_json(array / "zarr.json") as doc:
            change(doc)
    return plant


def metadata_text(make: Callable[[dict], bytes]) -> Callable:
    def plant(array, outside, case):
        path = array / "zarr.json"
        path.write_bytes(make(json.loads(path.read_text())))
    return plant


def sharding(doc: dict) -> dict:
    return doc["codecs"][0]["configuration"]


def dims(n: int) -> Callable[[dict], None]:
    def change(doc):
        doc["shape"] = [16, 16] + [1] * (n - 2)
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [8, 8] + [1] * (n - 2)
        sharding(doc)["chunk_shape"] = [4, 4] + [1] * (n - 2)
    return change


def chunks_2_40(nested: bool) -> Callable[[dict], None]:
    def change(doc):
        doc["shape"] = doc["chunk_grid"]["configuration"]["chunk_shape"] = [1 << 20, 1 << 20]
        config = sharding(doc)
        config["chunk_shape"] = [1 << 10, 1 << 10] if nested else [1, 1]
        if nested:
            config["codecs"] = [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [1, 1], "codecs": config["codecs"], "index_codecs": config["index_codecs"]}}]
    return change


def v2_prototype_2_40(array, outside, case):
    (array / "zarr.json").unlink()
    (array / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1 << 20, 1 << 20], "chunks": [1, 1], "shards": [1 << 20, 1 << 20],
        "shard_format": "indexed", "dtype": "|u1", "compressor": None, "fill_value": 0, "order": "C",
        "filters": None, "dimension_separator": "/"}))


def with_pad(doc: dict) -> bytes:
    doc["attributes"] = {"pad": " " * (17 << 20)}  # a valid array, but past the 16 MiB limit
    return json.dumps(doc).encode()


def deeply_nested(doc: dict) -> bytes:
    doc["attributes"] = {}
    return json.dumps(doc)[:-len("{}}")].encode() + b'{"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"


def not_utf8(doc: dict) -> bytes:
    doc["attributes"] = {"x": "@@"}
    return json.dumps(doc).encode().replace(b"@@", b"\xff\xfe")


def symlinked_key_dir(key: str, shards: list[str]) -> Callable:
    """The array's key directory ``key`` ("c", "c/0") moved out of the store, its shards
    replaced by SECRET ones, and a symlink to it left in its place."""
    def plant(array, outside, case):
        escaped = outside / key.replace("/", "-")
        for shard in shards:
            secret_shard(escaped / shard)
        replace_with(array / key, link_to(escaped))
    return plant


def names_plain(array, outside, case):
    """A plain directory of files with hostile names."""
    for name in ["a\nb", os.fsdecode(b"\xff\xfe-bytes"), "x" * 255, "back\\slash", " lead", "tab\tname", "-"]:
        (array / name).write_bytes(b"content of " + os.fsencode(name))
    (array / ("d" * 255)).mkdir()
    (array / ("d" * 255) / ("f" * 255)).write_bytes(b"deep")


def long_names_beside_chunks(array, outside, case):
    (array / ("r" * 255)).write_bytes(b"a plain file with a 255-byte name")
    (array / "read\nme").write_bytes(b"a plain file with a newline in its name")


def dims_32(array: Path) -> corpus.Case:
    """A served array of 32 dimensions (the limit), written by zarr-python 3."""
    shape, chunks, shards = (2,) + (1,) * 31, (1,) * 32, (2,) + (1,) * 31
    data = np.array([7, 9], dtype="uint8").reshape(shape)
    zarr.create_array(store=str(array), shape=shape, chunks=chunks, shards=shards, dtype="uint8",
                      fill_value=0)[...] = data
    config = sharding(json.loads((array / "zarr.json").read_text()))
    assert [c["name"] for c in config["index_codecs"]] == ["bytes", "crc32c"] and config["index_location"] == "end"
    return corpus.Case("dims-32", "zarr", "", data, chunks, shards,
                       {"name": "default", "configuration": {"separator": "/"}}, index_chunks=chunks)


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str  # unique; also how the log names it ("h/<id>")
    kind: str  # plain, eio, entry, served, lenient (module docstring)
    plant: Callable | None = None  # plant(array directory, private outside directory, case)
    bad: tuple = ((0, 0),)  # eio: shards whose chunks are all EIO; entry: chunks that are EIO
    logs: tuple[int, int] | None = None  # (least, most) log lines naming it; default by kind
    v2_array: bool = True  # False: the v2 view shows the array without .zarray (and logs why, once)
    base: str | Callable | None = CASE  # corpus case copied to h/<name>, a builder, or None (a new directory)
    name: str | None = None  # the directory's name under h/ when not the id
    line_has: str = ""  # what each counted log line names besides h/<id>
    fifo: str | None = None  # a FIFO (relative to the directory) the daemon must never open

    @property
    def dirname(self) -> str:
        return self.name or self.id

    def log_range(self, view: str) -> tuple[int, int]:
        if view == "v2" and not self.v2_array:
            return (1, 1)
        return self.logs or {"plain": (1, 1), "eio": (1, 1), "entry": (1, 1), "served": (0, 0),
                             "lenient": (0, 1)}[self.kind]


def plain(id, plant, **kw):
    return Row(id, "plain", plant, line_has=kw.pop("line_has", "zarr.json"), **kw)


def bad_shard(id, plant, **kw):
    return Row(id, "eio", plant, line_has=kw.pop("line_has", "c/0/0"), **kw)


def bad_entry(id, value, **kw):
    return Row(id, "entry", entry(value), line_has="c/0/0", **kw)


U64 = 2**64
ROWS = [
    Row("healthy", "served"),
    Row("dims-32", "served", base=dims_32),
    Row("name-255", "served", long_names_beside_chunks, name="name-255-" + "x" * 246),
    Row("names-plain", "plain", names_plain, base=None, logs=(0, 0)),
    # metadata that would hang, exhaust or mislead the daemon: plain files, one log line
    plain("json-fifo", lambda a, o, c: replace_with(a / "zarr.json", fifo), fifo="zarr.json"),
    plain("json-socket", lambda a, o, c: replace_with(a / "zarr.json", socket_node)),
    plain("json-device", lambda a, o, c: replace_with(a / "zarr.json", zero_device)),
    plain("json-directory", lambda a, o, c: replace_with(a / "zarr.json", Path.mkdir)),
    plain("json-dev-zero", lambda a, o, c: replace_with(a / "zarr.json", link_to("/dev/zero"))),
    plain("json-outside", lambda a, o, c: (shutil.copy(a / "zarr.json", o / "zarr.json"),
                                           replace_with(a / "zarr.json", link_to(o / "zarr.json")))),
    plain("json-huge", metadata_text(with_pad)),
    plain("json-deep", metadata_text(deeply_nested)),
    plain("json-not-utf8", metadata_text(not_utf8)),
    plain("json-not-object", metadata_text(lambda doc: b"[]")),
    plain("dims-33", metadata(dims(33))),
    plain("dims-100000", metadata(dims(100_000))),
    plain("chunks-2-40", metadata(chunks_2_40(nested=False))),
    plain("nested-2-40", metadata(chunks_2_40(nested=True))),
    plain("v2proto-2-40", v2_prototype_2_40, line_has=".zarray"),
    # metadata of wrong types, unknown codecs and encodings, garbage index_location
    plain("shape-string", metadata(lambda d: d.update(shape="16x16"))),
    plain("chunk-shape-strings", metadata(lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=["8", "8"]))),
    plain("codecs-object", metadata(lambda d: d.update(codecs={"name": "sharding_indexed"}))),
    plain("sharding-null", metadata(lambda d: d["codecs"][0].update(configuration=None))),
    plain("index-codec-config-string", metadata(lambda d: sharding(d)["index_codecs"][0].update(configuration="big"))),
    plain("key-encoding-config-string", metadata(lambda d: d["chunk_key_encoding"].update(configuration="/"))),
    plain("node-type-number", metadata(lambda d: d.update(node_type=7))),
    plain("zarr-format-string", metadata(lambda d: d.update(zarr_format="3"))),
    plain("codec-before-sharding", metadata(lambda d: d["codecs"].insert(0, {"name": "x.unknown"}))),
    plain("index-codec-unknown", metadata(lambda d: sharding(d)["index_codecs"].insert(1, {"name": "x.unknown"}))),
    plain("index-location-garbage", metadata(lambda d: sharding(d).update(index_location="middle"))),
    plain("index-location-number", metadata(lambda d: sharding(d).update(index_location=7))),
    plain("key-encoding-unknown", metadata(lambda d: d.update(chunk_key_encoding={"name": "x.unknown"}))),
    plain("chunk-grid-unknown", metadata(lambda d: d["chunk_grid"].update(name="x.rectilinear"))),
    Row("inner-codec-unknown", "served", metadata(lambda d: sharding(d)["codecs"].append({"name": "x.unknown"})),
        v2_array=False),
    Row("data-type-unknown", "served", metadata(lambda d: d.update(data_type="x.quaternion")), v2_array=False),
    Row("attributes-string", "lenient", metadata(lambda d: d.update(attributes="x"))),
    Row("attributes-list", "lenient", metadata(lambda d: d.update(attributes=[1, 2]))),
    Row("dimension-names-number", "lenient", metadata(lambda d: d.update(dimension_names=5))),
    Row("data-type-list", "lenient", metadata(lambda d: d.update(data_type=["uint8"]))),
    Row("fill-value-object", "lenient", metadata(lambda d: d.update(fill_value={"re": 1}))),
    Row("shape-2-100", "lenient", metadata(lambda d: d.update(shape=[2**100, 16]))),
    # shards that are not what they should be: their chunks EIO, one log line each
    bad_shard("shard-empty", on_shard(lambda s, c: corpus.truncate_shard(s, 0))),
    bad_shard("shard-truncated", on_shard(lambda s, c: corpus.truncate_shard(s, 10))),
    bad_shard("shard-checksum", on_shard(lambda s, c: corpus.corrupt_checksum(s, c.index_location))),
    bad_shard("shard-directory", on_shard(lambda s, c: replace_with(s, Path.mkdir))),
    bad_shard("shard-fifo", on_shard(lambda s, c: replace_with(s, fifo)), fifo="c/0/0"),
    bad_shard("shard-socket", on_shard(lambda s, c: replace_with(s, socket_node))),
    bad_shard("shard-device", on_shard(lambda s, c: replace_with(s, zero_device))),
    bad_shard("shard-dev-zero", on_shard(lambda s, c: replace_with(s, link_to("/dev/zero")))),
    bad_shard("shard-outside", lambda a, o, c: replace_with(c.shard_path(a.parents[1], (0, 0)),
                                                            link_to(secret_shard(o / "shard")))),
    bad_shard("shard-inside", on_shard(lambda s, c: replace_with(s, link_to("../1/1")))),
    bad_shard("c-outside", symlinked_key_dir("c", ["0/0", "0/1", "1/0", "1/1"]),
              bad=((0, 0), (0, 1), (1, 0), (1, 1)), logs=(4, 4), line_has="/c/"),
    bad_shard("c0-outside", symlinked_key_dir("c/0", ["0", "1"]), bad=((0, 0), (0, 1)), logs=(2, 2),
              line_has="/c/0/"),
    # index entries: that chunk EIO, the others served
    bad_entry("entry-past-end", lambda index, size, span: (size + 1, 16)),
    bad_entry("entry-into-index", lambda index, size, span: (span[0], 16)),
    bad_entry("entry-into-start-index", lambda index, size, span: (span[0], 16), base=START_CASE),
    bad_entry("entry-nbytes-2-64", lambda index, size, span: (index[0][0], U64 - 2)),
    bad_entry("entry-offset-wraps", lambda index, size, span: (U64 - 8, 16)),
    bad_entry("entry-half-empty", lambda index, size, span: (U64 - 1, 16)),
    Row("entry-overlap", "served", entry(lambda index, size, span: index[3])),  # chunk (0, 0) reads (1, 1)'s bytes
    # hostile names: served as stored, and a bad shard below them logged on one line
    bad_shard("name-newline", on_shard(lambda s, c: corpus.corrupt_checksum(s, c.index_location)),
              name="name-newline\nfake log line"),
    bad_shard("name-bytes", on_shard(lambda s, c: corpus.corrupt_checksum(s, c.index_location)),
              name="name-bytes-" + os.fsdecode(b"\xff\xfe")),
]
assert len({r.id for r in ROWS}) == len(ROWS)
assert not [(a.id, b.dirname) for a in ROWS for b in ROWS if a is not b and b.dirname.startswith(a.id)]


# -- the hostile store, mounted in each view --------------------------------------------------


@dataclass
class Planted:
    row: Row
    case: corpus.Case | None
    chunks: dict  # coords -> "eio", None (absent) or the bytes a reader must get
    tree: dict | None  # the backing directory, for plain and lenient rows
    v2_strips_crc: bool = False

    def chunk_path(self, coords, view: str) -> str:
        return "/".join((["c"] if view == "v3" else []) + [str(i) for i in coords])

    def expected_chunk(self, coords, view: str) -> dict:
        want = self.chunks[coords]
        if want == "eio":
            return {"stat": errno.EIO, "read": errno.EIO}
        if want is None:
            return {"stat": errno.ENOENT, "read": errno.ENOENT}
        if view == "v2" and self.v2_strips_crc:
            want = want[:-4]
        return {"size": len(want), "sha": digest(want)}


def stored_chunks(root: Path, case: corpus.Case) -> dict:
    """coords -> bytes of every chunk the (regular) shard files hold, by the test's own reader."""
    found = {}
    grid = [-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks)]
    for shard in itertools.product(*(range(n) for n in case.shard_grid)):
        path = case.shard_path(root, shard)
        if not (path.is_file() and not path.is_symlink()):
            continue
        chunks = corpus.read_shard_chunks(path, case.n_chunks, case.index_location, case.index_endian, case.index_crc)
        for local, data in chunks.items():
            coords = tuple(int(s * n + i) for s, n, i in zip(shard, case.chunks_per_shard,
                                                             np.unravel_index(local, case.chunks_per_shard)))
            if all(i < g for i, g in zip(coords, grid)):
                found[coords] = data
    return found


def plant(row: Row, root: Path, outside: Path, source: Path, cases: dict) -> Planted:
    array, private = root / "h" / row.dirname, outside / row.id
    private.mkdir()
    if row.base is None:
        array.mkdir()
        row.plant(array, private, None)
        return Planted(row, None, {}, walk(str(array)))
    if callable(row.base):
        array.mkdir()
        case = row.base(array)
    else:
        shutil.copytree(source / cases[row.base].path, array, symlinks=True)
        case = cases[row.base]
    case = dataclasses.replace(case, path=f"h/{row.dirname}")
    inner = sharding(json.loads((array / "zarr.json").read_text()))["codecs"]
    pristine = stored_chunks(root, case)
    if row.plant is not None:
        row.plant(array, private, case)
    if row.kind in ("served", "lenient"):
        pristine = stored_chunks(root, case)
    grid = [-(-n // c) for n, c in zip(case.expected.shape, case.inner_chunks)]
    chunks = {}
    for coords in itertools.product(*(range(n) for n in grid)):
        shard = tuple(i // n for i, n in zip(coords, case.chunks_per_shard))
        bad = (row.kind == "eio" and shard in row.bad) or (row.kind == "entry" and coords in row.bad)
        chunks[coords] = "eio" if bad else pristine.get(coords)
    tree = walk(str(array)) if row.kind in ("plain", "lenient") else None
    return Planted(row, case, chunks, tree, v2_strips_crc=inner[-1]["name"] == "crc32c")


@dataclass
class HostileStore:
    root: Path
    planted: dict[str, Planted]


@pytest.fixture(scope="module")
def hostile_store(corpus_store, tmp_path_factory) -> HostileStore:
    source, cases = corpus_store
    cases = {c.name: c for c in cases}
    work = tmp_path_factory.mktemp("hostile")
    root, outside = work / "store.zarr", work / "outside"
    (root / "h").mkdir(parents=True)
    outside.mkdir()
    for group in (root, root / "h"):
        (group / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    return HostileStore(root, {row.id: plant(row, root, outside, source, cases) for row in ROWS})


@dataclass
class HostileMount:
    view: str
    path: Path
    log: Path
    mount: object  # conftest.Mount
    pid: int = 0
    broken: str | None = None  # why the rows after this one cannot be trusted

    def log_lines(self) -> list[str]:
        return self.log.read_bytes().decode(errors="replace").splitlines() if self.log.exists() else []

    def kill(self, why: str) -> None:
        """A request hung: stop the daemon (which answers every request with ENOTCONN)."""
        self.broken = why
        if self.pid and alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture(scope="module", params=["v3", "v2"])
def hostile(request, hostile_store, module_mount) -> HostileMount:
    m = module_mount(hostile_store.root, "--view", request.param)
    state = HostileMount(request.param, m.path, m.log, m)
    state.pid = in_child(daemon_pid, str(m.path), on_hang=lambda: state.kill("the status file hung"))
    return state


def fifo_writer(path: Path) -> subprocess.Popen:
    """A writer blocked in open(2) until somebody opens the FIFO for reading."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c",
                             "import os, sys; print('ready', flush=True); os.open(sys.argv[1], os.O_WRONLY)",
                             str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    for _ in range(200):  # until it sleeps in open(2)
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "S":
                break
        time.sleep(0.005)
    return proc


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_hostile_object_costs_only_itself(hostile, hostile_store, row):
    if hostile.broken:
        pytest.fail(f"the {hostile.view} mount is unusable since: {hostile.broken}")
    planted = hostile_store.planted[row.id]
    view = hostile.view
    top = str(hostile.path / "h" / row.dirname)
    chunk_paths = {planted.chunk_path(c, view): c for c in planted.chunks}
    log_before = len(hostile.log_lines())
    writer = fifo_writer(hostile_store.root / "h" / row.dirname / row.fifo) if row.fifo else None
    try:
        seen = in_child(probe, top, sorted(chunk_paths),
                        on_hang=lambda: hostile.kill(f"row {row.id} hung the {view} mount"))
    finally:
        opened = writer is not None and _exited(writer)
    problems = []
    if not alive(hostile.pid):
        hostile.broken = f"the daemon died during row {row.id}"
        pytest.fail(hostile.broken)
    if rss_kib(hostile.pid) > RSS_LIMIT_KIB:
        problems.append(f"daemon RSS {rss_kib(hostile.pid)} KiB")
    if opened:
        problems.append(f"the daemon opened the FIFO {row.fifo} (SPEC §7: special files are never opened)")
    if seen["unstable"]:
        problems.append(f"answers changed between passes {seen['unstable']}")
    tree, chunks = seen["tree"], seen["chunks"]
    problems += [f"{p}: bytes from outside the store" for p, info in {**tree, **chunks}.items() if info.get("secret")]

    if row.kind == "plain":
        problems += tree_differences(tree, planted.tree)
    elif row.kind == "lenient" and not tree_differences(tree, planted.tree):
        pass  # shown as plain files: fine
    else:
        problems += served_differences(planted, view, tree, chunks, chunk_paths, lenient=row.kind == "lenient")

    lines = hostile.log_lines()
    new = lines[log_before:]
    problems += [f"log: {line}" for line in new if "internal error" in line or "Traceback" in line][:3]
    naming = [line for line in lines if f"h/{row.id}" in line and row.line_has in line]
    least, most = row.log_range(view)
    if not least <= len(naming) <= most:
        mentions = [line for line in lines if f"h/{row.id}" in line]
        problems.append(f"{len(naming)} log lines name it (expected {least}..{most}): {mentions[:6]}")
    assert not problems, f"{view} view, {row.id}:\n  " + "\n  ".join(problems)


def _exited(proc: subprocess.Popen) -> bool:
    try:
        proc.wait(timeout=0.3)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    finally:
        proc.stdout.close()


def tree_differences(seen: dict, backing: dict) -> list[str]:
    """Where the mount does not show exactly the backing files."""
    return [f"{path or '.'}: mount shows {seen.get(path)}, the store holds {backing.get(path)}"
            for path in sorted(set(seen) | set(backing)) if seen.get(path) != backing.get(path)][:8]


def served_differences(planted: Planted, view: str, tree: dict, chunks: dict, chunk_paths: dict,
                       lenient: bool = False) -> list[str]:
    problems = []
    for path, coords in sorted(chunk_paths.items()):
        want = planted.expected_chunk(coords, view)
        if chunks[path] != want:
            problems.append(f"chunk {path}: {_describe(chunks[path])}, expected {_describe(want)}")
    for path, info in sorted(tree.items()):
        failure = info.get("err")
        if failure and not (failure == errno.EIO and planted.chunks.get(chunk_paths.get(path)) == "eio"):
            problems.append(f"{path or '.'}: listed, then {errno.errorcode.get(failure, failure)}")
        if info.get("kind") == "file" and "read" in info:
            problems.append(f"{path}: size {info['size']} but {info['read']} bytes read")
    present = {p for p, c in chunk_paths.items() if isinstance(planted.chunks[c], bytes)}
    if missing := sorted(present - set(tree)):
        problems.append(f"present chunks not listed: {missing[:4]}")
    metadata_name = "zarr.json" if view == "v3" else ".zarray"
    if view == "v3" or (planted.row.v2_array and not lenient):
        if tree.get(metadata_name, {}).get("kind") != "file" or "err" in tree[metadata_name]:
            problems.append(f"{metadata_name}: {tree.get(metadata_name)}")
    elif metadata_name in tree and not lenient:
        problems.append(".zarray shown for an array without a v2 equivalent")
    return problems[:10]


def _describe(result: dict) -> str:
    return ", ".join(f"{k}={errno.errorcode.get(v, v) if k in ('stat', 'read', 'err') else v}"
                     for k, v in result.items())


def test_a_listing_does_not_make_a_bad_chunk_look_like_an_empty_file(hostile):
    """SPEC §7: looking up a chunk key of a bad shard fails with EIO, also after ``ls -l`` of
    its directory (whose entries, size 0, the kernel may answer later lookups from)."""
    if hostile.broken:
        pytest.fail(f"the {hostile.view} mount is unusable since: {hostile.broken}")
    key_dir = hostile.path / "h" / "shard-checksum" / ("c/0" if hostile.view == "v3" else "0")

    def list_then_stat(directory):
        listed = sorted(os.listdir(directory))  # chunks 0 and 1 of the bad shard, 2 and 3 of a good one
        return listed, {name: _describe(look_chunk(os.path.join(directory, name))) for name in ("0", "1")}
    listed, seen = in_child(list_then_stat, str(key_dir))
    assert listed == ["0", "1", "2", "3"]
    assert seen == {"0": "stat=EIO, read=EIO", "1": "stat=EIO, read=EIO"}


def test_the_daemon_survives_the_corpus_and_unmounts_cleanly(hostile, hostile_store):
    if hostile.broken:
        pytest.fail(f"the {hostile.view} mount is unusable since: {hostile.broken}")
    listed = in_child(os.listdir, str(hostile.path / "h"))
    assert sorted(listed) == sorted({"zarr.json" if hostile.view == "v3" else ".zgroup"}
                                    | {r.dirname for r in ROWS})
    assert rss_kib(hostile.pid) < RSS_LIMIT_KIB
    hostile.mount.unmount()  # zarrfs umount: returns 0 and the mount is gone
    assert not alive(hostile.pid)
    errors = [line for line in hostile.log_lines() if "internal error" in line]
    assert not errors, f"{len(errors)} internal errors logged, the first: {errors[:1]}"


# -- a second user: the security model -------------------------------------------------------


@pytest.fixture(scope="module")
def other_user() -> tuple[int, int]:
    try:
        entry_ = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", USER], check=True, capture_output=True)
        entry_ = pwd.getpwnam(USER)
    return entry_.pw_uid, entry_.pw_gid


@dataclass
class Shared:
    """A store some of whose directories a second user owns, mounted with allow_other."""

    base: Path
    store: Path
    outside: Path
    user: tuple[int, int]
    pristine: dict  # coords -> bytes of CASE
    mnt: Path | None = None
    pid: int = 0

    def view(self, *parts: str) -> str:
        return str(self.mnt.joinpath(*parts))

    def as_user(self, function: Callable, *args, timeout: float = WATCHDOG):
        return in_child(function, *args, user=self.user, timeout=timeout)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, gid)


def _many_chunks_array(array: Path) -> None:
    """80 x 64 uint8 in 1-byte chunks: 5120 chunks in two shards (c/0/0 and c/1/0)."""
    array.mkdir()
    (array / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [80, 64], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [40, 64]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, 1], "codecs": [{"name": "bytes"}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}],
        "attributes": {}}))
    for s in (0, 1):
        (array / "c" / str(s)).mkdir(parents=True)
        corpus.write_shard(array / "c" / str(s) / "0", {k: bytes([(s * 2560 + k) % 251 + 1]) for k in range(2560)},
                           2560)


@pytest.fixture(scope="module")
def shared(corpus_store, other_user):
    source, cases = corpus_store
    case = next(c for c in cases if c.name == CASE)
    base = Path(tempfile.mkdtemp(prefix="zarrfs-hostile-", dir="/tmp"))
    base.chmod(0o755)
    uid, gid = other_user
    store, outside = base / "store", base / "outside"
    s = Shared(base, store, outside, other_user, {})
    store.mkdir(mode=0o755)
    outside.mkdir(mode=0o755)
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    # root's: private things, an array with a private shard, a private array, a symlink out
    (store / "private").mkdir(mode=0o700)
    (store / "private" / "secret.txt").write_bytes(SECRET)
    (store / "root-only.txt").write_bytes(SECRET)
    (store / "root-only.txt").chmod(0o600)
    for name in ("rootarray", "privatearray", "sharedarray"):
        shutil.copytree(source / case.path, store / name)
    s.pristine = stored_chunks(store, dataclasses.replace(case, path="rootarray"))
    (store / "rootarray" / "c" / "0" / "0").chmod(0o600)
    (store / "privatearray").chmod(0o700)
    for folder, dirs, files in os.walk(store / "sharedarray"):  # world-writable, and shards (1, *) gone
        os.chmod(folder, 0o777)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 if name != "zarr.json" else 0o644)
    shutil.rmtree(store / "sharedarray" / "c" / "1")
    rootonly = outside / "rootonly"
    rootonly.mkdir(mode=0o700)
    (rootonly / "secret").write_bytes(SECRET * 4)
    (rootonly / "secret").chmod(0o600)
    for key in ("c/0/0", "c/0/1", "c/1/0", "c/1/1", "shard"):
        secret_shard(rootonly / key).chmod(0o600)
    (outside / "victim-dir").mkdir(mode=0o700)
    (outside / "victim-dir" / "victim").write_bytes(SECRET)
    (outside / "victim-dir" / "victim").chmod(0o600)
    (store / "escape").symlink_to(rootonly)
    # the second user's: a home, arrays whose key directory or shard leads out, directories to swap
    home = store / "home"
    home.mkdir(mode=0o755)
    for name in ("arr", "arr2", "scratch"):
        shutil.copytree(source / case.path, home / name)
    for operation in SWAP_OPERATIONS:
        (home / f"w-{operation}").mkdir()
    _chown_tree(home, uid, gid)
    replace_with(home / "arr" / "c", link_to(rootonly / "c"))
    replace_with(home / "arr2" / "c" / "0" / "0", link_to(rootonly / "shard"))
    for link in (home / "arr" / "c", home / "arr2" / "c" / "0" / "0"):
        os.lchown(link, uid, gid)
    _many_chunks_array(store / "many")
    undo = Cleanup()
    try:
        s.mnt = undo.mountpoint(base / "view", create=True)
        result = subprocess.run([*ZARRFS, "mount", str(store), str(s.mnt), "--log-file", str(base / "zarrfs.log"),
                                 "-o", "allow_other", "--max-scratch", "16"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        s.pid = undo.daemon(in_child(daemon_pid, str(s.mnt), on_hang=lambda: undo.undo()))
        yield s
    finally:
        undo.undo()
        if not any(is_mounted(p) for p in base.iterdir()):
            shutil.rmtree(base, ignore_errors=True)


def _access(paths: dict[str, tuple[str, str]]) -> dict:
    """{label: errno} of each (action, path): read, list or stat."""
    actions = {"read": read_file, "list": os.listdir, "stat": os.stat}
    return {label: attempt(actions[action], path) for label, (action, path) in paths.items()}


def test_without_allow_other_nobody_else_gets_in(shared, cleanup):
    mnt = cleanup.mountpoint(shared.base / "view-default", create=True)
    result = subprocess.run([*ZARRFS, "mount", str(shared.store), str(mnt), "--log-file",
                             str(shared.base / "default.log")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cleanup.daemon(in_child(daemon_pid, str(mnt)))
    probes = {"stat": ("stat", str(mnt)), "list": ("list", str(mnt)), "read": ("read", str(mnt / "many" / "zarr.json"))}
    assert shared.as_user(_access, probes) == {k: errno.EACCES for k in probes}
    assert in_child(_access, probes) == {k: 0 for k in probes}  # the mounting user (root)


def test_with_allow_other_backing_permissions_are_enforced(shared):
    v = shared.view
    probes = {
        "list a 0700 directory of root": ("list", v("private")),
        "read a file in it": ("read", v("private", "secret.txt")),
        "read a 0600 file of root": ("read", v("root-only.txt")),
        "read a chunk of a 0600 shard": ("read", v("rootarray", "c", "0", "0")),
        "list a 0700 array of root": ("list", v("privatearray")),
        "read a chunk in it": ("read", v("privatearray", "c", "2", "2")),
        "read through a symlink to a 0700 directory": ("read", v("escape", "secret")),
    }
    assert shared.as_user(_access, probes) == {k: errno.EACCES for k in probes}
    assert in_child(_access, probes) == {k: 0 for k in probes}  # root reads them all
    st = in_child(lambda p: list(os.stat(p))[:5], v("rootarray", "c", "0", "0"))
    assert (stat.S_IMODE(st[0]), st[4]) == (0o600, 0), "a chunk shows its shard's mode and owner"
    data = shared.as_user(lambda p: read_file(p).hex(), v("rootarray", "c", "2", "2"))
    assert bytes.fromhex(data) == shared.pristine[(2, 2)]


def _read_all_chunks(array: str) -> dict:
    found = {}
    for i, j in itertools.product(range(4), range(4)):
        try:
            data = read_file(os.path.join(array, "c", str(i), str(j)))
            found[f"{i}/{j}"] = "SECRET" if SECRET in data else len(data)
        except OSError as error:
            found[f"{i}/{j}"] = errno.errorcode[error.errno]
    return found


def test_symlinks_in_the_store_never_lead_the_daemon_out_of_it(shared):
    home = shared.view("home")
    arr = shared.as_user(_read_all_chunks, os.path.join(home, "arr"))  # c -> a 0700 directory of root
    assert arr == {k: "EIO" for k in arr}, arr
    arr2 = shared.as_user(_read_all_chunks, os.path.join(home, "arr2"))  # c/0/0 -> a 0600 shard of root
    assert {k: arr2[k] for k in ("0/0", "0/1", "1/0", "1/1")} == {k: "EIO" for k in ("0/0", "0/1", "1/0", "1/1")}
    assert "SECRET" not in arr2.values() and arr2["2/2"] == 16

    # a user's symlink made through the mount is followed by the kernel, as that user
    def make_and_follow(link, target):
        os.symlink(target, link)
        return attempt(read_file, link)
    assert shared.as_user(make_and_follow, os.path.join(home, "to-secret"),
                          str(shared.outside / "rootonly" / "secret")) == errno.EACCES

    # a chunk written into the shard that is a symlink: the repack must not merge the target's chunks
    secret_before = (shared.outside / "rootonly" / "shard").read_bytes()

    def write_chunk(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as error:
            return error.errno
        try:
            os.write(fd, b"\x01" * 16)
            return attempt(os.fsync, fd)
        finally:
            attempt(os.close, fd)
    chunk = os.path.join(home, "arr2", "c", "0", "1")
    if shared.as_user(write_chunk, chunk) != errno.EIO:  # (the lookup of a chunk of that shard fails first)
        # buffered: let it land once the shard key is nothing (the unmount must not be left stuck)
        (shared.store / "home" / "arr2" / "c" / "0" / "0").unlink()
        in_child(write_chunk, chunk)
    after = shared.as_user(_read_all_chunks, os.path.join(home, "arr2"))
    assert "SECRET" not in after.values(), after
    assert (shared.outside / "rootonly" / "shard").read_bytes() == secret_before
    assert b"SECRET" not in b"".join(p.read_bytes() for p in (shared.store / "home" / "arr2").rglob("*")
                                     if p.is_file() and not p.is_symlink())


SWAP_OPERATIONS = {
    "list": lambda: os.listdir("."),
    "create": lambda: os.close(os.open("planted", os.O_CREAT | os.O_WRONLY, 0o644)),
    "mkdir": lambda: os.mkdir("planted-dir"),
    "symlink": lambda: os.symlink("x", "planted-link"),
    "rename": lambda: os.rename("victim", "renamed"),
    "unlink": lambda: os.unlink("victim"),
}


def test_a_directory_swapped_for_a_symlink_does_not_lead_the_daemon_out(shared):
    """The kernel keeps a directory's inode and attributes (here: a working directory) while
    its owner turns the backing directory into a symlink out of the store: whatever the
    daemon then does in that directory must stay in the store. One directory per operation
    (the first answer that shows the kernel the new file type ends the inode)."""
    victims = shared.outside / "victim-dir"

    def holds():
        return {p.name: "a symlink" if p.is_symlink() else "a directory" if p.is_dir() else p.read_bytes()
                for p in victims.iterdir()}
    before = holds()

    def swap_then(view_dir, backing_dir, target, operation):
        os.chdir(view_dir)
        os.stat(".")
        os.rename(backing_dir, backing_dir + "-old")
        os.symlink(target, backing_dir)
        try:
            result = SWAP_OPERATIONS[operation]()
        except OSError as error:
            return errno.errorcode[error.errno]
        return result if operation == "list" else "done"
    escapes = []
    for operation in SWAP_OPERATIONS:
        done = shared.as_user(swap_then, shared.view("home", f"w-{operation}"),
                              str(shared.store / "home" / f"w-{operation}"), str(victims), operation)
        after = holds()
        if after != before or (operation == "list" and isinstance(done, list)):
            escapes.append(f"{operation}: {done}; the root-only directory outside the store now holds "
                           f"{ {n: v if isinstance(v, str) else len(v) for n, v in after.items()} }")
        for name in set(after) - set(before):  # undo, so that each operation is judged alone
            path = victims / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for name, data in before.items():
            (victims / name).write_bytes(data)
            (victims / name).chmod(0o600)
    assert not escapes, "\n".join(escapes)


def test_what_a_user_creates_belongs_to_them_with_the_documented_modes(shared):
    uid, gid = shared.user
    home = shared.view("home")
    chunk = bytes(range(16))
    unsharded = {"zarr_format": 3, "node_type": "array", "shape": [8, 8], "data_type": "uint8",
                 "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 4]}},
                 "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                 "fill_value": 0, "codecs": [{"name": "bytes"}], "attributes": {}}

    def create(home, shared_array):
        def write(path, data, mode=0o644, flags=os.O_CREAT | os.O_TRUNC, fsync=True):
            fd = os.open(path, os.O_WRONLY | flags, mode)
            try:
                os.write(fd, data)
                buffered = os.fstat(fd)
                if fsync:
                    os.fsync(fd)
                return [stat.S_IMODE(buffered.st_mode), buffered.st_uid]
            finally:
                os.close(fd)
        os.chdir(home)
        write("made.txt", b"hello", 0o640)
        os.mkdir("made-dir", 0o750)
        os.symlink("made.txt", "made-link")
        os.mkdir("newarr", 0o750)
        write("newarr/zarr.json", json.dumps(unsharded).encode(), fsync=False)
        os.makedirs("newarr/c/0")
        buffered = write("newarr/c/0/0", chunk, 0o600)
        # chunks in root's world-writable array: an existing shard, and a new one
        write(os.path.join(shared_array, "c/0/0"), chunk, flags=os.O_TRUNC)
        os.makedirs(os.path.join(shared_array, "c/2"), exist_ok=True)
        write(os.path.join(shared_array, "c/2/2"), chunk)
        return {"buffered": buffered}
    seen = shared.as_user(create, home, shared.view("sharedarray"))

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = os.lstat(path)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
    b = shared.store / "home"
    problems = [f"{what}: {got}, documented {want}" for what, got, want in [
        ("made.txt", owner_mode(b / "made.txt"), (uid, gid, 0o640)),
        ("made-dir", owner_mode(b / "made-dir"), (uid, gid, 0o750)),
        ("made-link (owner)", owner_mode(b / "made-link")[:2], (uid, gid)),
        ("newarr/zarr.json (owner)", owner_mode(b / "newarr" / "zarr.json")[:2], (uid, gid)),
        ("a chunk in the write buffer shows the mode it was created with", seen["buffered"], [0o600, uid]),
        ("new shard newarr/c/0/0 (zarr.json's owner and mode)", owner_mode(b / "newarr" / "c" / "0" / "0"),
         owner_mode(b / "newarr" / "zarr.json")),
        ("key directory newarr/c (like newarr)", owner_mode(b / "newarr" / "c"), (uid, gid, 0o750)),
        ("key directory newarr/c/0", owner_mode(b / "newarr" / "c" / "0"), (uid, gid, 0o750)),
        ("repacked shard sharedarray/c/0/0 keeps its own", owner_mode(shared.store / "sharedarray/c/0/0"),
         (0, 0, 0o666)),
        ("new key directory sharedarray/c/1 (like c)", owner_mode(shared.store / "sharedarray/c/1"), (0, 0, 0o777)),
        ("new shard sharedarray/c/1/1 (like zarr.json)", owner_mode(shared.store / "sharedarray/c/1/1"),
         (0, 0, 0o644)),
    ] if got != want]
    assert not problems, "\n".join(problems)
    assert corpus.read_shard_chunks(b / "newarr" / "c" / "0" / "0", 4)[0] == chunk
    assert corpus.read_shard_chunks(shared.store / "sharedarray/c/0/0", 4)[0] == chunk


def test_many_open_handles_share_a_few_descriptors(shared):
    paths = [shared.view("many", "c", str(i), str(j)) for i, j in itertools.product(range(80), range(64))][:5000]
    before = len(os.listdir(f"/proc/{shared.pid}/fd"))

    def hold_open(paths, pid):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        values = {os.pread(fd, 1, 0)[0] for fd in fds}
        return len(os.listdir(f"/proc/{pid}/fd")), len(values)
    holding, distinct = in_child(hold_open, paths, shared.pid, timeout=60)
    assert distinct == 251  # each handle reads its own chunk
    assert holding < before + 100, f"{holding} daemon descriptors with 5000 handles open ({before} before)"
    assert len(os.listdir(f"/proc/{shared.pid}/fd")) < before + 70  # keep_open: the last shards read
    assert rss_kib(shared.pid) < RSS_LIMIT_KIB


def _fill(directory: str, prefix: str, files: int, size: int, step: int) -> list[int]:
    """[bytes written, errno that stopped it (0: none)], writing ``files`` files of ``size``."""
    written = 0
    for i in range(files):
        fd = os.open(os.path.join(directory, f"{prefix}{i}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            for _ in range(size // step):
                written += os.write(fd, b"\xab" * step)
        except OSError as error:
            return [written, error.errno]
        finally:
            os.close(fd)
    return [written, 0]


def _remove(directory: str, prefix: str) -> int:
    names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    for name in names:
        os.unlink(os.path.join(directory, name))
    return len(names)


def test_scratch_files_are_bounded_per_user(shared):
    scratch = shared.view("home", "scratch")  # an array directory the user owns: names beside chunks are scratch
    start = rss_kib(shared.pid)
    many = shared.as_user(_fill, scratch, "many-", 80, 256 << 10, 64 << 10)  # 80 x 256 KiB = 20 MiB
    big = shared.as_user(_fill, scratch, "big-", 1, 24 * MiB, MiB)
    others = in_child(_fill, scratch, "root-", 1, 8 * MiB, MiB)  # root, while the user is at the limit
    peak = rss_kib(shared.pid)
    assert shared.as_user(_remove, scratch, "many-") > 0
    again = shared.as_user(_fill, scratch, "again-", 1, 4 * MiB, MiB)
    for prefix in ("big-", "again-", "root-"):
        in_child(_remove, scratch, prefix)
    problems = [what for what, wrong in [
        (f"many small files: {many[0] / MiB:.2f} MiB written, then {errno.errorcode.get(many[1])} "
         "(documented: writes past 16 MiB fail with EDQUOT)", not (many[1] == errno.EDQUOT and 15 * MiB <= many[0] <= 16 * MiB)),
        (f"one big file while at the limit: {big}", big != [0, errno.EDQUOT]),
        (f"another user's scratch writes must still work: {others}", others != [8 * MiB, 0]),
        (f"removing scratch files gives the room back: {again}", again != [4 * MiB, 0]),
        (f"daemon RSS grew {(peak - start) >> 10} MiB", peak - start >= 100 << 10),
    ] if wrong]
    assert not problems, "\n".join(problems)
