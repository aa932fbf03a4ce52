"""A corpus of sharded Zarr v3 stores written by real writers, plus shard surgery.

`build_corpus(root)` writes one Zarr v3 store whose sharded arrays were produced by
zarr-python 3 and by tensorstore (never by hand), so that zarrfs is tested against
the bytes those writers really emit: their payload order, their omission of chunks
equal to the fill value, their metadata spelling (tensorstore, for instance, leaves
out defaults such as "index_location" or the key separator).

The shard helpers below (`read_shard_index`, `write_shard`, `rewrite_shard_shuffled`,
`corrupt_*`, `truncate_shard`) rewrite one shard file in place to produce layouts the
spec allows but the writers above happen not to emit (payloads in any order, junk
between payloads) and corruptions a reader must reject.

Pure Python: no FUSE and no zarrfs import, so the corpus can also check zarrfs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import struct
from dataclasses import dataclass, field

import crc32c
import numpy as np
import tensorstore as ts
import zarr

__all__ = [
    "Case",
    "build_corpus",
    "case_names",
    "arrays_equal",
    "shard_files",
    "read_shard_index",
    "read_shard_chunks",
    "write_shard",
    "rewrite_shard_shuffled",
    "corrupt_checksum",
    "corrupt_entry_past_end",
    "corrupt_entry_into_index",
    "truncate_shard",
    "EMPTY",
]

# Offset and nbytes of an index entry whose chunk is absent (spec: 2**64 - 1 each).
EMPTY = np.uint64(2**64 - 1)
_ENTRY_BYTES = 16  # one (offset, nbytes) pair of uint64
_CRC_BYTES = 4


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One sharded array of the corpus and what a reader must find in it.

    The first seven fields are the public contract; the rest describe the outermost
    shard layout so tests can take shard files apart without parsing zarr.json.
    `expected` and the other unhashable fields are left out of ==/hash, so Cases can
    go in sets and dict keys.
    """

    name: str
    writer: str  # "zarr" or "tensorstore"
    path: str  # array path relative to the store root
    expected: np.ndarray = field(compare=False, repr=False)
    inner_chunks: tuple[int, ...]  # innermost chunk shape (innermost level when nested)
    shard_shape: tuple[int, ...]
    chunk_key_encoding: dict = field(compare=False)  # always with "configuration.separator"
    # Layout of the outermost sharding codec, i.e. of the shard files themselves.
    index_chunks: tuple[int, ...] = ()  # chunk shape the shard index counts (== inner_chunks unless nested)
    index_location: str = "end"
    index_endian: str = "little"
    index_crc: bool = True
    fill_value: object = field(default=0, compare=False)
    nested: bool = False
    features: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shard_shape, self.index_chunks))

    @property
    def n_chunks(self) -> int:
        """Number of entries in each shard's index."""
        return math.prod(self.chunks_per_shard)

    @property
    def shard_grid(self) -> tuple[int, ...]:
        """Number of shards along each dimension (edge shards included)."""
        return tuple(-(-n // s) for n, s in zip(self.expected.shape, self.shard_shape))

    def shard_key(self, coords: tuple[int, ...]) -> str:
        """Store key of a shard, relative to the array, per its chunk_key_encoding."""
        sep = self.chunk_key_encoding["configuration"]["separator"]
        if self.chunk_key_encoding["name"] == "v2":
            return sep.join(map(str, coords)) if coords else "0"
        return sep.join(["c", *map(str, coords)])

    def shard_path(self, root: pathlib.Path, coords: tuple[int, ...]) -> pathlib.Path:
        return pathlib.Path(root) / self.path / self.shard_key(coords)

    def chunk_region(self, shard_coords: tuple[int, ...], chunk: int) -> tuple[slice, ...]:
        """Array region of index entry `chunk` of a shard, clipped to the array."""
        local = np.unravel_index(chunk, self.chunks_per_shard)
        return tuple(
            slice(min(sc * s + lc * c, n), min(sc * s + (lc + 1) * c, n))
            for sc, lc, s, c, n in zip(shard_coords, local, self.shard_shape, self.index_chunks, self.expected.shape)
        )

    def chunk_is_fill(self, shard_coords: tuple[int, ...], chunk: int) -> bool:
        """True when a writer omitting fill-value chunks leaves this entry empty
        (all of its in-bounds values equal the fill value, or it lies wholly outside)."""
        return _all_fill(self.expected[self.chunk_region(shard_coords, chunk)], self.fill_value)


def arrays_equal(a, b) -> bool:
    """Same shape and values (dtypes not compared), NaN equal to NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    nan_aware = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    return bool(np.array_equal(a, b, equal_nan=nan_aware))


def expected_through_the_v2_view(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """What a v2 reader finds through the v2 view, and where that is defined. Arrays with
    dimension names are shown with the fill value xarray masks by (docs/codecs.md,
    "Fill values and xarray"): NaN for floats, so their missing chunks (writers omit
    chunks holding only the fill value) read NaN; null for other types, so zarr 2
    leaves their missing chunks uninitialized (not defined)."""
    expected = case.expected
    defined = np.ones(expected.shape, dtype=bool)
    if "dimension_names" not in case.features:
        return expected, defined
    shown = expected.copy()
    grid = [range(-(-n // c)) for n, c in zip(expected.shape, case.inner_chunks)]
    for coords in itertools.product(*grid):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, case.inner_chunks))
        if _all_fill(expected[region], case.fill_value):
            if expected.dtype.kind == "f":
                shown[region] = np.nan
            else:
                defined[region] = False
    return shown, defined


def v2_view_reads_as_expected(values, case: Case) -> bool:
    expected, defined = expected_through_the_v2_view(case)
    values = np.asarray(values)
    return values.shape == expected.shape and arrays_equal(values[defined], expected[defined])


def _all_fill(block: np.ndarray, fill) -> bool:
    return arrays_equal(block, np.full(block.shape, fill, dtype=block.dtype))


def shard_files(root: pathlib.Path, case: Case) -> list[pathlib.Path]:
    """All shard files of a case (arrays have no child nodes, so every file under the
    array's directory except its zarr.json is a shard)."""
    base = pathlib.Path(root) / case.path
    return sorted(p for p in base.rglob("*") if p.is_file() and p != base / "zarr.json")


# --------------------------------------------------------------------------------------
# Case specifications (writer-neutral), then the two writers
# --------------------------------------------------------------------------------------

_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
_BYTES_BIG = {"name": "bytes", "configuration": {"endian": "big"}}
_ZSTD = {"name": "zstd", "configuration": {"level": 3, "checksum": False}}
_GZIP = {"name": "gzip", "configuration": {"level": 5}}


def _blosc(typesize: int) -> dict:
    return {
        "name": "blosc",
        "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": typesize, "blocksize": 0},
    }


def _transpose(*order: int) -> dict:
    return {"name": "transpose", "configuration": {"order": list(order)}}


@dataclass(frozen=True)
class _Spec:
    """What to write for one case. `chunks` is the chunk shape of the outermost
    sharding codec; `nested` (if set) is the innermost chunk shape of a second
    sharding level holding `inner` codecs. `blank` regions are set to the fill
    value so writers omit those chunks (or whole shards)."""

    name: str
    writer: str
    shape: tuple[int, ...]
    shard: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    fill: object = 0
    inner: tuple[dict, ...] = (_BYTES,)
    nested: tuple[int, ...] | None = None
    index_location: str = "end"
    index_endian: str = "little"
    index_crc: bool = True
    key: tuple[str, str] = ("default", "/")
    blank: tuple = ()
    nan_values: bool = False  # sprinkle NaN into float data (not only the fill value)
    group: str | None = None  # parent group path, e.g. "group1/sub"
    attributes: dict | None = None
    dimension_names: tuple[str, ...] | None = None
    high_level: bool = False  # zarr only: create_array(shards=...) with its defaults

    @property
    def path(self) -> str:
        return f"{self.group}/{self.name}" if self.group else self.name


def _z(name, *args, **kw) -> _Spec:
    return _Spec(name, "zarr", *args, **kw)


def _t(name, *args, **kw) -> _Spec:
    return _Spec(name, "tensorstore", *args, **kw)


S = np.s_
NAN = float("nan")

# Naming: writer_ndim_<what the case is about>. Every case blanks at least one inner
# chunk unless it is about something else, because missing chunks are the norm.
_SPECS: list[_Spec] = [
    # --- zarr-python 3: index layouts x key encodings -------------------------------
    _z("zarr_2d_end_crc_default_slash", (16, 16), (8, 8), (4, 4), "uint8", blank=(S[0:4, 4:8],)),
    _z("zarr_2d_start_crc_default_slash", (16, 16), (8, 8), (4, 4), "int16",
       index_location="start", blank=(S[8:12, 0:4],)),
    _z("zarr_2d_end_nocrc_default_dot", (16, 16), (8, 8), (4, 4), "uint8",
       index_crc=False, key=("default", "."), blank=(S[4:8, 4:8],)),
    _z("zarr_2d_end_bigcrc_v2_dot", (16, 16), (8, 8), (4, 4), "int16", inner=(_BYTES_BIG,),
       index_endian="big", key=("v2", "."), blank=(S[12:16, 12:16],)),
    _z("zarr_2d_start_nocrc_v2_slash", (16, 16), (8, 8), (4, 4), "uint8",
       index_location="start", index_crc=False, key=("v2", "/"), blank=(S[0:4, 0:4],)),
    _z("zarr_2d_start_bigcrc_default_slash_gzip", (16, 16), (8, 8), (4, 4), "float32", inner=(_BYTES, _GZIP),
       index_location="start", index_endian="big", blank=(S[0:8, 4:8],)),
    _z("zarr_1d_start_nocrc_v2_dot_blosc", (64,), (16,), (4,), "uint8", inner=(_BYTES, _blosc(1)),
       index_location="start", index_crc=False, key=("v2", "."), blank=(S[20:28],)),
    # --- zarr-python 3: missing chunks, empty shards, fill values, edges -----------
    _z("zarr_1d_int16_zstd_missing_fill7_edge", (100,), (32,), (8,), "int16", fill=7, inner=(_BYTES, _ZSTD),
       blank=(S[8:24], S[64:96])),
    _z("zarr_2d_empty_shards_fill255", (16, 24), (8, 8), (4, 4), "uint8", fill=255,
       blank=(S[0:8, 8:16], S[8:16, 16:24], S[8:12, 0:4])),
    _z("zarr_2d_all_fill_no_shards", (12, 12), (8, 8), (4, 4), "float32", fill=1.5, blank=(S[:, :],)),
    _z("zarr_2d_edge_shards_edge_chunks_gzip", (13, 11), (8, 6), (4, 3), "float32", inner=(_BYTES, _GZIP),
       blank=(S[0:4, 3:6],)),
    _z("zarr_3d_float32_nan_fill_blosc_edge", (6, 8, 10), (4, 4, 10), (2, 2, 5), "float32", fill=NAN,
       inner=(_BYTES, _blosc(4)), blank=(S[0:2, 0:2, 0:5], S[4:6, 4:8, :])),
    _z("zarr_3d_float64_bigendian_start", (8, 6, 4), (4, 6, 4), (2, 3, 2), "float64", inner=(_BYTES_BIG,),
       index_location="start", blank=(S[2:4, 0:3, 0:2],)),
    _z("zarr_1d_float64_nan_values_one_chunk_per_shard", (40,), (8,), (8,), "float64", fill=0.0,
       nan_values=True, blank=(S[8:16],)),
    _z("zarr_2d_float32_nan_fill_v2_slash", (10, 10), (10, 10), (5, 5), "float32", fill=NAN, key=("v2", "/"),
       blank=(S[5:10, 0:5],)),
    _z("zarr_4d_complex64_zstd", (4, 4, 4, 6), (2, 4, 4, 6), (2, 2, 2, 3), "complex64", fill=complex(1, -1),
       inner=(_BYTES, _ZSTD), blank=(S[0:2, 0:2, 0:2, 0:3],)),
    _z("zarr_5d_bool_edge", (2, 3, 4, 4, 2), (2, 2, 2, 2, 2), (1, 1, 2, 2, 1), "bool", fill=False,
       blank=(S[0:1, 0:1, 0:2, 0:2, 0:1],)),
    _z("zarr_3d_uint8_default_dot_edge_chunks", (5, 7, 9), (4, 4, 6), (2, 2, 3), "uint8", fill=42,
       key=("default", "."), blank=(S[4:5, 4:7, 6:9],)),
    # --- zarr-python 3: inner array->array codec, nested sharding -----------------
    _z("zarr_2d_transpose_zstd", (16, 12), (8, 12), (4, 6), "int16", inner=(_transpose(1, 0), _BYTES, _ZSTD),
       blank=(S[0:4, 6:12],)),
    _z("zarr_2d_nested_sharding", (16, 16), (16, 16), (8, 8), "int16", fill=-1, nested=(4, 4),
       blank=(S[0:4, 0:4], S[8:16, 8:16])),
    _z("zarr_3d_nested_sharding_start_bigcrc_zstd", (8, 8, 12), (8, 8, 6), (4, 4, 6), "float32", fill=0.5,
       nested=(2, 2, 3), inner=(_BYTES, _ZSTD), index_location="start", index_endian="big",
       blank=(S[0:2, 0:2, 0:3], S[4:8, 4:8, 6:12])),
    # --- zarr-python 3: groups, attributes, dimension names, high-level API --------
    _z("zarr_2d_attrs_dimnames", (12, 8), (6, 8), (3, 4), "float64", group="group1/sub",
       attributes={"units": "m", "scale": [1.0, 2.5], "nested": {"ok": True}}, dimension_names=("y", "x"),
       blank=(S[0:3, 0:4],)),
    _z("zarr_2d_create_array_defaults", (20, 20), (10, 10), (5, 5), "float64", high_level=True,
       blank=(S[0:5, 5:10],)),
    _z("zarr_3d_create_array_start_gzip", (6, 6, 6), (6, 6, 6), (3, 3, 3), "int16", high_level=True,
       inner=(_BYTES, _GZIP), index_location="start", dimension_names=("z", "y", None),
       blank=(S[3:6, 3:6, 3:6],)),
    # --- tensorstore: index layouts x key encodings ---------------------------------
    _t("ts_2d_end_crc_default_slash", (16, 16), (8, 8), (4, 4), "uint8", blank=(S[0:4, 4:8],)),
    _t("ts_2d_start_crc_default_slash", (16, 16), (8, 8), (4, 4), "int16",
       index_location="start", blank=(S[8:12, 0:4],)),
    _t("ts_2d_end_nocrc_default_slash", (16, 16), (8, 8), (4, 4), "uint8", index_crc=False,
       blank=(S[4:8, 4:8],)),
    _t("ts_2d_start_bigcrc_default_dot", (16, 16), (8, 8), (4, 4), "int16", inner=(_BYTES_BIG,),
       index_location="start", index_endian="big", key=("default", "."), blank=(S[12:16, 12:16],)),
    _t("ts_2d_end_crc_v2_dot", (16, 16), (8, 8), (4, 4), "uint8", key=("v2", "."), blank=(S[0:4, 0:4],)),
    _t("ts_2d_start_nocrc_v2_slash", (16, 16), (8, 8), (4, 4), "int16", index_location="start",
       index_crc=False, key=("v2", "/"), blank=(S[4:8, 8:12],)),
    _t("ts_2d_end_bignocrc_default_slash", (16, 16), (8, 8), (4, 4), "uint8", index_endian="big",
       index_crc=False, blank=(S[8:12, 8:12],)),
    # --- tensorstore: missing chunks, empty shards, fill values, edges ------------
    _t("ts_2d_missing_chunks_fill9", (16, 16), (8, 8), (4, 4), "int16", fill=9,
       blank=(S[0:4, 0:8], S[12:16, 12:16], S[4:8, 8:12])),
    _t("ts_2d_empty_shards", (16, 24), (8, 8), (4, 4), "uint8", fill=255, blank=(S[0:8, 8:16], S[8:16, 0:8])),
    _t("ts_2d_edge_shards_edge_chunks", (13, 11), (8, 6), (4, 3), "int16", fill=-5, blank=(S[8:12, 0:3],)),
    _t("ts_1d_float64_nan_fill_edge", (50,), (16,), (4,), "float64", fill=NAN, nan_values=True,
       blank=(S[4:12], S[32:48])),
    # --- tensorstore: compressors, dtypes, ndim -----------------------------------
    _t("ts_3d_int16_zstd", (8, 8, 8), (4, 8, 8), (2, 4, 4), "int16", inner=(_BYTES, _ZSTD),
       blank=(S[0:2, 0:4, 0:4],)),
    _t("ts_2d_float32_gzip", (12, 12), (12, 12), (4, 4), "float32", inner=(_BYTES, _GZIP), blank=(S[4:8, 4:8],)),
    _t("ts_2d_float64_blosc_start", (12, 12), (6, 12), (3, 4), "float64", inner=(_BYTES, _blosc(8)),
       index_location="start", blank=(S[0:3, 8:12],)),
    _t("ts_4d_complex64", (4, 3, 4, 4), (2, 3, 4, 4), (1, 3, 2, 2), "complex64", fill=complex(0, 2),
       blank=(S[0:1, :, 0:2, 0:2],)),
    _t("ts_3d_bool_edge", (5, 6, 7), (4, 4, 4), (2, 2, 2), "bool", fill=True, blank=(S[0:2, 0:2, 0:2],)),
    _t("ts_5d_int16_bigendian", (2, 2, 3, 4, 4), (2, 2, 2, 4, 4), (1, 2, 1, 2, 4), "int16", inner=(_BYTES_BIG,),
       blank=(S[0:1, 0:2, 0:1, 0:2, 0:4],)),
    _t("ts_0d_float64", (), (), (), "float64", fill=NAN),
    _t("ts_0d_int16_v2_bigendian_start", (), (), (), "int16", inner=(_BYTES_BIG,), index_location="start",
       key=("v2", ".")),
    _t("ts_0d_uint8_all_fill", (), (), (), "uint8", fill=3, blank=(S[...],)),
    # --- tensorstore: transpose, nested sharding, attributes in a group -----------
    _t("ts_2d_transpose_zstd", (12, 16), (12, 8), (6, 4), "float32", inner=(_transpose(1, 0), _BYTES, _ZSTD),
       blank=(S[6:12, 0:4],)),
    _t("ts_2d_nested_sharding_gzip", (16, 16), (16, 8), (8, 4), "uint8", nested=(4, 2), inner=(_BYTES, _GZIP),
       index_location="start", blank=(S[0:8, 0:4], S[8:12, 4:6])),
    _t("ts_2d_attrs_dimnames", (10, 10), (10, 10), (5, 5), "int16", group="group2",
       attributes={"description": "tensorstore array in a group", "n": 3}, dimension_names=("row", "col"),
       blank=(S[0:5, 5:10],)),
]


def case_names() -> list[str]:
    """Names of all cases without building anything (for test parametrization)."""
    return [s.name for s in _SPECS]


# --- metadata (JSON as in zarr.json) ----------------------------------------------------


def _index_codecs(spec: _Spec) -> list[dict]:
    codecs = [{"name": "bytes", "configuration": {"endian": spec.index_endian}}]
    return codecs + ([{"name": "crc32c"}] if spec.index_crc else [])


def _sharding_json(spec: _Spec) -> dict:
    """The (possibly two-level) sharding_indexed codec. The nested level keeps the
    default index layout so only the outer one varies per case."""
    inner = list(spec.inner)
    if spec.nested is not None:
        inner = [{"name": "sharding_indexed", "configuration": {"chunk_shape": list(spec.nested), "codecs": inner}}]
    config = {
        "chunk_shape": list(spec.chunks),
        "codecs": inner,
        "index_codecs": _index_codecs(spec),
        "index_location": spec.index_location,
    }
    return {"name": "sharding_indexed", "configuration": config}


def _key_encoding_json(spec: _Spec) -> dict:
    name, sep = spec.key
    return {"name": name, "configuration": {"separator": sep}}


def _fill_json(fill, dtype: np.dtype):
    """Fill value in zarr.json form (tensorstore takes only JSON)."""
    if dtype.kind == "c":
        return [_fill_json(fill.real, np.dtype("f8")), _fill_json(fill.imag, np.dtype("f8"))]
    if dtype.kind == "f" and math.isnan(fill):
        return "NaN"
    return dtype.type(fill).item()


# --- data ------------------------------------------------------------------------------


def _make_data(spec: _Spec, seed: int) -> np.ndarray:
    """Deterministic pseudo-random values, with `blank` regions at the fill value."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "b":
        data = rng.random(spec.shape) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=spec.shape, endpoint=True)
    elif dtype.kind == "c":
        data = rng.standard_normal(spec.shape) + 1j * rng.standard_normal(spec.shape)
    else:
        data = rng.standard_normal(spec.shape) * 100
    data = np.asarray(data).astype(dtype)
    if spec.nan_values:
        data[rng.random(spec.shape) < 0.1] = np.nan
    for region in spec.blank:
        data[region] = spec.fill
    return data


# --- writers ---------------------------------------------------------------------------


def _write_zarr(root: pathlib.Path, spec: _Spec, data: np.ndarray) -> None:
    common = dict(
        name=spec.path,
        shape=spec.shape,
        dtype=spec.dtype,
        fill_value=spec.fill,
        chunk_key_encoding={"name": spec.key[0], "separator": spec.key[1]},
        attributes=spec.attributes,
        dimension_names=spec.dimension_names,
    )
    if spec.high_level:
        # The API most users call: inner codecs become compressors, index codecs
        # are zarr's default (bytes little + crc32c).
        assert spec.index_endian == "little" and spec.index_crc and spec.nested is None
        compressors = [c for c in spec.inner if c["name"] != "bytes"] or "auto"
        arr = zarr.create_array(
            root, chunks=spec.chunks, shards={"shape": spec.shard, "index_location": spec.index_location},
            compressors=compressors, **common,
        )
    else:
        # Explicit ShardingCodec (as JSON): the only way to choose index codecs or nest.
        arr = zarr.create_array(
            root, chunks=spec.shard, serializer=_sharding_json(spec), compressors=None, filters=None, **common
        )
    arr[...] = data


def _write_tensorstore(root: pathlib.Path, spec: _Spec, data: np.ndarray) -> None:
    dtype = np.dtype(spec.dtype)
    metadata = {
        "shape": list(spec.shape),
        "data_type": spec.dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(spec.shard)}},
        "chunk_key_encoding": _key_encoding_json(spec),
        "fill_value": _fill_json(spec.fill, dtype),
        "codecs": [_sharding_json(spec)],
    }
    if spec.attributes is not None:
        metadata["attributes"] = spec.attributes
    if spec.dimension_names is not None:
        metadata["dimension_names"] = list(spec.dimension_names)
    store = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / spec.path)}, "metadata": metadata},
        create=True,
    ).result()
    # One write of the whole array, so each shard file is written exactly once.
    store.write(data).result()


_WRITERS = {"zarr": _write_zarr, "tensorstore": _write_tensorstore}


# --- the store -------------------------------------------------------------------------


def _write_scaffold(root: pathlib.Path) -> None:
    """Root group, groups with attributes, pass-through arrays and non-zarr files."""
    zarr.create_group(root, attributes={"title": "zarrfs test corpus", "version": 1})
    zarr.create_group(root, path="group1", attributes={"kind": "outer", "tags": ["a", "b"]})
    zarr.create_group(root, path="group1/sub", attributes={"kind": "inner", "depth": 2})
    zarr.create_group(root, path="group2", attributes={"writer": "tensorstore arrays live here"})
    zarr.create_group(root, path="plain", attributes={"note": "unsharded arrays, passed through as-is"})

    unsharded = zarr.create_array(
        root, name="plain/unsharded_v3", shape=(10, 10), chunks=(5, 5), dtype="int16", fill_value=0,
        attributes={"sharded": False},
    )
    unsharded[...] = np.arange(100, dtype="int16").reshape(10, 10)
    # Rooted at the array itself: created by path from `root`, zarr-python would also
    # write v2 .zgroup/.zattrs into the root and plain/, next to their zarr.json.
    v2 = zarr.create_array(
        root / "plain" / "v2_array", shape=(8, 6), chunks=(4, 3), dtype="float32", fill_value=0.0, zarr_format=2,
    )
    v2[...] = np.linspace(0, 1, 48, dtype="float32").reshape(8, 6)

    (root / "README.txt").write_text("zarrfs test corpus: sharded Zarr v3 arrays by zarr-python 3 and tensorstore\n")
    (root / "notes").mkdir()
    (root / "notes" / "info.txt").write_text("a plain file in a plain directory, not part of any zarr node\n")


def _read_layout(root: pathlib.Path, spec: _Spec) -> tuple[dict, dict, list[dict]]:
    """Chunk key encoding, outer sharding config and innermost codecs as actually
    written. The key encoding is normalised to always carry its separator, since
    writers may omit defaults (tensorstore drops the "/" separator)."""
    meta = json.loads((root / spec.path / "zarr.json").read_text())
    cke = dict(meta["chunk_key_encoding"])
    default_sep = "/" if cke["name"] == "default" else "."
    cke["configuration"] = {"separator": cke.get("configuration", {}).get("separator", default_sep)}
    (sharding,) = [c for c in meta["codecs"] if c["name"] == "sharding_indexed"]
    innermost = sharding["configuration"]["codecs"]
    while innermost[0]["name"] == "sharding_indexed":
        innermost = innermost[0]["configuration"]["codecs"]
    return cke, sharding["configuration"], innermost


def _is_nan(fill) -> bool:
    return isinstance(fill, float) and math.isnan(fill)


def _features(spec: _Spec, case: Case, innermost: list[dict]) -> frozenset[str]:
    """Tags for picking cases in tests. Codec and layout tags come from the written
    metadata (e.g. create_array adds zstd on its own), `missing`/`empty_shard`
    from the data."""
    key = case.chunk_key_encoding
    tags = {
        case.writer, f"{case.expected.ndim}d", spec.dtype, f"index_{case.index_location}",
        f"key_{key['name']}{key['configuration']['separator']}", "crc" if case.index_crc else "no_crc",
    }
    names = {c["name"] for c in innermost}
    tags |= names & {"zstd", "gzip", "blosc", "transpose"}
    optional = {
        "index_big": case.index_endian == "big",
        "compressed": bool(names & {"zstd", "gzip", "blosc"}),
        "data_big": any(c.get("configuration", {}).get("endian") == "big" for c in innermost),
        "nested": case.nested,
        "attributes": bool(spec.attributes),
        "dimension_names": bool(spec.dimension_names),
        "in_group": bool(spec.group),
        "high_level_api": spec.high_level,
        "nan_fill": _is_nan(spec.fill),
        "nonzero_fill": not _is_nan(spec.fill) and spec.fill != 0,
        "nan_values": spec.nan_values,
        "edge_shard": any(n % s for n, s in zip(spec.shape, spec.shard)),
        "edge_chunk": any(n % c for n, c in zip(spec.shape, case.inner_chunks)),
        "one_chunk_per_shard": case.n_chunks == 1,
    }
    tags |= {tag for tag, on in optional.items() if on}
    for coords in itertools.product(*map(range, case.shard_grid)):
        fills = [case.chunk_is_fill(coords, i) for i in range(case.n_chunks)]
        tags |= {"empty_shard"} if all(fills) else ({"missing"} if any(fills) else set())
    return frozenset(tags)


def build_corpus(root: pathlib.Path) -> list[Case]:
    """Write the corpus store at `root` (absent or empty) and return its sharded cases."""
    root = pathlib.Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    _write_scaffold(root)
    cases = []
    for seed, spec in enumerate(_SPECS):
        data = _make_data(spec, seed)
        _WRITERS[spec.writer](root, spec, data)
        cases.append(_make_case(root, spec, data))
    return cases


def _make_case(root: pathlib.Path, spec: _Spec, data: np.ndarray) -> Case:
    cke, sharding, innermost = _read_layout(root, spec)
    # Absent keys are the spec's defaults (tensorstore omits "index_location": "end").
    index_codecs = sharding.get("index_codecs", [_BYTES, {"name": "crc32c"}])
    case = Case(
        name=spec.name,
        writer=spec.writer,
        path=spec.path,
        expected=data,
        inner_chunks=tuple(spec.nested if spec.nested is not None else spec.chunks),
        shard_shape=tuple(spec.shard),
        chunk_key_encoding=cke,
        index_chunks=tuple(sharding["chunk_shape"]),
        index_location=sharding.get("index_location", "end"),
        index_endian=index_codecs[0].get("configuration", {}).get("endian", "little"),
        index_crc=any(c["name"] == "crc32c" for c in index_codecs),
        fill_value=spec.fill,
        nested=spec.nested is not None,
    )
    # Tags need the Case's geometry helpers, hence a second, tagged copy.
    return dataclasses.replace(case, features=_features(spec, case, innermost))


# --------------------------------------------------------------------------------------
# Shard surgery (one shard file; layout per the Zarr v3 sharding spec)
# --------------------------------------------------------------------------------------


def _index_size(n_chunks: int, crc: bool) -> int:
    return n_chunks * _ENTRY_BYTES + (_CRC_BYTES if crc else 0)


def _index_span(file_size: int, n_chunks: int, location: str, crc: bool) -> tuple[int, int]:
    """[start, stop) of the encoded index within a shard file."""
    size = _index_size(n_chunks, crc)
    if file_size < size:
        raise ValueError(f"shard of {file_size} bytes is shorter than its {size}-byte index")
    return (0, size) if location == "start" else (file_size - size, file_size)


def _u64(endian: str) -> np.dtype:
    return np.dtype("<u8" if endian == "little" else ">u8")


def _encode_index(index: np.ndarray, endian: str, crc: bool) -> bytes:
    raw = np.asarray(index, dtype=np.uint64).astype(_u64(endian)).tobytes()
    # crc32c codec: 4-byte little-endian CRC32C of everything before it.
    return raw + (struct.pack("<I", crc32c.crc32c(raw)) if crc else b"")


def read_shard_index(
    shard: pathlib.Path, n_chunks: int, location: str = "end", endian: str = "little", crc: bool = True,
    verify: bool = True,
) -> np.ndarray:
    """Decoded index, shape (n_chunks, 2) uint64 of (offset, nbytes); EMPTY marks absent
    chunks. Raises ValueError on a CRC mismatch unless verify=False."""
    data = pathlib.Path(shard).read_bytes()
    start, stop = _index_span(len(data), n_chunks, location, crc)
    encoded = data[start:stop]
    raw = encoded[:-_CRC_BYTES] if crc else encoded
    if crc and verify and struct.unpack("<I", encoded[-_CRC_BYTES:])[0] != crc32c.crc32c(raw):
        raise ValueError(f"{shard}: shard index checksum mismatch")
    return np.frombuffer(raw, dtype=_u64(endian)).astype(np.uint64).reshape(n_chunks, 2)


def read_shard_chunks(
    shard: pathlib.Path, n_chunks: int, location: str = "end", endian: str = "little", crc: bool = True
) -> dict[int, bytes]:
    """Encoded payload of every present chunk, keyed by linear (C-order) chunk index."""
    data = pathlib.Path(shard).read_bytes()
    index = read_shard_index(shard, n_chunks, location, endian, crc)
    return {
        i: data[int(off) : int(off) + int(nbytes)]
        for i, (off, nbytes) in enumerate(index)
        if not (off == EMPTY and nbytes == EMPTY)
    }


def _junk(n: int) -> bytes:
    # Recognisable filler that decodes as nothing sensible if a reader slips into it.
    return (b"\xde\xad\xbe\xef" * (n // 4 + 1))[:n]


def write_shard(
    shard: pathlib.Path, chunks: dict[int, bytes], n_chunks: int, location: str = "end",
    endian: str = "little", crc: bool = True, order: list[int] | None = None, gap: int = 0,
) -> None:
    """Write a shard from linear chunk index -> encoded bytes; absent indices get EMPTY.

    `order` is the payload order in the file (default: ascending chunk index). `gap`
    junk bytes go between consecutive payloads and, when the index is at the end,
    before the first payload too, so offsets are never simply cumulative sizes.
    """
    order = sorted(chunks) if order is None else list(order)
    if sorted(order) != sorted(chunks):
        raise ValueError("order must be a permutation of the chunk indices given")
    if any(not 0 <= i < n_chunks for i in order):
        raise ValueError(f"chunk index out of range for {n_chunks} chunks")
    index = np.full((n_chunks, 2), EMPTY, dtype=np.uint64)
    base = _index_size(n_chunks, crc) if location == "start" else 0
    body = bytearray(_junk(gap) if location == "end" else b"")
    for k, i in enumerate(order):
        if k:
            body += _junk(gap)
        index[i] = (base + len(body), len(chunks[i]))
        body += chunks[i]
    encoded = _encode_index(index, endian, crc)
    payload = bytes(body)
    pathlib.Path(shard).write_bytes(encoded + payload if location == "start" else payload + encoded)


def rewrite_shard_shuffled(
    shard: pathlib.Path, n_chunks: int, location: str = "end", endian: str = "little", crc: bool = True,
    seed: int = 0, gap: int = 7,
) -> None:
    """Rewrite a shard with the same chunks in another payload order, `gap` junk bytes
    apart: reversed file order for seed=0, a seeded random permutation otherwise."""
    chunks = read_shard_chunks(shard, n_chunks, location, endian, crc)
    index = read_shard_index(shard, n_chunks, location, endian, crc)
    file_order = sorted(chunks, key=lambda i: int(index[i, 0]))
    if seed == 0:
        order = file_order[::-1]
    else:
        order = [file_order[j] for j in np.random.default_rng(seed).permutation(len(file_order))]
    write_shard(shard, chunks, n_chunks, location, endian, crc, order=order, gap=gap)


def corrupt_checksum(shard: pathlib.Path, location: str = "end") -> None:
    """Flip one bit of an index entry (not of the CRC) so the crc32c check fails:
    the last entry byte before the CRC at the end, or the file's first byte at the start."""
    data = bytearray(pathlib.Path(shard).read_bytes())
    pos = len(data) - _CRC_BYTES - 1 if location == "end" else 0
    data[pos] ^= 0x01
    pathlib.Path(shard).write_bytes(bytes(data))


def _set_entry(
    shard: pathlib.Path, n_chunks: int, location: str, endian: str, crc: bool, chunk: int, entry_fn
) -> None:
    """Replace one index entry with entry_fn(old_entry, file_size, index_span) and
    re-encode the index (fresh CRC) so that entry is the only thing wrong."""
    path = pathlib.Path(shard)
    data = path.read_bytes()
    index = read_shard_index(path, n_chunks, location, endian, crc).copy()
    span = _index_span(len(data), n_chunks, location, crc)
    index[chunk] = entry_fn(index[chunk], len(data), span)
    encoded = _encode_index(index, endian, crc)
    path.write_bytes(data[: span[0]] + encoded + data[span[1] :])


def _nbytes_or(entry: np.ndarray, default: int) -> int:
    # An absent chunk has no length of its own; give it one so the entry points somewhere.
    return default if entry[1] == EMPTY else int(entry[1])


def corrupt_entry_past_end(
    shard: pathlib.Path, n_chunks: int, location: str = "end", endian: str = "little", crc: bool = True,
    chunk: int = 0,
) -> None:
    """Make entry `chunk` start one byte past EOF (same length; 16 if it was absent)."""
    _set_entry(shard, n_chunks, location, endian, crc, chunk,
               lambda entry, size, span: (size + 1, _nbytes_or(entry, 16)))


def corrupt_entry_into_index(
    shard: pathlib.Path, n_chunks: int, location: str = "end", endian: str = "little", crc: bool = True,
    chunk: int = 0,
) -> None:
    """Make entry `chunk` point at the index itself: offset = index start, length =
    min(old length, index size), so it lies inside the file but overlaps the index."""
    def entry_fn(entry, size, span):
        return (span[0], min(_nbytes_or(entry, span[1] - span[0]), span[1] - span[0]))

    _set_entry(shard, n_chunks, location, endian, crc, chunk, entry_fn)


def truncate_shard(shard: pathlib.Path, nbytes: int) -> None:
    """Cut a shard file to `nbytes` (e.g. shorter than its index; 0 = empty file)."""
    with open(shard, "r+b") as f:
        f.truncate(nbytes)
