"""docs/codecs.md is the contract of the v2 translation: every row is checked here."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

from zarrfs.format.v2 import NoV2Equivalent, fill_to_v2, fill_to_v3, v2_to_v3, v3_to_v2

DOC = Path(__file__).resolve().parent.parent / "docs" / "codecs.md"


def table(heading: str) -> list[list]:
    """The rows of the table under ``## heading``, each cell's `code` parsed as JSON."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) < 2 or set(cells[0]) <= {"-"} or cells[0] in ("direction", "data_type"):
            continue
        rows.append([json.loads(c.strip("`").replace("\\|", "|")) if c.startswith("`") else c for c in cells])
    assert rows, f"no rows under {heading}"
    return rows


def v3_doc(data_type: str, codecs: list, fill=0) -> dict:
    return {"zarr_format": 3, "node_type": "array", "shape": [6, 4], "data_type": data_type,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3, 2]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": codecs, "attributes": {}}


CHAINS = table("Codec chains")
FILLS = table("Fill values")
IMPOSSIBLE = table("No exact equivalent")


@pytest.mark.parametrize("direction,data_type,codecs,fields", CHAINS)
def test_codec_chain_rows(direction, data_type, codecs, fields):
    zarray, _, strip_crc = v3_to_v2(v3_doc(data_type, codecs), ".")
    assert {k: zarray[k] for k in fields} == fields
    assert strip_crc == (codecs[-1]["name"] == "crc32c")
    if direction == "both":
        back = v2_to_v3({**zarray, **fields})
        assert back["codecs"] == codecs
        assert back["data_type"] == data_type


@pytest.mark.parametrize("direction,data_type,v3_fill,v2_fill", FILLS)
def test_fill_value_rows(direction, data_type, v3_fill, v2_fill):
    if direction in ("both", "v3→v2"):
        assert fill_to_v2(v3_fill, data_type) == v2_fill
    if direction in ("both", "v2→v3"):
        assert fill_to_v3(v2_fill, data_type) == v3_fill


@pytest.mark.parametrize("data_type,codecs,reason", IMPOSSIBLE)
def test_rows_without_an_equivalent_name_their_reason(data_type, codecs, reason):
    with pytest.raises(NoV2Equivalent, match=re.escape(reason)):
        v3_to_v2(v3_doc(data_type, codecs), ".")


def test_the_whole_zarray_and_zattrs():
    doc = v3_doc("int16", [{"name": "bytes", "configuration": {"endian": "big"}}], fill=7)
    doc.update(attributes={"units": "m", "_FillValue": 7}, dimension_names=["y", "x"])
    zarray, zattrs, _ = v3_to_v2(doc, "/")
    assert zarray == {"zarr_format": 2, "shape": [6, 4], "chunks": [3, 2], "dtype": ">i2", "compressor": None,
                      "fill_value": 7, "order": "C", "filters": None, "dimension_separator": "/"}
    assert zattrs == {"units": "m", "_ARRAY_DIMENSIONS": ["y", "x"]}  # _FillValue is the fill value there
    back = v2_to_v3(zarray, zattrs)
    assert back["dimension_names"] == ["y", "x"] and back["attributes"] == {"units": "m", "_FillValue": 7}
    assert back["chunk_key_encoding"] == {"name": "v2", "configuration": {"separator": "/"}}


@pytest.mark.parametrize("data_type,fill,attributes,shown", [
    ("int16", 7, {}, None),  # xarray on zarr 3 masks nothing: neither may xarray on zarr 2
    ("float64", 0.0, {}, "NaN"),
    ("float32", 0.0, {"_FillValue": base64.standard_b64encode(struct.pack("<d", -9.5)).decode()}, -9.5),
    ("uint8", 0, {"_FillValue": 255}, 255),
])
def test_arrays_with_dimension_names_show_the_fill_value_xarray_masks_by(data_type, fill, attributes, shown):
    doc = v3_doc(data_type, [{"name": "bytes", "configuration": {"endian": "little"}}], fill=fill)
    doc.update(attributes=attributes, dimension_names=["y", "x"])
    zarray, zattrs, _ = v3_to_v2(doc, ".")
    assert zarray["fill_value"] == shown
    assert "_FillValue" not in zattrs


def test_arrays_without_dimension_names_keep_their_fill_value():
    doc = v3_doc("float64", [{"name": "bytes", "configuration": {"endian": "little"}}], fill=0.0)
    assert v3_to_v2(doc, ".")[0]["fill_value"] == 0.0


def test_a_zstd_checksum_false_written_through_the_v2_view_reads_back_without_it():
    """The documented normalization (docs/codecs.md, "Metadata read back through the v2 view")."""
    written = {"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": "<i4", "fill_value": 0, "order": "C",
               "filters": None, "compressor": {"id": "zstd", "level": 2, "checksum": False}}
    shown, _, _ = v3_to_v2(v2_to_v3(written), ".")
    assert shown["compressor"] == {"id": "zstd", "level": 2}
