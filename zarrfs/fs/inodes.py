"""Inode numbers and lookup counts.

Inode numbers are computed, not handed out, so a name keeps its number for as
long as it exists (across ``forget``, and across remounts too), which keeps
``find``, ``rsync`` and ``tar`` hard-link detection honest:

- a chunk's number encodes its array and coordinates (CHUNK_INODE bit set):
  the node is computed again from the number, so the daemon holds nothing for
  the millions of chunks a ``find`` makes the kernel remember;
- every other name's number is a hash of its view path, and the table holds its
  node while the kernel knows it (those are few: directories, metadata files,
  files being written);
- the names of a hard-linked file share one number: a buffered file keeps it, a
  backing file's is a hash of its inode number in the store.

A rename keeps the kernel's number for the new name, so renamed names are
remembered as exceptions, whatever their kind.
"""

from __future__ import annotations

import hashlib
import math
import stat

import pyfuse3

from .lru import LRU
from .overlay import is_below, moved_path
from .tree import Chunk, Node, Plain, Replaced, Scratch

FIRST_FREE_INODE = pyfuse3.ROOT_INODE + 1
CHUNK_INODE = 1 << 62  # set in chunk numbers; path hashes stay below it (and all fit in int64)
ARRAY_SHIFT = 40  # a chunk number: CHUNK_INODE | array number << 40 | chunk index in the grid
MAX_ARRAYS = 1 << (62 - ARRAY_SHIFT)
VERSIONS_KEPT = 1 << 16


def path_inode(path: str) -> int:
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return max(int.from_bytes(digest, "little") >> 2, FIRST_FREE_INODE)


class InodeTable:
    def __init__(self, tree):
        """``tree`` answers ``root()``, ``chunk_grid(array_key)``, ``chunk_at(array_key, coords)``,
        ``link_inode(node)`` and ``set_link_inode(node, inode)``, and has the ``store``."""
        self._tree = tree
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: tree.root()}
        self._lookups: dict[int, int] = {}
        # Content version at the last open, so the kernel keeps pages only of unchanged
        # files; bounded (a miss only costs a read from the daemon), as the kernel can
        # hold millions of chunk inodes without ever forgetting them.
        self._versions: LRU[tuple] = LRU(VERSIONS_KEPT)
        self._by_path: dict[str, int] = {}  # paths whose number is not their computed one
        self._links: dict[int, set[str]] = {}  # names of hard-linked inodes the kernel knows
        # Array numbers in chunk numbers: a hash of the array's path and grid (a resize
        # makes a new one, so that numbers the kernel holds keep meaning what they meant).
        self._arrays: dict[int, tuple[str, tuple[int, ...]]] = {}
        self._array_numbers: dict[tuple[str, tuple[int, ...]], int | None] = {}

    def node(self, inode: int) -> Node | None:
        node = self._nodes.get(inode)
        if node is None and inode & CHUNK_INODE:
            return self._chunk_of(inode)
        return node

    def inode_of(self, node: Node) -> int:
        """The inode number ``node`` has (or would get); probes past hash collisions."""
        if node.path == "":
            return pyfuse3.ROOT_INODE
        known = self._by_path.get(node.path)
        if known is not None:
            return known
        linked = self._tree.link_inode(node)  # a name of a hard-linked buffered file
        if linked is not None:
            return linked
        backing = self._backing_link(node)
        if backing is not None:
            return backing
        if isinstance(node, Chunk):
            number = self._chunk_number(node)
            taken = self._nodes.get(number)
            if number is not None and (taken is None or (taken.path == node.path and not isinstance(taken, Replaced))):
                return number  # (a number a rename gave another name is taken: hash the path instead)
        inode = path_inode(node.path)
        while inode in self._nodes and (self._nodes[inode].path != node.path
                                        or isinstance(self._nodes[inode], Replaced)):
            inode += 1
        return inode

    def _backing_link(self, node: Node) -> int | None:
        """The number all names of a hard-linked backing file share: made from its identity
        in the store, so they keep sharing it after the kernel forgets them (and remounts)."""
        if not isinstance(node, Plain):
            return None
        try:
            st = self._tree.store.recent_stat(node.path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2 or not st.st_ino:
            return None
        return path_inode(f"\0hard link\0{st.st_ino}")

    def remember(self, node: Node, inode: int | None = None) -> int:
        """Count one kernel reference to ``node`` (whose ``inode_of`` may be given); returns its inode."""
        inode = self.inode_of(node) if inode is None else inode
        if inode == pyfuse3.ROOT_INODE or (inode & CHUNK_INODE and inode not in self._nodes
                                           and self._tree.link_inode(node) is None):
            return inode  # computed again when asked for (a hard link's number is another name's)
        self._nodes[inode] = node  # the newest meaning of the path
        self._lookups[inode] = self._lookups.get(inode, 0) + 1
        if inode == self._backing_link(node):  # its names, so that another means it when this one goes
            self._links.setdefault(inode, set()).add(node.path)
        elif inode != path_inode(node.path):
            self._by_path[node.path] = inode
        return inode

    def forget(self, inode: int, count: int) -> None:
        self._versions.pop(inode)  # only a hint for keeping cached pages
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return
        self._lookups.pop(inode, None)
        for path in self._links.pop(inode, ()):  # its names compute their numbers again
            if self._by_path.get(path) == inode:
                del self._by_path[path]
        if inode != pyfuse3.ROOT_INODE:
            node = self._nodes.pop(inode, None)
            if node is not None and self._by_path.get(node.path) == inode:
                del self._by_path[node.path]

    def rename(self, source: Node, moved: Node, inode: int | None = None) -> None:
        """The kernel keeps the source's inode (``inode``, as it was before the rename) for
        the new name: let it mean ``moved``."""
        known = self._by_path.pop(source.path, None)
        inode = inode or known or self.inode_of(source)
        if inode in self._nodes or inode & CHUNK_INODE:
            self._nodes[inode] = moved
            self._lookups.setdefault(inode, 1)
            self._versions.pop(inode)
            self._by_path[moved.path] = inode
        names = self._links.get(inode)
        if names is not None and source.path in names:  # a hard link's name moved
            names.discard(source.path)
            names.add(moved.path)

    def replaced(self, node: Node, inode: int | None = None, memfile=None) -> None:
        """A rename put another file at ``node``'s name: the kernel's inode of the old
        file (``inode``, as it was before the rename; open somewhere, perhaps) no longer
        means that name."""
        known = self._by_path.pop(node.path, None)
        inode = inode or known or self.inode_of(node)
        self._lookups.setdefault(inode, 1)
        # A hard-linked file keeps its other names (and the kernel their dentries): the
        # names the kernel linked, or (once it forgot them) the buffered file's own names.
        names = self._links.get(inode, set())
        names.discard(node.path)
        names = [*names, *_own_names(memfile, inode)]
        self._nodes[inode] = self._other_name(names, node.path, memfile) or Replaced(node.path)

    def _other_name(self, names, gone: str, memfile) -> Node | None:
        """One of a hard-linked file's other ``names`` (paths, or a buffered file's names)
        that is still that file: a buffered file's must hold its ``memfile``, as a name
        may have been given to another file since."""
        for name in names:
            other = self._tree.resolve(name) if isinstance(name, str) else self._tree.chunk_at(name[1], name[2])
            if other is not None and other.path != gone and (
                    memfile is None or self._tree._memfile(other) is memfile):
                return other
        return None

    def names_of(self, inode: int) -> set[str]:
        """The names the kernel knows of a hard-linked ``inode`` (none for other inodes)."""
        return self._links.get(inode, set())

    def replace(self, inode: int, node: Node) -> None:
        """``inode`` now means ``node`` (its path changed kind under the kernel)."""
        if inode in self._nodes:
            self._nodes[inode] = node

    def link(self, inode: int, source: Node, node: Node) -> int:
        """``node`` is a new name of ``inode`` (a hard link of ``source``): the inode means
        the newest name, as zarr-python 3 links a temporary onto its key, then unlinks
        the temporary; the names are remembered until the kernel forgets the inode."""
        self._nodes[inode] = node
        self._lookups[inode] = self._lookups.get(inode, 0) + 1
        # both names keep the number the kernel knows (a backing file's would now be another)
        self._by_path[node.path] = self._by_path[source.path] = inode
        self._links.setdefault(inode, {source.path}).add(node.path)
        self._tree.set_link_inode(node, inode)
        return inode

    def unlinked(self, node: Node, inode: int, last: bool = False, held: bool = False, memfile=None) -> None:
        """``node``'s name is gone (its ``inode`` as it was before): a hard-linked inode means
        one of its other names. The last name of a file (``last``): a file made at that name
        later is another file, with another number (descriptors open on this one show its
        own attributes)."""
        self._by_path.pop(node.path, None)  # (a file made there later gets its number afresh)
        names = self._links.get(inode)
        # A hard-linked buffered file's names are its own too: the kernel may have forgotten
        # the inode (and this table its names) and learnt it again by other names since
        # (a listing), so that the inode meant the name now gone.
        own = _own_names(memfile, inode)
        if names is None and (last or not own):
            known = self._nodes.get(inode)
            if last and isinstance(node, (Chunk, Scratch, Plain)) and (held or (
                    isinstance(known, (Chunk, Scratch, Plain)) and known.path == node.path)):
                self._nodes[inode] = Replaced(node.path)  # (``held``: open, so the kernel holds it)
                self._lookups.setdefault(inode, 1)
            return
        if names is not None:
            names.discard(node.path)
        other = self._other_name([*(names or ()), *own], node.path, memfile)
        if other is not None:
            self._nodes[inode] = other
        elif inode in self._nodes and self._nodes[inode].path == node.path:
            # its last name went: a file made at that name later is another file (the
            # descriptors still open on this one show its own attributes, nlink 0)
            self._nodes[inode] = Replaced(node.path)

    def removed_directory(self, node: Node, inode: int) -> None:
        """Directory ``node`` (numbered ``inode``) was removed. The kernel keeps its inode,
        dead (nothing can be made in it), while something holds it (a descriptor open below
        it): a directory made at that name later is another directory, with another number."""
        self._by_path.pop(node.path, None)
        if inode in self._nodes:
            self._nodes[inode] = Replaced(node.path)

    def move_tree(self, old: str, new: str, resolve) -> None:
        """Directory ``old`` was renamed to ``new``: the inodes the kernel holds below it
        mean the moved names (``resolve(path) -> Node | None``), which keep the kernel's
        numbers (as a renamed file does), and chunk numbers of arrays below it stay what
        they were."""
        for path in [p for p in self._by_path if is_below(p, old) and p != old]:
            self._by_path[moved_path(path, old, new)] = self._by_path.pop(path)
        for names in self._links.values():  # the names of hard-linked inodes moved too
            for path in [p for p in names if is_below(p, old) and p != old]:
                names.discard(path)
                names.add(moved_path(path, old, new))
        for number, (array_key, grid) in list(self._arrays.items()):
            if is_below(array_key, old):
                moved = moved_path(array_key, old, new)
                self._arrays[number] = (moved, grid)
                self._array_numbers[(moved, grid)] = self._array_numbers.pop((array_key, grid), number)
        for inode, node in list(self._nodes.items()):
            # (a file that lost its name keeps meaning its file, not what now has that name)
            if is_below(node.path, old) and node.path != old and not isinstance(node, Replaced):
                # (nothing there: the old path is no longer its name, whatever is made there later)
                fresh = resolve(moved_path(node.path, old, new))
                self._nodes[inode] = fresh if fresh is not None else Replaced(node.path)
                if fresh is not None and self.inode_of(fresh) != inode:
                    self._by_path[fresh.path] = inode  # (a path hash of its old name)

    def resolve_again(self, prefix: str, resolve) -> None:
        """Nodes below ``prefix`` are looked up again by path (``resolve(path) -> Node | None``)."""
        for inode, node in list(self._nodes.items()):
            if isinstance(node, Replaced):
                continue  # a file that lost its name: what has that name now is another file
            if node.path.startswith(prefix + "/") if prefix else node.path:
                fresh = resolve(node.path)
                if fresh is not None and fresh.path == node.path:
                    self._nodes[inode] = fresh

    def swap_version(self, inode: int, version: tuple) -> tuple | None:
        """Record the version of the content just opened; return the previous one."""
        previous = self._versions.get(inode)
        self._versions.put(inode, version)
        return previous

    def __len__(self) -> int:
        """Inodes held in memory (chunks the kernel knows are not among them)."""
        return len(self._nodes)

    # -- chunk numbers ------------------------------------------------------------

    def chunk_numbers(self, array_key: str, dir_path: str, names: list[bytes],
                      indices: list[int] | None) -> list[int | None]:
        """``inode_of`` of stored chunks of one array that ``dir_path`` lists (``indices``: their
        C-order indices in the chunk grid), at once; None where a chunk needs ``inode_of``
        itself: its name got a number by a rename, or its number is another name's."""
        grid = self._tree.chunk_grid(array_key)
        array = None if grid is None or indices is None else self._array_number(array_key, grid)
        if array is None:
            return [None] * len(names)
        base = CHUNK_INODE | array << ARRAY_SHIFT
        numbers = [None if base + i in self._nodes else base + i for i in indices]
        if self._by_path:
            prefix = dir_path + "/" if dir_path else ""
            numbers = [None if prefix + name.decode("utf-8", "surrogateescape") in self._by_path else number
                       for name, number in zip(names, numbers)]
        return numbers

    def _array_number(self, array_key: str, grid: tuple[int, ...]) -> int | None:
        array = self._array_numbers.get((array_key, grid), -1)
        if array == -1:
            array = self._array_numbers[(array_key, grid)] = self._new_array_number(array_key, grid)
        return array

    def _chunk_number(self, node: Chunk) -> int | None:
        grid = self._tree.chunk_grid(node.array)
        if grid is None or len(node.coords) != len(grid):
            return None
        array = self._array_number(node.array, grid)
        if array is None:
            return None
        index = 0
        for i, n in zip(node.coords, grid):
            index = index * n + i
        return CHUNK_INODE | array << ARRAY_SHIFT | index

    def _new_array_number(self, array_key: str, grid: tuple[int, ...]) -> int | None:
        if math.prod(grid) > 1 << ARRAY_SHIFT:
            return None
        array = path_inode(f"{array_key}\0{grid}") % MAX_ARRAYS
        if self._arrays.setdefault(array, (array_key, grid)) != (array_key, grid):
            return None  # two arrays with one number: the second one's chunks hash their paths
        return array

    def _chunk_of(self, inode: int) -> Node | None:
        known = self._arrays.get((inode & ~CHUNK_INODE) >> ARRAY_SHIFT)
        if known is None:
            return None
        array_key, grid = known
        index = inode & ((1 << ARRAY_SHIFT) - 1)
        coords = []
        for n in reversed(grid):
            index, i = divmod(index, n)
            coords.append(i)
        return self._tree.chunk_at(array_key, tuple(reversed(coords)))


def _own_names(memfile, inode: int) -> list:
    """A buffered file's names, if the kernel knows it by ``inode``: scratch paths, and
    chunk names (``("chunk", array, coords)``) as ``_other_name`` takes them."""
    if memfile is None or memfile.inode != inode:
        return []
    return [n[1] if n[0] == "scratch" else n for n in memfile.names]
