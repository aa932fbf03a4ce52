"""The benchmark data: generated once with zarr-python 3 (tensorstore for the scale store),
cached in bench/.cache/ (gitignored), and rebuilt only when missing or incomplete.

Every dataset directory holds one array, `arr`, in five forms built from the same chunk bytes:

  sharded/arr     the Zarr v3 sharded store that zarrfs mounts
  plain/arr       the same array written unsharded by zarr-python 3 with the same inner codecs,
                  so every chunk is a file at the key the zarrfs v3 view shows (arr/c/<i>/<j>);
                  this is the plain-directory peer and the source of the three images
  image.sqfs      mksquashfs of plain/ without compression (-noI -noD -noF -noX)
  image.zip       zip -0 -r of plain/ (stored, no compression)
  image.tar       tar -cf of plain/

Each form is written under a temporary name and renamed when complete, so an interrupted
generation is redone rather than used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import CACHE, log, run

SIDE = 32768  # both 1 GiB arrays are SIDE x SIDE uint8
SEED = 20240602
SLAB_ROWS = 2048  # rows generated and written at a time: one row of 4 MiB shards, 64 MiB


@dataclass(frozen=True)
class Dataset:
    """One 2-D uint8 array and its chunking; ``name`` is its cache directory."""

    name: str
    shape: tuple[int, int]
    chunk: tuple[int, int]  # inner chunk
    shard: tuple[int, int]  # shard shape in elements
    zstd: bool = False  # inner codecs bytes + zstd instead of bytes only
    description: str = ""

    @property
    def root(self) -> Path:
        return CACHE / self.name

    @property
    def sharded(self) -> Path:
        return self.root / "sharded"

    @property
    def plain(self) -> Path:
        return self.root / "plain"

    def image(self, kind: str) -> Path:
        return self.root / f"image.{kind}"

    @property
    def n_chunks(self) -> int:
        return math.prod(math.ceil(s / c) for s, c in zip(self.shape, self.chunk))

    @property
    def n_shards(self) -> int:
        return math.prod(math.ceil(s / c) for s, c in zip(self.shape, self.shard))

    @property
    def chunk_bytes(self) -> int:
        return math.prod(self.chunk)


D1 = Dataset("d1", (SIDE, SIDE), (256, 256), (2048, 2048),
             description="16,384 raw chunks of 64 KiB in 256 shards of 4 MiB")
D2 = Dataset("d2", (SIDE, SIDE), (64, 64), (2048, 2048),
             description="262,144 raw chunks of 4 KiB in 256 shards of 4 MiB")
D1_ZSTD = Dataset("d1-zstd", (SIDE, SIDE), (256, 256), (2048, 2048), zstd=True,
                  description="16,384 zstd chunks of 64 KiB raw in 256 shards")
READ_DATASETS = {d.name: d for d in (D1, D2, D1_ZSTD)}

# The scale store: a million 16-byte chunks in 100 shards of 100 x 100 chunks, and a small
# store of 4 chunks, to show that mount time does not grow with the store.
SCALE = Dataset("scale-1m", (4000, 4000), (4, 4), (400, 400), description="1,000,000 chunks of 16 B")
SMALL = Dataset("small", (8, 8), (4, 4), (8, 8), description="4 chunks of 16 B")


# -- source data --------------------------------------------------------------

def random_source() -> Path:
    """SIDE x SIDE random bytes in a .npy: the content of D1 and D2 and of the write test."""
    path = CACHE / f"random-{SIDE}x{SIDE}-seed{SEED}.npy"
    if not path.exists():
        _write_npy(path, _random_slab)
    return path


def compressible_source() -> Path:
    """The content of D1-zstd: a gradient plus 4 bits of noise, so zstd saves about half the
    bytes but still has real work to do (not a run of zeros)."""
    path = CACHE / f"compressible-{SIDE}x{SIDE}-seed{SEED}.npy"
    if not path.exists():
        _write_npy(path, _compressible_slab)
    return path


def _random_slab(rng: np.random.Generator, top: int, rows: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(rows * SIDE), dtype=np.uint8).reshape(rows, SIDE)


def _compressible_slab(rng: np.random.Generator, top: int, rows: int) -> np.ndarray:
    r = np.arange(top, top + rows, dtype=np.uint32)[:, None]
    c = np.arange(SIDE, dtype=np.uint32)[None, :]
    gradient = ((r // 97 + c // 89) * 7 % 240).astype(np.uint8)
    return gradient + rng.integers(0, 16, size=(rows, SIDE), dtype=np.uint8)


def _write_npy(path: Path, make_slab) -> None:
    started = time.perf_counter()
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(SIDE, SIDE))
    rng = np.random.default_rng(SEED)
    for top in range(0, SIDE, SLAB_ROWS):
        out[top:top + SLAB_ROWS] = make_slab(rng, top, SLAB_ROWS)
    out.flush()
    del out
    partial.rename(path)
    log(f"generated {path.name} in {time.perf_counter() - started:.0f} s")


def source_of(dataset: Dataset) -> Path:
    return compressible_source() if dataset.zstd else random_source()


# -- the five forms -------------------------------------------------------------

def ensure_dataset(dataset: Dataset) -> Dataset:
    """Generate whatever is missing of ``dataset``'s five forms."""
    dataset.root.mkdir(parents=True, exist_ok=True)
    if not dataset.sharded.exists() or not dataset.plain.exists():
        _write_arrays(dataset)
    _ensure_image(dataset, "sqfs", lambda out: run(
        ["mksquashfs", dataset.plain, out, "-noI", "-noD", "-noF", "-noX",
         # no duplicate search: the chunks differ, and with 262,144 files of one size it is quadratic
         "-no-duplicates", "-no-progress", "-quiet"],
        stdout=subprocess.DEVNULL))
    # zip stores the paths it is given: run it inside plain/ so the entries are arr/...
    _ensure_image(dataset, "zip", lambda out: run(["zip", "-0", "-r", "-q", out, "arr"], cwd=dataset.plain))
    _ensure_image(dataset, "tar", lambda out: run(["tar", "-cf", out, "-C", dataset.plain, "arr"]))
    return dataset


def _ensure_image(dataset: Dataset, kind: str, build) -> None:
    image = dataset.image(kind)
    if image.exists():
        return
    started = time.perf_counter()
    partial = image.with_name(f"partial-{image.name}")
    partial.unlink(missing_ok=True)
    build(partial.resolve())
    # ratarmount keeps its index beside the tar; an index of an older tar would be stale.
    for stale in image.parent.glob(f"{image.name}.index*"):
        stale.unlink()
    partial.rename(image)
    log(f"{dataset.name}: built {image.name} in {time.perf_counter() - started:.0f} s")


def _write_arrays(dataset: Dataset) -> None:
    """zarr-python 3 writes the source data twice: sharded (the zarrfs store) and unsharded with
    the same inner codecs (the plain directory, whose chunk files are then byte for byte the
    inner chunks zarrfs shows)."""
    import zarr

    started = time.perf_counter()
    source = np.load(source_of(dataset), mmap_mode="r")
    tmp_sharded, tmp_plain = dataset.root / "partial-sharded", dataset.root / "partial-plain"
    for path in (tmp_sharded, tmp_plain, dataset.sharded, dataset.plain):
        shutil.rmtree(path, ignore_errors=True)
    compressors = [zarr.codecs.ZstdCodec(level=3)] if dataset.zstd else None
    common = dict(shape=dataset.shape, chunks=dataset.chunk, dtype="uint8", compressors=compressors,
                  fill_value=0, zarr_format=3)
    sharded = zarr.create_array(zarr.storage.LocalStore(tmp_sharded / "arr"), shards=dataset.shard, **common)
    plain = zarr.create_array(zarr.storage.LocalStore(tmp_plain / "arr"), **common)
    # One row of whole shards at a time: every shard is encoded once, with no read-modify-write.
    for top in range(0, dataset.shape[0], dataset.shard[0]):
        slab = np.ascontiguousarray(source[top:top + dataset.shard[0]])
        sharded[top:top + len(slab)] = slab
        plain[top:top + len(slab)] = slab
    _check_complete(dataset, tmp_sharded, tmp_plain)
    os.sync()  # write back the new pages now, not during the timed runs
    tmp_sharded.rename(dataset.sharded)
    tmp_plain.rename(dataset.plain)
    log(f"{dataset.name}: wrote the sharded and plain arrays in {time.perf_counter() - started:.0f} s")


def _check_complete(dataset: Dataset, sharded: Path, plain: Path) -> None:
    """Every chunk present: zarr-python skips chunks equal to the fill value, and a missing one
    would make the file counts of the two sides disagree."""
    shards = sum(len(files) for _, _, files in os.walk(sharded / "arr" / "c"))
    chunks = sum(len(files) for _, _, files in os.walk(plain / "arr" / "c"))
    if (shards, chunks) != (dataset.n_shards, dataset.n_chunks):
        raise SystemExit(f"{dataset.name}: {shards} shards / {chunks} chunk files, "
                         f"expected {dataset.n_shards} / {dataset.n_chunks}")


# -- the scale stores ---------------------------------------------------------

def ensure_scale_store(dataset: Dataset) -> Path:
    """A sharded store of ``dataset``'s chunking, written by tensorstore (a million chunks of
    16 bytes take zarr-python minutes of per-chunk Python; tensorstore seconds). Values 1..255,
    so no chunk equals the fill value and every one is present."""
    store = dataset.sharded
    if store.exists():
        return store
    import tensorstore as ts

    started = time.perf_counter()
    partial = dataset.root / "partial-sharded"
    shutil.rmtree(partial, ignore_errors=True)
    per_shard = [s // c for s, c in zip(dataset.shard, dataset.chunk)]
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(partial / "arr")},
        "metadata": {
            "shape": list(dataset.shape),
            "data_type": "uint8",
            "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(dataset.shard)}},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": list(dataset.chunk),
                "codecs": [{"name": "bytes"}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            }}],
        },
        "create": True,
        "delete_existing": True,
    }
    array = ts.open(spec).result()
    rng = np.random.default_rng(SEED)
    for top in range(0, dataset.shape[0], dataset.shard[0]):
        rows = min(dataset.shard[0], dataset.shape[0] - top)
        array[top:top + rows].write(rng.integers(1, 256, size=(rows, dataset.shape[1]), dtype=np.uint8)).result()
    shards = sum(len(files) for _, _, files in os.walk(partial / "arr" / "c"))
    if shards != dataset.n_shards:
        raise SystemExit(f"{dataset.name}: tensorstore wrote {shards} shards, expected {dataset.n_shards}")
    os.sync()
    partial.rename(store)
    log(f"{dataset.name}: {dataset.n_chunks} chunks in {shards} shards ({per_shard[0]}x{per_shard[1]} chunks "
        f"each) written in {time.perf_counter() - started:.0f} s")
    return store


def describe(dataset: Dataset) -> dict:
    """What a results file records about a dataset."""
    return {"name": dataset.name, "shape": dataset.shape, "chunk": dataset.chunk, "shard": dataset.shard,
            "zstd": dataset.zstd, "chunks": dataset.n_chunks, "shards": dataset.n_shards,
            "description": dataset.description}


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_json(path: Path, document) -> None:
    path.write_text(json.dumps(document, indent=1))
