"""Chunk key encodings: grid coordinates <-> store keys <-> path components.

A key such as ``c/1/2`` is a path of several components when the separator is
``/``, and a single file name (``c.1.2``) when it is ``.``. The mounted tree is
navigated one path component at a time, so besides whole keys this module also
parses key *prefixes* (the directories ``c`` and ``c/1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


class KeyEncodingError(ValueError):
    """The metadata names a chunk key encoding we do not know."""


def parse_index(text: str) -> int | None:
    """A canonical non-negative decimal integer, or None.

    ``01`` and ``+1`` are rejected so that every chunk has exactly one name.
    """
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        return None
    return int(text)


DECIMALS_BITS = 16  # names of indices below 2**16 come from a table made once


@lru_cache(maxsize=DECIMALS_BITS + 1)
def _decimals(bits: int) -> list[bytes]:
    """``str(i).encode()`` for every ``i < 2**bits``: the names in directories of chunk keys."""
    return [str(i).encode() for i in range(1 << bits)]


@dataclass(frozen=True)
class ChunkKeyEncoding:
    name: str  # "default" or "v2"
    separator: str  # "/" or "."

    @classmethod
    def from_json(cls, doc: object) -> ChunkKeyEncoding:
        """Parse a zarr.json ``chunk_key_encoding`` value (a dict or a bare name)."""
        if isinstance(doc, str):
            doc = {"name": doc}
        if not isinstance(doc, dict) or doc.get("name") not in ("default", "v2"):
            raise KeyEncodingError(f"unknown chunk_key_encoding {doc!r}")
        config = doc.get("configuration") or {}
        default_separator = "/" if doc["name"] == "default" else "."
        separator = config.get("separator", default_separator)
        if separator not in ("/", "."):
            raise KeyEncodingError(f"unknown chunk key separator {separator!r}")
        return cls(doc["name"], separator)

    @property
    def _prefix(self) -> tuple[str, ...]:
        return ("c",) if self.name == "default" else ()

    def encode(self, coords: tuple[int, ...]) -> str:
        """The store key of the chunk at ``coords`` (relative to the array)."""
        parts = self._prefix + tuple(str(i) for i in coords)
        if not parts:  # a 0-d array under the v2 encoding
            return "0"
        return self.separator.join(parts)

    def components(self, coords: tuple[int, ...]) -> tuple[str, ...]:
        """The key of ``coords`` as path components."""
        return tuple(self.encode(coords).split("/"))

    def last_components(self, coords) -> list[bytes]:
        """The last path component of the key of each of ``coords`` (a numpy array (n, ndim)),
        as bytes: the names a directory of chunk keys lists (a listing names many at once)."""
        if self.separator == "/" and coords.shape[1] and len(coords):
            last = coords[:, -1]
            bits = int(last.max()).bit_length()
            if bits <= DECIMALS_BITS:
                decimals = _decimals(bits)
                return [decimals[i] for i in last.tolist()]
            return [str(i).encode() for i in last.tolist()]
        return [self.encode(tuple(c)).encode() for c in coords.tolist()]

    def prefix_components(self, coords: tuple[int, ...]) -> tuple[str, ...]:
        """The directory components naming a coordinate prefix (``/`` separator only)."""
        return self._prefix + tuple(str(i) for i in coords)

    def depth(self, ndim: int) -> int:
        """How many path components a chunk key of an ``ndim`` array has."""
        if self.separator == "." or ndim == 0:
            return 1
        return len(self._prefix) + ndim

    def decode_prefix(self, parts: tuple[str, ...], ndim: int) -> tuple[int, ...] | None:
        """The coordinates named by the first ``len(parts)`` components of a key.

        Returns None when ``parts`` cannot start a chunk key of this encoding.
        For ``parts`` of full depth the result has ``ndim`` coordinates.
        """
        if not parts or len(parts) > self.depth(ndim):
            return None
        if self.separator == "." or ndim == 0:
            return self._decode_whole(parts[0], ndim)
        if self._prefix:
            if parts[0] != "c":
                return None
            parts = parts[1:]
        coords = tuple(parse_index(p) for p in parts)
        return None if None in coords else coords

    def _decode_whole(self, key: str, ndim: int) -> tuple[int, ...] | None:
        if ndim == 0:
            return () if key == self.encode(()) else None
        fields = key.split(self.separator)
        if self._prefix:
            if fields[0] != "c":
                return None
            fields = fields[1:]
        if len(fields) != ndim:
            return None
        coords = tuple(parse_index(f) for f in fields)
        return None if None in coords else coords

    def to_json(self) -> dict:
        return {"name": self.name, "configuration": {"separator": self.separator}}
