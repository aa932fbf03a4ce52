"""Array and group metadata written through the mount (SPEC §5).

The view shows unsharded arrays; the backing store keeps them sharded. So a
``zarr.json`` (v3 view) or ``.zarray`` (v2 view) written into a directory is
translated: the written chunk shape becomes the inner chunk, ``--shards``
chunks per axis make a shard, the index is ``[bytes, crc32c]`` at the end. An
existing array keeps its sharding when only its shape or attributes change
(resize; shrinking drops the chunks out of range). Sharded metadata written
through the view is refused with EINVAL, and nothing changes.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os

import trio

from ..format.metadata import MetadataError, json_bytes, parse_array_document, shard_document, with_consolidated
from ..format.v2 import NoV2Equivalent, v2_to_v3, v3_to_v2
from ..store.local import zarrfs_own
from .overlay import MemFile, chunk_name, relative_parts, scratch_name
from .shards import join

log = logging.getLogger("zarrfs")

V3_NAMES = frozenset({"zarr.json"})
V2_NAMES = frozenset({".zarray", ".zattrs", ".zgroup"})
V2_CHUNKING = ("chunks", "dtype", "compressor", "filters", "order", "dimension_separator")  # .zarray fields
V2_DEFAULTS = {"dimension_separator": "."}


def refuse(where: str, why: str) -> OSError:
    log.warning("%s: refused: %s", where, why)
    return OSError(errno.EINVAL, f"{where}: {why}")


class MetadataWriter:
    def __init__(self, tree, flusher, chunks_per_shard: int):
        self.tree = tree
        self.store = tree.store
        self.flusher = flusher
        self.chunks_per_shard = chunks_per_shard
        self.names = V3_NAMES if tree.views.view == "v3" else V2_NAMES
        self._locks: dict[str, trio.Lock] = {}  # per directory

    # -- applying a written file ---------------------------------------------

    async def apply(self, dir_key: str, name: str, data: bytes) -> None:
        """Apply a metadata file written into ``dir_key``; one at a time per directory
        (zarr-python 3.0 writes .zarray and .zattrs from two threads at once)."""
        async with self._locks.setdefault(dir_key, trio.Lock()):
            await self._apply(dir_key, name, data)

    async def _apply(self, dir_key: str, name: str, data: bytes) -> None:
        where = join(dir_key, name)
        content = _json(where, data)
        self._unhide(dir_key, name)
        if name == "zarr.json":
            await self._apply_v3(dir_key, where, content)
        elif name == ".zarray":
            if not isinstance(content, dict) or "shard_format" in content:
                raise refuse(where, "sharded or malformed .zarray written through the view")
            try:
                attributes = self._v2_attributes(dir_key)
                attributes.pop("_FillValue", None)  # the old .zarray's fill value: the new one says
                doc = self._as_stored(dir_key, content, v2_to_v3(content, attributes))
            except (NoV2Equivalent, KeyError, TypeError, ValueError) as error:
                raise refuse(where, f"no v3 equivalent: {error}") from None
            await self._store_array(dir_key, where, doc)
            self._drop_pending_attributes(dir_key)
        elif name == ".zgroup":
            await self._write_doc(dir_key, {"zarr_format": 3, "node_type": "group",
                                      "attributes": self._v2_attributes(dir_key)})
            self._drop_pending_attributes(dir_key)
        elif name == ".zattrs":
            await self._apply_attributes(dir_key, where, content)

    def _as_stored(self, dir_key: str, zarray: dict, doc: dict) -> dict:
        """A .zarray that keeps the chunking the v2 view shows of the array there (a resize,
        a new fill value) keeps what the view translated: the array's own chunk key
        encoding (a v3 "default" one is shown as v2 keys) and codecs (the view strips a
        trailing crc32c)."""
        existing = self._backing_doc(dir_key)
        old = parse_array_document(existing) if _is_array(existing) else None
        if old is None:
            return doc
        try:
            shown, _, _ = v3_to_v2(old.view_document, old.key_encoding.separator)
        except NoV2Equivalent:
            return doc
        if any(shown.get(k, V2_DEFAULTS.get(k)) != zarray.get(k, V2_DEFAULTS.get(k)) for k in V2_CHUNKING):
            return doc
        stored = old.view_document
        return dict(doc, chunk_key_encoding=stored.get("chunk_key_encoding", "default"), codecs=stored["codecs"])

    def _unhide(self, dir_key: str, name: str) -> None:
        """New metadata in a directory whose metadata was unlinked: it is reborn."""
        removed = self.tree.views.removed
        if name == ".zattrs" and dir_key in removed:
            removed[dir_key].discard(name)
        else:
            removed.pop(dir_key, None)
        if dir_key in removed and not removed[dir_key]:
            del removed[dir_key]

    async def _apply_v3(self, dir_key: str, where: str, doc) -> None:
        if isinstance(doc, dict) and doc.get("node_type") == "group":
            await self._write_doc(dir_key, with_consolidated(doc, self._stored_entry(dir_key)) or doc)
            return
        layout = _layout(where, doc)
        if layout.is_sharded:
            raise refuse(where, "sharded metadata written through the view (write the unsharded array)")
        await self._store_array(dir_key, where, doc)

    async def _store_array(self, dir_key: str, where: str, doc: dict) -> None:
        new = _layout(where, doc)
        # Chunks written or deleted under the old metadata go to the store first
        # (tensorstore's delete_existing unlinks every chunk, then writes zarr.json).
        await self.flusher.flush_array(dir_key)
        existing = self._backing_doc(dir_key)
        old = parse_array_document(existing) if _is_array(existing) else None
        if old is not None and old.is_sharded and _same_chunking(old, new, existing, doc):
            sharded = copy.deepcopy(doc)
            sharded["chunk_grid"], sharded["codecs"] = existing["chunk_grid"], existing["codecs"]
        elif old is not None and await trio.to_thread.run_sync(self._holds_chunks, dir_key):
            raise refuse(where, "changes the chunking of an array that holds chunks (delete it first)")
        else:
            try:
                sharded = shard_document(doc, self.chunks_per_shard)
            except MetadataError as error:
                raise refuse(where, str(error)) from None
        await self._write_doc(dir_key, sharded)
        if old is not None:
            await self._trim(dir_key, old, parse_array_document(sharded))
        else:
            self.tree.overlay.forget_removed_directories(dir_key)
            await self._adopt_chunk_files(dir_key)
        self.changed(dir_key)

    def _stored_entry(self, group_key: str):
        """Consolidated metadata written through the view describes the arrays as the view
        shows them; the store keeps what their own backing zarr.json says."""
        def stored(path: str, entry: dict) -> dict:
            backing = self._backing_doc(join(group_key, path))
            if _is_array(backing):
                return backing
            try:
                return shard_document(entry, self.chunks_per_shard)
            except MetadataError:
                return entry
        return stored

    def changed(self, dir_key: str) -> None:
        """Called when a directory starts or stops being an array (operations re-resolves inodes)."""

    async def dropped(self, dir_key: str) -> None:
        """Called when a shrinking resize dropped chunks of the array at ``dir_key``
        (operations makes the kernel forget the names it cached there)."""

    async def _adopt_chunk_files(self, dir_key: str) -> None:
        """``cp -r`` copies in directory order, so chunk files may arrive before their
        metadata. They become chunks of the new array now: those still in the write
        buffer (pending files) without any I/O; those on disk (fsync'ed, spilled, or
        there before the mount) are first renamed aside to hidden staging names, so
        that no shard written at a key can meet a chunk file of the same name, then
        read in batches bounded by ``--max-dirty``; a staged file is deleted once its
        chunk is in a durable shard (the repack does it)."""
        view = self.tree._array_view(dir_key)
        if view is None:
            return
        overlay = self.tree.overlay
        for path, memfile in list(overlay.scratch.items()):
            coords = _chunk_coords(view, relative_parts(path, dir_key))
            if coords is not None:
                overlay.forget(scratch_name(path))
                memfile.pending = False
                overlay.bind(chunk_name(dir_key, coords), memfile)  # (not in its shard yet)
                self.flusher.chunk_changed(dir_key, coords)
        staged = await trio.to_thread.run_sync(
            self.store.stage_chunk_files, dir_key, lambda parts: _chunk_coords(view, parts) is not None)
        await self.adopt_staged(dir_key, staged)

    async def adopt_staged(self, dir_key: str, staged: list[tuple[str, tuple[str, ...]]],
                           unless_stored: bool = False) -> None:
        """Bind staged chunk files (``(staged key, original key parts)``) as chunks of the
        array at ``dir_key``. ``unless_stored``: after a crash, a chunk its shard holds
        already was merged (or overwritten since): its staged copy is only deleted."""
        view = self.tree._array_view(dir_key)
        overlay = self.tree.overlay
        for staged_key, parts in staged:
            coords = _chunk_coords(view, parts) if view is not None else None
            if coords is not None and overlay.has(chunk_name(dir_key, coords)):
                # newer in the buffer (a pending file fsync'ed to disk): the disk copy goes
                # once the buffered one is in a durable shard
                overlay.staged.setdefault(dir_key, {})[coords] = staged_key
                self.flusher.chunk_changed(dir_key, coords)
                continue
            if coords is None or (unless_stored and self.tree.shards.locate(dir_key, view.array, coords) is not None):
                await trio.to_thread.run_sync(self.store.remove_staged, [staged_key])
                continue
            data = await trio.to_thread.run_sync(self.store.read, staged_key)
            overlay.bind(chunk_name(dir_key, coords), MemFile(bytearray(data)))
            overlay.staged.setdefault(dir_key, {})[coords] = staged_key
            self.flusher.chunk_changed(dir_key, coords)
            await self.flusher.wait_for_room()

    async def _apply_attributes(self, dir_key: str, where: str, attributes) -> None:
        if not isinstance(attributes, dict):
            raise refuse(where, ".zattrs is not a JSON object")
        doc = self._backing_doc(dir_key)
        if doc is None:  # no .zarray/.zgroup yet: keep it until they arrive
            await trio.to_thread.run_sync(self.store.replace_durably, join(dir_key, ".zattrs"), json_bytes(attributes))
            return
        doc = copy.deepcopy(doc)
        attributes = dict(attributes)
        names = attributes.pop("_ARRAY_DIMENSIONS", None)
        if doc.get("node_type") == "array" and isinstance(names, list) and len(names) == len(doc.get("shape", [])):
            doc["dimension_names"] = names
        elif names is not None:
            attributes["_ARRAY_DIMENSIONS"] = names
        if "_FillValue" in (doc.get("attributes") or {}) and doc.get("node_type") == "array":
            attributes.setdefault("_FillValue", doc["attributes"]["_FillValue"])  # the .zarray's (v2_to_v3)
        doc["attributes"] = attributes
        await self._write_doc(dir_key, doc)

    # -- removing ------------------------------------------------------------

    async def remove(self, dir_key: str, name: str) -> None:
        """Unlink a metadata file. Attributes are cleared at once; array and group
        metadata is hidden and deleted with the directory (``finalize``)."""
        removed = self.tree.views.removed.setdefault(dir_key, set())
        doc = self._backing_doc(dir_key)
        if name == ".zattrs" and doc is None:
            self.store.unlink(join(dir_key, ".zattrs"))
        elif name == ".zattrs" and not removed:
            doc = dict(doc, attributes={})
            doc.pop("dimension_names", None)
            await self._write_doc(dir_key, doc)
        else:
            removed.add(name)
        if not removed:
            del self.tree.views.removed[dir_key]

    async def finalize(self, dir_key: str) -> None:
        """Delete the backing metadata of a directory whose metadata was unlinked."""
        if dir_key not in self.tree.views.removed:
            return
        await self.flusher.flush_array(dir_key)
        for name in ("zarr.json", ".zattrs"):
            try:
                self.store.unlink(join(dir_key, name))
            except FileNotFoundError:
                pass
        self.store.remove_lock_file(dir_key)
        del self.tree.views.removed[dir_key]

    async def finalize_all(self) -> None:
        for dir_key in list(self.tree.views.removed):
            try:
                await self.finalize(dir_key)
            except OSError as error:
                log.error("%s: could not delete its unlinked metadata: %s", dir_key, error)

    # -- helpers -------------------------------------------------------------

    def _backing_doc(self, dir_key: str) -> dict | None:
        try:
            doc = json.loads(self.store.read(join(dir_key, "zarr.json")))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    async def _write_doc(self, dir_key: str, doc: dict) -> None:
        """Metadata is written like a shard (two fsyncs): in a worker thread, not the loop."""
        await trio.to_thread.run_sync(self.store.replace_durably, join(dir_key, "zarr.json"), json_bytes(doc),
                                      0o644, dir_key)

    def _v2_attributes(self, dir_key: str) -> dict:
        """Attributes as v2 sees them: the backing ones, else a pending .zattrs."""
        doc = self._backing_doc(dir_key)
        if doc is not None:
            attributes = dict(doc.get("attributes") or {})
            if doc.get("dimension_names"):
                attributes.setdefault("_ARRAY_DIMENSIONS", doc["dimension_names"])
            return attributes
        try:
            pending = json.loads(self.store.read(join(dir_key, ".zattrs")))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return {}
        return pending if isinstance(pending, dict) else {}

    def _drop_pending_attributes(self, dir_key: str) -> None:
        try:
            self.store.unlink(join(dir_key, ".zattrs"))
        except FileNotFoundError:
            pass

    def _holds_chunks(self, dir_key: str) -> bool:
        if any(f is not None for f in self.tree.overlay.chunks_of(dir_key).values()):
            return True
        return any(parts[-1] not in ("zarr.json", ".zattrs") and not zarrfs_own(parts[-1])
                   for parts in self.store.files_below(dir_key))

    async def _trim(self, dir_key: str, old, new) -> None:
        """After a shrink: shards with chunks outside the new grid are repacked without them."""
        if all(n >= o for n, o in zip(new.chunk_grid, old.chunk_grid)):
            return
        for coords in list(self.tree.overlay.chunks_of(dir_key)):
            if not new.in_grid(coords):
                self.tree.overlay.unbind(chunk_name(dir_key, coords))
        self._drop_key_directories_beyond(dir_key, new)
        for shard in await trio.to_thread.run_sync(self._shards_beyond, dir_key, old, new):
            self.flusher.repack_soon((dir_key, shard))
        await self.dropped(dir_key)

    def _drop_key_directories_beyond(self, dir_key: str, new) -> None:
        """Key directories outside the new grid are gone, with what the buffer held in them
        (scratch files, directories made by mkdir), as the chunks in them are."""
        view = self.tree._array_view(dir_key)
        if view is None:
            return
        overlay = self.tree.overlay

        def beyond(path: str) -> bool:
            prefix = view.keys.decode_prefix(relative_parts(path, dir_key), new.ndim)
            return prefix is not None and any(i >= n for i, n in zip(prefix, new.chunk_grid))

        for path in [p for p in overlay.scratch if beyond(os.path.dirname(p))]:
            overlay.forget(scratch_name(path))
        overlay.directories = {d for d in overlay.directories if not beyond(d)}

    def _shards_beyond(self, dir_key: str, old, new) -> list[tuple[int, ...]]:
        """Shards of the old layout that reach past the new chunk grid (a worker thread)."""
        found = []
        for parts in self.store.files_below(dir_key):
            shard = old.key_encoding.decode_prefix(parts, old.ndim)
            if shard is None or len(shard) != old.ndim:
                continue
            last = [(s + 1) * n for s, n in zip(shard, old.chunks_per_shard)]
            if any(end > g for end, g in zip(last, new.chunk_grid)):
                found.append(tuple(shard))
        return found


def _json(where: str, data: bytes):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise refuse(where, f"not JSON ({error})") from None


def _layout(where: str, doc):
    try:
        layout = parse_array_document(doc)
    except MetadataError as error:
        raise refuse(where, str(error)) from None
    if layout is None:
        raise refuse(where, "not array metadata")
    return layout


def _chunk_coords(view, parts: tuple[str, ...]) -> tuple[int, ...] | None:
    """The in-grid chunk that view key ``parts`` (relative to the array) names, if any."""
    if view is None or not parts:
        return None
    layout = view.array
    coords = view.keys.decode_prefix(parts, layout.ndim)
    if coords is None or len(parts) != view.keys.depth(layout.ndim) or not layout.in_grid(coords):
        return None
    return coords


def _is_array(doc) -> bool:
    return isinstance(doc, dict) and doc.get("node_type") == "array"


def _same_chunking(old, new, old_doc: dict, new_doc: dict) -> bool:
    return (old.chunk_shape == new.chunk_shape and old.key_encoding == new.key_encoding
            and old.view_document.get("codecs") == new_doc.get("codecs")
            and old_doc.get("data_type") == new_doc.get("data_type"))
