"""Array metadata: how an array's chunks lie in the store, and its unsharded view.

Only the *structure* of the sharding codec is interpreted here (shard and chunk
shapes, index format, key encoding). The inner codec chain is copied verbatim
into the view's metadata: zarrfs serves chunk bytes without decoding them, so it
does not need to understand (or even know) the codecs a writer used. That is why
we parse the JSON ourselves instead of through ``zarr.core.metadata``, which
rejects codecs that are not registered in this Python process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass
from functools import cached_property

from .keys import ChunkKeyEncoding, KeyEncodingError
from .shard_index import IndexFormat

SHARDING = "sharding_indexed"
# Limits no real array reaches, checked before anything is allocated for an array: past
# them its directory shows as plain files (SPEC §7). An index of 2**22 entries is 64 MiB,
# the size of the whole index cache.
MAX_DIMENSIONS = 32
MAX_CHUNKS_PER_SHARD = 1 << 22
MAX_EXTENT = 1 << 62  # coordinates stay numpy int64


class MetadataError(ValueError):
    """Metadata that is malformed or uses sharding in a way zarrfs cannot serve."""


@dataclass(frozen=True)
class ArrayLayout:
    """Where an array's chunks are, as the mount sees it.

    ``levels`` describes each level of (possibly nested) sharding, outermost
    first; the view flattens them so that the innermost chunks are the files.
    An unsharded array has no levels: each "shard" file is one whole chunk.
    """

    shape: tuple[int, ...]
    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]  # the innermost chunk shape
    levels: tuple[IndexFormat, ...]
    key_encoding: ChunkKeyEncoding
    view_document: dict  # the unsharded equivalent metadata

    @property
    def is_sharded(self) -> bool:
        return bool(self.levels)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property  # asked on every lookup and read
    def chunk_grid(self) -> tuple[int, ...]:
        """Number of (innermost) chunks along each axis."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunk_shape))

    @cached_property  # asked on every lookup and read
    def shard_grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.shard_shape))

    @cached_property  # asked on every lookup and read
    def chunks_per_shard(self) -> tuple[int, ...]:
        """Innermost chunks per shard along each axis, all levels together."""
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape))

    def in_grid(self, coords: tuple[int, ...]) -> bool:
        return len(coords) == self.ndim and all(0 <= i < n for i, n in zip(coords, self.chunk_grid))

    def shard_of(self, coords: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(i // n for i, n in zip(coords, self.chunks_per_shard))

    def local_coords(self, coords: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The chunk's position inside the shard at each level, outermost first."""
        remaining = tuple(i % n for i, n in zip(coords, self.chunks_per_shard))
        result = []
        for depth in range(len(self.levels)):
            below = self.chunks_below(depth)
            result.append(tuple(r // b for r, b in zip(remaining, below)))
            remaining = tuple(r % b for r, b in zip(remaining, below))
        return result

    def chunks_below(self, depth: int) -> tuple[int, ...]:
        """How many innermost chunks one chunk of level ``depth`` holds, per axis."""
        return self._chunks_below[depth]

    @cached_property
    def _chunks_below(self) -> tuple[tuple[int, ...], ...]:
        result = []
        for depth in range(len(self.levels)):
            below = [1] * self.ndim
            for level in self.levels[depth + 1 :]:
                below = [b * n for b, n in zip(below, level.chunks_per_shard)]
            result.append(tuple(below))
        return tuple(result)


def json_bytes(doc) -> bytes:
    """How zarrfs writes and shows v3 metadata documents."""
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_array_document(doc: object) -> ArrayLayout | None:
    """Interpret a parsed ``zarr.json``: an array's layout, or None for a group.

    Raises MetadataError when the document is malformed (of whatever wrong types),
    or sharded in a way zarrfs cannot serve.
    """
    with _malformed_as_metadata_error():
        return _parse_array_document(doc)


@contextlib.contextmanager
def _malformed_as_metadata_error():
    """Metadata of whatever wrong types (a string where a dict belongs) is malformed metadata."""
    try:
        yield
    except MetadataError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as error:
        raise MetadataError(f"malformed metadata ({type(error).__name__}: {error})") from None


def _parse_array_document(doc: object) -> ArrayLayout | None:
    if not isinstance(doc, dict):
        raise MetadataError("zarr.json is not a JSON object")
    if doc.get("zarr_format") != 3:
        raise MetadataError(f"zarr_format is {doc.get('zarr_format')!r}, not 3")
    if doc.get("node_type") == "group":
        return None
    if doc.get("node_type") != "array":
        raise MetadataError(f"node_type {doc.get('node_type')!r} is neither array nor group")
    shape = _int_tuple(doc.get("shape"), "shape")
    _check_limits(shape)
    chunk_shape = _regular_chunk_shape(doc.get("chunk_grid"), len(shape))
    codecs = _codec_list(doc.get("codecs"), "codecs")
    key_encoding = _key_encoding(doc.get("chunk_key_encoding", "default"))
    if not any(name == SHARDING for name, _ in codecs):
        return ArrayLayout(shape, chunk_shape, chunk_shape, (), key_encoding, doc)
    levels, inner_shape, inner_codecs = _sharding_levels(codecs, chunk_shape)
    _check_limits(shape, levels)
    view = copy.deepcopy(doc)
    view["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(inner_shape)}}
    view["codecs"] = inner_codecs
    return ArrayLayout(shape, chunk_shape, inner_shape, levels, key_encoding, view)


def with_consolidated(doc: dict, translate) -> dict | None:
    """A group document whose inline consolidated metadata has each array entry replaced
    by ``translate(path, entry)`` (which returns the entry to keep); None when nothing
    changes. Consolidated metadata must say what the arrays' own zarr.json files say,
    or readers that trust it (xarray's default) decode with the wrong codecs."""
    consolidated = doc.get("consolidated_metadata")
    if not isinstance(consolidated, dict) or not isinstance(consolidated.get("metadata"), dict):
        return None
    entries = {path: translate(path, entry) if isinstance(entry, dict) and entry.get("node_type") == "array"
               else entry for path, entry in consolidated["metadata"].items()}
    if entries == consolidated["metadata"]:
        return None
    return {**doc, "consolidated_metadata": {**consolidated, "metadata": entries}}


def unsharded_entry(path: str, entry: dict) -> dict:
    """A consolidated array entry as the v3 view shows that array (unsharded)."""
    try:
        layout = parse_array_document(entry)
    except MetadataError:
        return entry
    return layout.view_document if layout is not None and layout.is_sharded else entry


PROTOTYPE_KEYS = ("shard_format", "shards")


def parse_v2_sharded(zarray: object) -> ArrayLayout | None:
    """The layout of a ``.zarray`` in the Zarr v2 sharding prototype format, else None.

    That format keeps the v2 metadata and adds ``"shard_format": "indexed"`` and
    ``"shards"`` (chunks per shard); each shard ends with an index of
    little-endian uint64 (offset, nbytes) pairs in C order, without checksum.
    """
    with _malformed_as_metadata_error():
        return _parse_v2_sharded(zarray)


def _parse_v2_sharded(zarray: object) -> ArrayLayout | None:
    if not isinstance(zarray, dict) or "shard_format" not in zarray:
        return None
    if zarray["shard_format"] != "indexed":
        raise MetadataError(f"unknown shard_format {zarray['shard_format']!r}")
    shape = _int_tuple(zarray.get("shape"), "shape")
    chunks = _int_tuple(zarray.get("chunks"), "chunks")
    per_shard = _int_tuple(zarray.get("shards"), "shards")
    if not (len(shape) == len(chunks) == len(per_shard)) or 0 in chunks or 0 in per_shard:
        raise MetadataError(f"shape {shape}, chunks {chunks} and shards {per_shard} do not fit together")
    separator = zarray.get("dimension_separator") or "."
    key_encoding = _key_encoding({"name": "v2", "configuration": {"separator": separator}})
    view = {k: v for k, v in zarray.items() if k not in PROTOTYPE_KEYS}
    level = IndexFormat(per_shard, "little", False, "end")
    _check_limits(shape, (level,))
    shard_shape = tuple(c * n for c, n in zip(chunks, per_shard))
    return ArrayLayout(shape, shard_shape, chunks, (level,), key_encoding, view)


def _check_limits(shape: tuple[int, ...], levels: tuple[IndexFormat, ...] = ()) -> None:
    if len(shape) > MAX_DIMENSIONS:
        raise MetadataError(f"{len(shape)} dimensions: more than the {MAX_DIMENSIONS} zarrfs serves")
    if any(n > MAX_EXTENT for n in shape):
        raise MetadataError(f"shape {shape}: an extent past 2**62")
    per_shard = math.prod(level.n_chunks for level in levels)
    if per_shard > MAX_CHUNKS_PER_SHARD:
        raise MetadataError(f"{per_shard} chunks per shard: more than the {MAX_CHUNKS_PER_SHARD} zarrfs serves")


def _key_encoding(doc) -> ChunkKeyEncoding:
    try:
        return ChunkKeyEncoding.from_json(doc)
    except KeyEncodingError as error:
        raise MetadataError(str(error)) from None


def _sharding_levels(codecs, shard_shape):
    """Walk nested ``sharding_indexed`` codecs down to the innermost chunks."""
    levels = []
    while True:
        if len(codecs) != 1 or codecs[0][0] != SHARDING:
            names = [name for name, _ in codecs]
            if SHARDING in names:
                raise MetadataError(f"sharding_indexed combined with other codecs {names}")
            break
        config = codecs[0][1]
        if not isinstance(config, dict):
            raise MetadataError("sharding_indexed has no configuration")
        chunk_shape = _int_tuple(config.get("chunk_shape"), "sharding chunk_shape")
        if len(chunk_shape) != len(shard_shape) or any(
            c <= 0 or s % c for s, c in zip(shard_shape, chunk_shape)
        ):
            raise MetadataError(f"shard shape {shard_shape} is not a multiple of chunk shape {chunk_shape}")
        levels.append(_index_format(config, tuple(s // c for s, c in zip(shard_shape, chunk_shape))))
        raw_codecs = config.get("codecs")
        codecs = _codec_list(raw_codecs, "sharding codecs")
        shard_shape = chunk_shape
    return tuple(levels), shard_shape, raw_codecs


def _index_format(config: dict, chunks_per_shard: tuple[int, ...]) -> IndexFormat:
    location = config.get("index_location", "end")
    if location not in ("start", "end"):
        raise MetadataError(f"unknown index_location {location!r}")
    index_codecs = _codec_list(config.get("index_codecs"), "index_codecs")
    names = [name for name, _ in index_codecs]
    if names not in (["bytes"], ["bytes", "crc32c"]):
        raise MetadataError(
            f"index_codecs {names} are not supported (only [bytes] or [bytes, crc32c]:"
            " a compressed index has no fixed size)"
        )
    endian = (index_codecs[0][1] or {}).get("endian", "little")
    if endian not in ("little", "big"):
        raise MetadataError(f"unknown index endian {endian!r}")
    return IndexFormat(chunks_per_shard, endian, names[-1] == "crc32c", location)


def _codec_list(raw, what: str) -> list[tuple[str, dict | None]]:
    """``(name, configuration)`` pairs of a codec list; a codec may be a bare name."""
    if not isinstance(raw, list):
        raise MetadataError(f"{what} is not a list")
    result = []
    for codec in raw:
        if isinstance(codec, str):
            result.append((codec, None))
        elif isinstance(codec, dict) and isinstance(codec.get("name"), str):
            result.append((codec["name"], codec.get("configuration")))
        else:
            raise MetadataError(f"malformed codec {codec!r} in {what}")
    return result


def _regular_chunk_shape(grid, ndim: int) -> tuple[int, ...]:
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise MetadataError(f"chunk_grid {grid!r} is not a regular grid")
    shape = _int_tuple((grid.get("configuration") or {}).get("chunk_shape"), "chunk_shape")
    if len(shape) != ndim or any(c <= 0 for c in shape):
        raise MetadataError(f"chunk_shape {shape} does not fit an array of {ndim} dimensions")
    return shape


def _int_tuple(raw, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw):
        raise MetadataError(f"{what} {raw!r} is not a list of non-negative integers")
    return tuple(raw)


DEFAULT_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def shard_document(doc: dict, chunks_per_shard: int) -> dict:
    """The sharded metadata zarrfs stores for an unsharded array written through the view.

    Inner chunk = the written chunk shape, inner codecs = the written codecs;
    a shard holds ``chunks_per_shard`` chunks along every axis, but never more
    than the array has along that axis; the index is ``[bytes, crc32c]`` at the end.
    """
    layout = parse_array_document(doc)
    if layout is None or layout.is_sharded:
        raise MetadataError("only unsharded array metadata can be sharded")
    per_axis = [max(1, min(chunks_per_shard, n)) for n in layout.chunk_grid]
    sharded = copy.deepcopy(doc)
    sharded["chunk_grid"] = {"name": "regular", "configuration": {
        "chunk_shape": [c * n for c, n in zip(layout.chunk_shape, per_axis)]}}
    sharded["codecs"] = [{"name": SHARDING, "configuration": {
        "chunk_shape": list(layout.chunk_shape),
        "codecs": copy.deepcopy(doc["codecs"]),
        "index_codecs": copy.deepcopy(DEFAULT_INDEX_CODECS),
        "index_location": "end",
    }}]
    return sharded
