"""Inode numbers and lookup counts.

An inode number is a hash of the view path, so a path keeps its number for as
long as it exists (across ``forget``, and across remounts too), which keeps
``find``, ``rsync`` and ``tar`` hard-link detection honest without a table that
grows with every chunk ever seen. The table holds only nodes the kernel knows.
"""

from __future__ import annotations

import hashlib

import pyfuse3

from .tree import Node

FIRST_FREE_INODE = pyfuse3.ROOT_INODE + 1


def path_inode(path: str) -> int:
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return max(int.from_bytes(digest, "little") >> 1, FIRST_FREE_INODE)  # >> 1: fits in int64 too


class InodeTable:
    def __init__(self, root: Node):
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self._lookups: dict[int, int] = {}
        self._versions: dict[int, tuple] = {}  # content version at the last open
        self._by_path: dict[str, int] = {}  # the inode the kernel knows each path by

    def node(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def inode_of(self, node: Node) -> int:
        """The inode number ``node`` has (or would get); probes past hash collisions."""
        if node.path == "":
            return pyfuse3.ROOT_INODE
        known = self._by_path.get(node.path)
        if known is not None:
            return known
        inode = path_inode(node.path)
        while inode in self._nodes and self._nodes[inode].path != node.path:
            inode += 1
        return inode

    def remember(self, node: Node) -> int:
        """Count one kernel reference to ``node``; returns its inode."""
        inode = self.inode_of(node)
        if inode != pyfuse3.ROOT_INODE:
            self._nodes[inode] = node  # the newest meaning of the path
            self._lookups[inode] = self._lookups.get(inode, 0) + 1
            self._by_path[node.path] = inode
        return inode

    def forget(self, inode: int, count: int) -> None:
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
        else:
            self._lookups.pop(inode, None)
            self._versions.pop(inode, None)
            if inode != pyfuse3.ROOT_INODE:
                node = self._nodes.pop(inode, None)
                if node is not None and self._by_path.get(node.path) == inode:
                    del self._by_path[node.path]

    def rename(self, source: Node, moved: Node) -> None:
        """The kernel keeps the source's inode for the new name: let it mean ``moved``."""
        inode = self._by_path.pop(source.path, None)
        if inode is not None and inode in self._nodes:
            self._nodes[inode] = moved
            self._versions.pop(inode, None)
            self._by_path[moved.path] = inode

    def resolve_again(self, prefix: str, resolve) -> None:
        """Nodes below ``prefix`` are looked up again by path (``resolve(path) -> Node | None``)."""
        for inode, node in list(self._nodes.items()):
            if node.path.startswith(prefix + "/") if prefix else node.path:
                fresh = resolve(node.path)
                if fresh is not None and fresh.path == node.path:
                    self._nodes[inode] = fresh

    def swap_version(self, inode: int, version: tuple) -> tuple | None:
        """Record the version of the content just opened; return the previous one."""
        previous = self._versions.get(inode)
        self._versions[inode] = version
        return previous

    def __len__(self) -> int:
        return len(self._nodes)
