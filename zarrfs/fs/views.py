"""How each backing directory holding Zarr metadata is presented: the v3 and v2 views.

A ``DirView`` says which metadata files the view shows instead of the backing
ones, and, for arrays, how chunk keys are named. Directories without one are
shown as they are. Per directory the result is cached and revalidated by the
``stat`` of the metadata files it came from.

                     v3 view                          v2 view
sharded v3 array     zarr.json unsharded, chunks      .zarray/.zattrs, v2 chunk keys
unsharded v3 array   as it is                         .zarray/.zattrs, v2 chunk keys
v3 group             as it is                         .zgroup/.zattrs
v2 sharding proto.   .zarray without shard keys, chunks (both views)
plain v2 array/group as it is                         as it is
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace

from ..format.keys import ChunkKeyEncoding
from ..format.metadata import (ArrayLayout, MetadataError, json_bytes, parse_array_document, parse_v2_sharded,
                               unsharded_entry, with_consolidated)
from ..format.v2 import NoV2Equivalent, dumps, group_v3_to_v2, v3_to_v2
from ..store.base import Store, file_version
from .lru import LRU
from .overlay import is_below, moved_path

log = logging.getLogger("zarrfs")

V3_METADATA = "zarr.json"
V2_ARRAY = ".zarray"
VIEWS = ("v3", "v2")
# Larger metadata is no metadata zarrfs serves (its directory shows as plain files):
# real zarr.json files are kilobytes, consolidated ones of big hierarchies megabytes.
METADATA_LIMIT = 16 << 20
# A directory's view serves this long unless the store changed through the mount: one
# request asks for it several times (the name, then its attributes), a walk thousands.
VIEWS_REUSED_FOR = 0.1  # seconds (on top of the store's own reuse of stats)
RECENT_VIEWS_MAX = 4096


@dataclass(frozen=True)
class DirView:
    metadata: dict[str, bytes]  # the view's metadata files, by name
    hidden: frozenset[str]  # backing files they stand in for
    array: ArrayLayout | None = None  # set when chunk keys are remapped
    keys: ChunkKeyEncoding | None = None  # how the view names chunks
    strip_crc: bool = False  # verify and strip a trailing crc32c per chunk
    problem: str | None = field(default=None, compare=False)  # why the view is incomplete


class Views:
    """The DirView of each directory, for one view ("v3" or "v2")."""

    def __init__(self, store: Store, view: str = "v3", capacity: int = 4096):
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}")
        self.store = store
        self.view = view
        self._cache: LRU[tuple] = LRU(capacity)
        self._recent: dict[str, tuple[int, float, DirView | None]] = {}  # (store generation, when, view)
        # Metadata files unlinked through the mount, by directory. The backing
        # metadata stays until the directory is removed (``rm -r`` deletes the
        # metadata, then the chunks, in any order), so chunk names keep working.
        self.removed: dict[str, set[str]] = {}

    def move_tree(self, old: str, new: str) -> None:
        """A directory was renamed: unlinked metadata below it stays unlinked."""
        for dir_key in [d for d in self.removed if is_below(d, old)]:
            self.removed[moved_path(dir_key, old, new)] = self.removed.pop(dir_key)

    def of(self, dir_key: str) -> DirView | None:
        """The view of ``dir_key``, or None when it is shown as it is."""
        generation, now = self.store.generation(), time.monotonic()  # (before: a change may end meanwhile)
        recent = self._recent.get(dir_key)
        if (recent is not None and generation is not None and recent[0] == generation
                and now - recent[1] < VIEWS_REUSED_FOR):
            view = recent[2]
        else:
            view = self._current(dir_key)
            if generation is not None:
                if len(self._recent) >= RECENT_VIEWS_MAX:
                    self._recent.clear()
                self._recent[dir_key] = (generation, now, view)
        gone = self.removed.get(dir_key)
        if gone and view is not None:
            view = replace(view, metadata={n: d for n, d in view.metadata.items() if n not in gone})
        return view

    def _current(self, dir_key: str) -> DirView | None:
        """The view of ``dir_key`` as its metadata files are now (built again when they changed)."""
        source = self._metadata_source(dir_key)
        if source is None:
            return None
        cached = self._cache.get(dir_key)
        if cached is None or cached[0] != source:
            cached = (source, self._build(dir_key, source[0]))
            self._cache.put(dir_key, cached)
        return cached[1]

    def _metadata_source(self, dir_key: str) -> tuple | None:
        """``(name, version)`` of the metadata file that decides the view."""
        for name in (V3_METADATA, V2_ARRAY):
            try:
                st = self.store.recent_stat(f"{dir_key}/{name}" if dir_key else name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as error:  # there, but unusable (a symlink out of the store): _build says so
                return (name, ("unusable", error.errno))
            return (name, file_version(st))
        return None

    def _build(self, dir_key: str, name: str) -> DirView | None:
        meta_key = f"{dir_key}/{name}" if dir_key else name
        try:
            doc = json.loads(self.store.read(meta_key, limit=METADATA_LIMIT))
            if name == V2_ARRAY:
                return _prototype_view(parse_v2_sharded(doc))
            return self._view_of(dir_key, doc, parse_array_document(doc))
        except Exception as error:  # noqa: BLE001 - any malformed metadata: plain files, logged once (cached)
            log.warning("%s: %s; showing its directory as plain files", meta_key, error)
            return None

    def _view_of(self, dir_key: str, doc: dict, layout: ArrayLayout | None) -> DirView | None:
        if layout is None:
            return _v2_group_view(doc) if self.view == "v2" else _v3_group_view(doc)
        if self.view == "v2":
            return _v2_array_view(dir_key or ".", layout)
        if layout.is_sharded:
            return DirView({V3_METADATA: json_bytes(layout.view_document)}, frozenset({V3_METADATA}),
                           layout, layout.key_encoding)
        return None


def _prototype_view(layout: ArrayLayout | None) -> DirView | None:
    if layout is None:
        return None  # a plain v2 array: shown as it is
    return DirView({V2_ARRAY: dumps(layout.view_document)}, frozenset({V2_ARRAY}), layout, layout.key_encoding)


def _v3_group_view(doc: dict) -> DirView | None:
    """A group is shown as it is, unless its consolidated metadata describes sharded
    arrays: those entries are shown unsharded, as the arrays' own zarr.json are."""
    shown = with_consolidated(doc, unsharded_entry)
    return None if shown is None else DirView({V3_METADATA: json_bytes(shown)}, frozenset({V3_METADATA}))


def _v2_group_view(doc: dict) -> DirView:
    files = {name: dumps(content) for name, content in group_v3_to_v2(doc).items()}
    return DirView(files, frozenset({V3_METADATA}))


def _v2_array_view(where: str, layout: ArrayLayout) -> DirView:
    keys = ChunkKeyEncoding("v2", layout.key_encoding.separator)
    try:
        zarray, zattrs, strip_crc = v3_to_v2(layout.view_document, keys.separator)
    except (NoV2Equivalent, TypeError, ValueError, AttributeError, KeyError, OverflowError) as error:
        log.warning("%s: no exact Zarr v2 equivalent (%s); shown without .zarray", where, error)
        attributes = layout.view_document.get("attributes") or {}
        files = {".zattrs": dumps(attributes)} if isinstance(attributes, dict) and attributes else {}
        return DirView(files, frozenset({V3_METADATA}), layout, keys, problem=str(error))
    files = {V2_ARRAY: dumps(zarray)}
    if zattrs:
        files[".zattrs"] = dumps(zattrs)
    return DirView(files, frozenset({V3_METADATA}), layout, keys, strip_crc)
