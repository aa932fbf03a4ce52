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
    # The generation last packed into the shard of each chunk name: hard links may put
    # one file's names in different shards, each repacked on its own.
    flushed: dict = field(default_factory=dict)
    names: set = field(default_factory=set)
    handles: int = 0  # open file handles
    # While a file is open for writing, flushes that no fsync asked for take its last
    # closed or fsync'ed content (SPEC §6), never a state between open(O_TRUNC) and write.
    writers: int = 0  # open writable handles
    settled: bytes | None = None  # content at the last close or fsync while writers > 0
    settled_generation: int = -1
    pending: bool = False  # a chunk-like file outside any array: a chunk once its metadata arrives
    inode: int | None = None  # the one inode number of its names, once hard-linked

    def open_for_writing(self, created: bool = False) -> None:
        """A writable handle opens; a file just created has no settled content yet."""
        if self.writers == 0:
            self.settled, self.settled_generation = (None, -1) if created else (bytes(self.data), self.generation)
        self.writers += 1

    def settle(self) -> None:
        """close() or fsync(): what is written now may reach the store."""
        self.settled, self.settled_generation = bytes(self.data), self.generation

    def close_for_writing(self) -> None:
        self.writers -= 1
        if self.writers == 0:
            self.settled, self.settled_generation = None, -1

    def flushable(self) -> tuple[bytes, int] | None:
        """``(content, generation)`` a flush may store now, or None (not settled yet)."""
        if self.writers == 0:
            return bytes(self.data), self.generation
        if self.settled is None:
            return None
        return self.settled, self.settled_generation

    def in_shard(self, name: tuple) -> bool:
        """Whether the shard of chunk name ``name`` holds this file's current content."""
        return self.flushed.get(name) == self.generation

    def unflushed_names(self) -> list[tuple]:
        """Chunk names whose shard does not hold the current content yet."""
        return [n for n in self.names if n[0] == "chunk" and not self.in_shard(n)]

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


def is_below(path: str, directory: str) -> bool:
    """Whether view path ``path`` is ``directory`` or lies below it."""
    return path == directory or path.startswith(directory + "/")


def moved_path(path: str, old: str, new: str) -> str:
    """``path`` (at or below ``old``) after ``old`` was renamed to ``new``."""
    return new + path[len(old):]


def relative_parts(path: str, directory: str) -> tuple[str, ...]:
    """The components of ``path`` below ``directory`` (() when it is not below it)."""
    if not directory:
        return tuple(path.split("/")) if path else ()
    return tuple(path[len(directory) + 1:].split("/")) if path.startswith(directory + "/") else ()


def chunk_name(array_key: str, coords: tuple[int, ...]) -> tuple:
    return ("chunk", array_key, tuple(coords))


def scratch_name(path: str) -> tuple:
    return ("scratch", path)


class Overlay:
    def __init__(self):
        self.chunks: dict[str, dict[tuple[int, ...], MemFile | None]] = {}  # array -> coords -> file
        self.scratch: dict[str, MemFile] = {}  # view path -> file
        self.directories: set[str] = set()  # key directories made by mkdir, by view path
        # Key directories removed by rmdir whose backing shard directory still exists (its
        # shards keep other chunks, or are not repacked yet): hidden until written under again.
        self.removed_directories: set[str] = set()
        # Chunk files on disk being adopted (metadata arrived after them): array -> coords ->
        # the staged file's key, deleted by the repack that stores the chunk.
        self.staged: dict[str, dict[tuple[int, ...], str]] = {}

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
        memfile.flushed.pop(name, None)  # a new name: its shard does not hold this file

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
            previous.flushed.pop(name, None)

    def move_tree(self, old: str, new: str) -> None:
        """A directory was renamed: what is buffered below it follows it."""
        for array_key in [a for a in self.chunks if is_below(a, old)]:
            files = self.chunks.pop(array_key)
            moved = moved_path(array_key, old, new)
            self.chunks[moved] = files
            for coords, memfile in files.items():
                if memfile is not None:
                    old_name, new_name = chunk_name(array_key, coords), chunk_name(moved, coords)
                    memfile.names.discard(old_name)
                    memfile.names.add(new_name)
                    if old_name in memfile.flushed:  # its shard moved with the directory
                        memfile.flushed[new_name] = memfile.flushed.pop(old_name)
        for path in [p for p in self.scratch if is_below(p, old)]:
            memfile = self.scratch.pop(path)
            memfile.names.discard(scratch_name(path))
            self.scratch[moved_path(path, old, new)] = memfile
            memfile.names.add(scratch_name(moved_path(path, old, new)))
        self.directories = {moved_path(d, old, new) if is_below(d, old) else d for d in self.directories}
        for array_key in [a for a in self.staged if is_below(a, old)]:
            self.staged[moved_path(array_key, old, new)] = {
                c: moved_path(k, old, new) for c, k in self.staged.pop(array_key).items()}
        self.removed_directories = {moved_path(d, old, new) if is_below(d, old) else d
                                    for d in self.removed_directories}

    def restore_directories(self, path: str) -> None:
        """``path`` and the key directories above it exist again (written under, made)."""
        while path in self.removed_directories or "/" in path:
            self.removed_directories.discard(path)
            path = path.rpartition("/")[0]

    def forget_removed_directories(self, array_key: str) -> None:
        """A new array at ``array_key``: its key directories are what its store says."""
        self.removed_directories = {d for d in self.removed_directories if not is_below(d, array_key)}

    def drop_tree(self, directory: str) -> None:
        """An empty directory was replaced by a rename: forget what was buffered below it
        (deletions not yet repacked, key directories made or removed)."""
        for array_key in [a for a in self.chunks if is_below(a, directory)]:
            for coords in list(self.chunks[array_key]):
                self.forget(chunk_name(array_key, coords))
        for path in [p for p in self.scratch if is_below(p, directory)]:
            self.forget(scratch_name(path))
        self.directories = {d for d in self.directories if not is_below(d, directory)}
        self.removed_directories = {d for d in self.removed_directories if not is_below(d, directory)}
        for array_key in [a for a in self.staged if is_below(a, directory)]:
            del self.staged[array_key]

    def chunks_of(self, array_key: str) -> dict[tuple[int, ...], MemFile | None]:
        return self.chunks.get(array_key, {})

    def scratch_in(self, directory: str) -> dict[str, MemFile]:
        """Scratch files directly in view directory ``directory``, by name."""
        prefix = directory + "/" if directory else ""
        return {path[len(prefix):]: f for path, f in self.scratch.items()
                if path.startswith(prefix) and "/" not in path[len(prefix):]}

    def dirty_bytes(self) -> int:
        return sum(len(f.data) for array_key, files in self.chunks.items() for coords, f in files.items()
                   if f is not None and not f.in_shard(chunk_name(array_key, coords)))

    def pending_bytes(self) -> int:
        return sum(len(f.data) for f in self.scratch.values() if f.pending)
