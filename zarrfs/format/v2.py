"""Zarr v3 <-> Zarr v2 metadata, for the v2 view (SPEC §4).

Only exact equivalents are translated: the chunk bytes a v2 reader decodes with
the translated ``.zarray`` must be the very bytes the v3 codec chain encoded.
docs/codecs.md is the table this module implements (a test walks it).

v3 codec chain                 v2 metadata
-----------------------------  ------------------------------------------------
transpose (identity/reversed)  order "C" / "F"
bytes {endian}                 byte order of dtype ("<", ">", "|" for 1 byte)
b2b codecs A, B, ..., Z        filters [A, B, ...], compressor Z
trailing crc32c                stripped (and verified) by the view
"""

from __future__ import annotations

import base64
import json
import math
import struct

V3_TO_NUMPY = {
    "bool": "b1", "int8": "i1", "uint8": "u1",
    "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4", "int64": "i8", "uint64": "u8",
    "float16": "f2", "float32": "f4", "float64": "f8", "complex64": "c8", "complex128": "c16",
}
NUMPY_TO_V3 = {v: k for k, v in V3_TO_NUMPY.items()}
BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class NoV2Equivalent(ValueError):
    """The array has no exact Zarr v2 metadata; the reason says why."""


def v3_to_v2(doc: dict, separator: str) -> tuple[dict, dict, bool]:
    """``(.zarray, .zattrs, strip_crc)`` for an *unsharded* v3 array document."""
    data_type = doc.get("data_type")
    if data_type not in V3_TO_NUMPY:
        raise NoV2Equivalent(f"data type {data_type!r} has no v2 equivalent here")
    ndim = len(doc["shape"])
    codecs = [_named(c) for c in doc["codecs"]]
    order, codecs = _order(codecs, ndim)
    if not codecs or codecs[0][0] != "bytes":
        raise NoV2Equivalent(f"array-to-bytes codec {codecs[0][0] if codecs else None!r} is not 'bytes'")
    endian = (codecs[0][1] or {}).get("endian", "little")
    strip_crc = len(codecs) > 1 and codecs[-1][0] == "crc32c"
    byte_codecs = [_v2_codec(name, config, data_type) for name, config in codecs[1 : len(codecs) - strip_crc]]
    zarray = {
        "zarr_format": 2,
        "shape": list(doc["shape"]),
        "chunks": list(doc["chunk_grid"]["configuration"]["chunk_shape"]),
        "dtype": _numpy_dtype(data_type, endian),
        "compressor": byte_codecs[-1] if byte_codecs else None,
        "fill_value": v2_fill_value(doc, data_type),
        "order": order,
        "filters": byte_codecs[:-1] or None,
        "dimension_separator": separator,
    }
    return zarray, _v2_attributes(doc, data_type, zarray["fill_value"]), strip_crc


def v2_to_v3(zarray: dict, zattrs: dict | None = None) -> dict:
    """The unsharded v3 document equivalent to a v2 ``.zarray`` (+ ``.zattrs``)."""
    dtype = zarray["dtype"]
    if not isinstance(dtype, str) or dtype[1:] not in NUMPY_TO_V3:
        raise NoV2Equivalent(f"v2 dtype {dtype!r} is not supported")
    data_type = NUMPY_TO_V3[dtype[1:]]
    ndim = len(zarray["shape"])
    codecs = []
    if zarray.get("order", "C") == "F" and ndim > 1:
        codecs.append({"name": "transpose", "configuration": {"order": list(range(ndim))[::-1]}})
    codecs.append({"name": "bytes", "configuration": {"endian": "big" if dtype[0] == ">" else "little"}}
                  if dtype[1:] not in ("b1", "i1", "u1") else {"name": "bytes"})
    for v2_codec in [*(zarray.get("filters") or []), zarray.get("compressor")]:
        if v2_codec is not None:
            codecs.append(_v3_codec(v2_codec, typesize=int(dtype[2:]) if dtype[1] != "b" else 1))
    attributes = dict(zattrs or {})
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(zarray["shape"]),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(zarray["chunks"])}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": zarray.get("dimension_separator", ".")}},
        "fill_value": fill_to_v3(zarray.get("fill_value"), data_type),
        "codecs": codecs,
        "attributes": attributes,
    }
    names = attributes.pop("_ARRAY_DIMENSIONS", None)
    if isinstance(names, list) and len(names) == ndim:
        doc["dimension_names"] = names
    if zarray.get("fill_value") is not None and "_FillValue" not in attributes:
        # xarray on zarr 2 masks by the fill value, on zarr 3 by this attribute; and a null
        # fill value (no attribute) stays told apart from the zero v3 stores for it
        attributes["_FillValue"] = _xarray_encoded_fill(doc["fill_value"], data_type)
    return doc


def group_v3_to_v2(doc: dict) -> dict[str, dict]:
    """``{".zgroup": ..., ".zattrs": ...}`` (no ``.zattrs`` without attributes)."""
    files = {".zgroup": {"zarr_format": 2}}
    if doc.get("attributes"):
        files[".zattrs"] = doc["attributes"]
    return files


def dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=4, sort_keys=True) + "\n").encode()


# -- codecs -----------------------------------------------------------------


def _named(codec) -> tuple[str, dict]:
    return (codec, {}) if isinstance(codec, str) else (codec["name"], codec.get("configuration") or {})


def _order(codecs: list[tuple[str, dict]], ndim: int) -> tuple[str, list]:
    """The v2 ``order`` of a leading transpose (none, identity or reversed)."""
    if not codecs or codecs[0][0] != "transpose":
        return "C", codecs
    axes = list(codecs[0][1].get("order", []))
    if axes == list(range(ndim)):
        return "C", codecs[1:]
    if axes == list(range(ndim))[::-1]:
        return "F", codecs[1:]
    raise NoV2Equivalent(f"transpose {axes} is neither the identity nor a reversal of the axes")


def _v2_codec(name: str, config: dict, data_type: str) -> dict:
    if name == "gzip":
        return {"id": "gzip", "level": config.get("level", 5)}
    if name == "zstd":
        if config.get("checksum"):
            raise NoV2Equivalent("zstd with checksum: the numcodecs of many v2 readers cannot verify it")
        return {"id": "zstd", "level": config.get("level", 0)}
    if name == "blosc":
        shuffle = config.get("shuffle", "noshuffle")
        if shuffle not in BLOSC_SHUFFLE:
            raise NoV2Equivalent(f"blosc shuffle {shuffle!r}")
        return {"id": "blosc", "cname": config.get("cname", "lz4"), "clevel": config.get("clevel", 5),
                "shuffle": BLOSC_SHUFFLE[shuffle], "blocksize": config.get("blocksize", 0)}
    if name.startswith("numcodecs."):  # zarr-python 3 wraps numcodecs under their v2 ids
        return {"id": name.removeprefix("numcodecs."), **config}
    if name == "crc32c":
        raise NoV2Equivalent("crc32c before other codecs cannot be stripped by the view")
    raise NoV2Equivalent(f"codec {name!r} has no v2 equivalent")


def _v3_codec(codec: dict, typesize: int) -> dict:
    config = {k: v for k, v in codec.items() if k != "id"}
    if codec["id"] == "gzip":
        return {"name": "gzip", "configuration": {"level": config.get("level", 5)}}
    if codec["id"] == "zstd":
        return {"name": "zstd", "configuration": {"level": config.get("level", 0), "checksum": False}}
    if codec["id"] == "blosc":
        shuffle = {v: k for k, v in BLOSC_SHUFFLE.items()}[config.get("shuffle", 1)]
        return {"name": "blosc", "configuration": {
            "cname": config.get("cname", "lz4"), "clevel": config.get("clevel", 5), "shuffle": shuffle,
            "blocksize": config.get("blocksize", 0), "typesize": typesize,
        }}
    return {"name": f"numcodecs.{codec['id']}", "configuration": config}


def _numpy_dtype(data_type: str, endian: str) -> str:
    code = V3_TO_NUMPY[data_type]
    if code in ("b1", "i1", "u1"):
        return "|" + code
    return ("<" if endian == "little" else ">") + code


def _v2_attributes(doc: dict, data_type: str, fill_value) -> dict:
    attributes = dict(doc.get("attributes") or {})
    if "_FillValue" in attributes and _same_fill(attributes["_FillValue"], fill_value, data_type):
        del attributes["_FillValue"]  # it is the fill value there (v2_to_v3 put it here)
    names = doc.get("dimension_names")
    if names and all(isinstance(n, str) for n in names):
        attributes.setdefault("_ARRAY_DIMENSIONS", list(names))
    return attributes


# -- fill values ------------------------------------------------------------


def v2_fill_value(doc: dict, data_type: str):
    """The v2 view's ``fill_value`` of a v3 array.

    zarr-python 2's ``fill_value`` doubles as xarray's ``_FillValue`` (xarray masks
    values equal to it), while xarray on zarr 3 masks only by the ``_FillValue``
    attribute. For arrays xarray opens (those with dimension names) the view shows
    the ``_FillValue`` attribute as the fill value (and leaves it out of
    ``.zattrs``), and without one NaN for floats and null otherwise, so that xarray
    on zarr 2 reads what xarray on zarr 3 reads. The cost, for those arrays only:
    zarr 2 fills missing chunks with that value instead of the v3 fill value (for
    null, with whatever memory held). docs/codecs.md, "Fill values and xarray".
    """
    attributes = doc.get("attributes") or {}
    if doc.get("dimension_names") or "_ARRAY_DIMENSIONS" in attributes:
        if "_FillValue" in attributes:
            decoded = _xarray_fill_value(attributes["_FillValue"], data_type)
            if decoded is not None:
                return fill_to_v2(decoded, data_type)
        return "NaN" if V3_TO_NUMPY[data_type][0] == "f" else None
    return fill_to_v2(doc.get("fill_value"), data_type)


def _same_fill(attribute, v2_fill, data_type: str) -> bool:
    """Whether a ``_FillValue`` attribute names the v2 fill value shown (NaN equal to NaN)."""
    decoded = _xarray_fill_value(attribute, data_type)
    if decoded is None or v2_fill is None:
        return False
    return json.dumps(fill_to_v2(decoded, data_type)) == json.dumps(v2_fill)


def _xarray_encoded_fill(value, data_type: str):
    """A v3 fill value as xarray writes ``_FillValue`` into zarr v3 attributes."""
    kind = V3_TO_NUMPY[data_type][0]
    if kind == "f":
        number = _float_from_hex(value) if isinstance(value, str) and value.startswith("0x") else float(value)
        return base64.standard_b64encode(struct.pack("<d", number)).decode()
    if kind == "c":
        return [_xarray_encoded_fill(part, "float64") for part in value]
    return bool(value) if kind == "b" else int(value)


def _xarray_fill_value(value, data_type: str):
    """The ``_FillValue`` attribute xarray writes into zarr v3 attributes (floats as the
    base64 of a little-endian double), as a v3 fill value; None if it is not one."""
    kind = V3_TO_NUMPY[data_type][0]
    try:
        if kind == "f" and isinstance(value, str) and not value.startswith("0x") \
                and value not in ("NaN", "Infinity", "-Infinity"):
            return struct.unpack("<d", base64.standard_b64decode(value))[0]
        if kind == "c" and isinstance(value, list) and len(value) == 2:
            return [_xarray_fill_value(part, "float64") for part in value]
        if kind in "iu" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "b" and isinstance(value, bool):
            return value
        if kind == "f" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return value
    except (ValueError, struct.error):
        return None
    return None


def fill_to_v2(value, data_type: str):
    """A v3 fill value as zarr 2.18 writes it for the same dtype."""
    kind = V3_TO_NUMPY[data_type][0]
    if kind == "c":
        parts = value if isinstance(value, list) else [value, 0.0]  # tolerate a bare real number
        return [_float_to_v2(part, data_type) for part in parts]
    if kind == "f":
        return _float_to_v2(value, data_type)
    if kind == "b":
        return bool(value)
    return int(value)


def _float_to_v2(value, data_type: str):
    if isinstance(value, str) and value.startswith("0x"):
        value = _float_from_hex(value)
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity" mean the same in v2
        return value
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float_from_hex(text: str) -> float:
    raw = int(text, 16)
    nbytes = (len(text) - 2) // 2
    fmt = {2: ">e", 4: ">f", 8: ">d"}[nbytes]
    return struct.unpack(fmt, raw.to_bytes(nbytes, "big"))[0]


def fill_to_v3(value, data_type: str):
    """A v2 fill value as v3 metadata spells it; ``null`` becomes the dtype's zero."""
    kind = V3_TO_NUMPY[data_type][0]
    if value is None:
        return False if kind == "b" else [0.0, 0.0] if kind == "c" else 0.0 if kind == "f" else 0
    if kind == "c":
        return [_float_to_v2(part, data_type) for part in value]
    if kind == "f":
        return _float_to_v2(value, data_type)
    return bool(value) if kind == "b" else int(value)
