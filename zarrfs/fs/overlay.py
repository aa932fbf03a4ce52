"""The write buffer: what was written through the mount and is not in a shard yet.

Chunks of arrays zarrfs presents, and scratch files beside them (temporary
files and locks of writers), live here as ``MemFile`` objects until the
repacker packs the chunks into shards. A ``MemFile`` may have several names
(``link`` + ``unlink`` is how zarr-python 3 renames), and open handles keep
pointing at it across renames, as a POSIX inode would.

Names are ``("chunk", array_key, coords)`` or ``("scratch", view_path)``. A
chunk mapped to ``DELETED`` was removed through the mount and may still be in a
shard on disk.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

DELETED = None  # overlay value of a chunk removed through the mount


@dataclass(eq=False)
class MemFile:
    data: bytearray = field(default_factory=bytearray)
    mode: int = stat.S_IFREG | 0o644
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    mtime_ns: int = field(default_factory=time.time_ns)
    atime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)
    generation: int = 0  # bumped by every change, so a flush knows what it wrote
    flushed_generation: int = -1  # the generation last packed into a shard
    names: set = field(default_factory=set)
    handles: int = 0  # open file handles

    def write(self, offset: int, data: bytes) -> int:
        end = offset + len(data)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data
        self.changed()
        return len(data)

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))
        self.changed()

    def changed(self) -> None:
        self.generation += 1
        self.mtime_ns = self.ctime_ns = time.time_ns()


def chunk_name(array_key: str, coords: tuple[int, ...]) -> tuple:
    return ("chunk", array_key, tuple(coords))


def scratch_name(path: str) -> tuple:
    return ("scratch", path)


class Overlay:
    def __init__(self):
        self.chunks: dict[str, dict[tuple[int, ...], MemFile | None]] = {}  # array -> coords -> file
        self.scratch: dict[str, MemFile] = {}  # view path -> file
        self.directories: set[str] = set()  # key directories made by mkdir, by view path

    def get(self, name: tuple) -> MemFile | None:
        if name[0] == "chunk":
            return self.chunks.get(name[1], {}).get(name[2])
        return self.scratch.get(name[1])

    def has(self, name: tuple) -> bool:
        if name[0] == "chunk":
            return name[2] in self.chunks.get(name[1], {})
        return name[1] in self.scratch

    def bind(self, name: tuple, memfile: MemFile) -> None:
        """Give ``memfile`` the name ``name`` (replacing what had it)."""
        self.unbind(name)
        if name[0] == "chunk":
            self.chunks.setdefault(name[1], {})[name[2]] = memfile
        else:
            self.scratch[name[1]] = memfile
        memfile.names.add(name)

    def unbind(self, name: tuple) -> None:
        """Remove a name. A chunk that may be in a shard is remembered as DELETED."""
        self.forget(name)
        if name[0] == "chunk":
            self.chunks.setdefault(name[1], {})[name[2]] = DELETED

    def forget(self, name: tuple) -> None:
        """Drop a name entirely: the backing store holds what it should."""
        if name[0] == "chunk":
            previous = self.chunks.get(name[1], {}).pop(name[2], None)
            if name[1] in self.chunks and not self.chunks[name[1]]:
                del self.chunks[name[1]]
        else:
            previous = self.scratch.pop(name[1], None)
        if previous is not None:
            previous.names.discard(name)

    def chunks_of(self, array_key: str) -> dict[tuple[int, ...], MemFile | None]:
        return self.chunks.get(array_key, {})

    def scratch_in(self, directory: str) -> dict[str, MemFile]:
        """Scratch files directly in view directory ``directory``, by name."""
        prefix = directory + "/" if directory else ""
        return {path[len(prefix):]: f for path, f in self.scratch.items()
                if path.startswith(prefix) and "/" not in path[len(prefix):]}

    def dirty_bytes(self) -> int:
        return sum(len(f.data) for files in self.chunks.values() for f in files.values()
                   if f is not None and f.generation != f.flushed_generation)
