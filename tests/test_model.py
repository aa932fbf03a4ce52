"""Property-based: random file operations through the mount against an in-memory model.

After every step the mount shows exactly the model; after every remount the
backing shards, decoded independently (tests/corpus.py), hold exactly the
model's chunks. Scratch files (temporaries that were never renamed onto a
chunk key) live in the daemon only and are gone after a remount, by design.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import corpus
import zarr
from conftest import ZARRFS, force_unmount, list_files

GRID = 4  # chunks per axis
CHUNK = 2  # elements per chunk axis (uint8: 4-byte chunks)
SHARDS = 2  # chunks per shard axis
KEYS = [f"c/{i}/{j}" for i in range(GRID) for j in range(GRID)]
TEMPS = ["c/0/t.partial", "c/1/.x.tmp", "c/2/2.__lock"]

payloads = st.binary(min_size=0, max_size=12)


class MountModel(RuleBasedStateMachine):
    @initialize()
    def mount_fresh_store(self):
        self.work = Path(tempfile.mkdtemp(prefix="zarrfs-model-"))
        self.store, self.mnt = self.work / "store", self.work / "mnt"
        self.store.mkdir()
        self.mnt.mkdir()
        self._mount()
        zarr.create_array(self.mnt / "a", shape=(GRID * CHUNK,) * 2, chunks=(CHUNK,) * 2, dtype="u1",
                          compressors=None, fill_value=0)
        self.chunks: dict[str, bytes] = {}
        self.scratch: dict[str, bytes] = {}

    def _mount(self):
        subprocess.run([*ZARRFS, "mount", str(self.store), str(self.mnt), "--flush-after", "600",
                        "--shards", str(SHARDS), "--log-file", str(self.work / "log")],
                       check=True, capture_output=True, timeout=60)

    def _path(self, key: str) -> Path:
        path = self.mnt / "a" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def teardown(self):
        if hasattr(self, "mnt"):
            subprocess.run([*ZARRFS, "umount", str(self.mnt)], capture_output=True, timeout=60)
            force_unmount(self.mnt)
            shutil.rmtree(self.work, ignore_errors=True)

    # -- operations ------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), data=payloads)
    def write_whole(self, key, data):
        self._path(key).write_bytes(data)
        self.chunks[key] = data

    @rule(key=st.sampled_from(KEYS), offset=st.integers(0, 8), data=payloads)
    def write_part(self, key, offset, data):
        path = self._path(key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(fd, data, offset)
        os.close(fd)
        old = self.chunks.get(key, b"")
        if not data:  # a write of nothing changes nothing, not even the size
            self.chunks[key] = old
            return
        grown = old.ljust(offset, b"\0")
        self.chunks[key] = grown[:offset] + data + grown[offset + len(data):]

    @precondition(lambda self: self.chunks)
    @rule(data=st.data(), size=st.integers(0, 10))
    def truncate(self, data, size):
        key = data.draw(st.sampled_from(sorted(self.chunks)))
        os.truncate(self._path(key), size)
        self.chunks[key] = self.chunks[key][:size].ljust(size, b"\0")

    @precondition(lambda self: self.chunks)
    @rule(data=st.data())
    def unlink(self, data):
        key = data.draw(st.sampled_from(sorted(self.chunks)))
        os.unlink(self._path(key))
        del self.chunks[key]

    @rule(temp=st.sampled_from(TEMPS), data=payloads)
    def write_temp(self, temp, data):
        self._path(temp).write_bytes(data)
        self.scratch[temp] = data

    @precondition(lambda self: self.scratch)
    @rule(data=st.data(), key=st.sampled_from(KEYS), by_link=st.booleans())
    def move_temp_onto_key(self, data, key, by_link):
        temp = data.draw(st.sampled_from(sorted(self.scratch)))
        if by_link:
            if key in self.chunks:
                os.unlink(self._path(key))
            os.link(self._path(temp), self._path(key))
            os.unlink(self._path(temp))
        else:
            os.rename(self._path(temp), self._path(key))
        self.chunks[key] = self.scratch.pop(temp)

    @precondition(lambda self: self.chunks)
    @rule(data=st.data(), destination=st.sampled_from(KEYS))
    def rename_chunk(self, data, destination):
        key = data.draw(st.sampled_from(sorted(self.chunks)))
        os.rename(self._path(key), self._path(destination))
        self.chunks[destination] = self.chunks.pop(key)

    @precondition(lambda self: self.chunks)
    @rule(data=st.data())
    def fsync(self, data):
        key = data.draw(st.sampled_from(sorted(self.chunks)))
        fd = os.open(self._path(key), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    @rule()
    def remount(self):
        subprocess.run([*ZARRFS, "umount", str(self.mnt)], check=True, capture_output=True, timeout=60)
        self.scratch.clear()  # temporaries are not kept across a remount
        assert self.backing_chunks() == self.chunks
        self._mount()

    # -- what must hold --------------------------------------------------------

    @invariant()
    def the_mount_shows_the_model(self):
        if not hasattr(self, "chunks"):
            return
        shown = {k: (self.mnt / "a" / k).read_bytes() for k in list_files(self.mnt / "a") if k != "zarr.json"}
        assert shown == {**self.chunks, **self.scratch}

    def backing_chunks(self) -> dict[str, bytes]:
        """The chunks in the backing shards, decoded without zarrfs."""
        found = {}
        per_shard = SHARDS * SHARDS
        for shard in sorted((self.store / "a" / "c").rglob("*")) if (self.store / "a" / "c").exists() else []:
            if not shard.is_file():
                continue
            si, sj = (int(p) for p in shard.relative_to(self.store / "a" / "c").parts)
            for linear, data in corpus.read_shard_chunks(shard, per_shard, "end", "little", True).items():
                li, lj = np.unravel_index(linear, (SHARDS, SHARDS))
                found[f"c/{si * SHARDS + li}/{sj * SHARDS + lj}"] = data
        return found


MountModel.TestCase.settings = settings(
    max_examples=8, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_mount_agrees_with_the_model = MountModel.TestCase
