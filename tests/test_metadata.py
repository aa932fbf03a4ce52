"""Array metadata: what is sharded, how, and its unsharded view (pure, no I/O)."""

import copy

import pytest

from zarrfs.format.metadata import MetadataError, parse_array_document
from zarrfs.format.shard_index import IndexFormat

INNER = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 1}}]


def sharding(chunk_shape, codecs=INNER, index_codecs=None, location=None):
    config = {
        "chunk_shape": chunk_shape,
        "codecs": codecs,
        "index_codecs": index_codecs or [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
    }
    if location:
        config["index_location"] = location
    return {"name": "sharding_indexed", "configuration": config}


def array_doc(shape=(100, 60), shard=(20, 30), codecs=None, **extra):
    doc = {
        "zarr_format": 3, "node_type": "array", "shape": list(shape), "data_type": "int16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shard)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": codecs or [sharding([10, 10])],
        "attributes": {"a": 1}, "dimension_names": ["y", "x"],
    }
    doc.update(extra)
    return doc


def test_a_sharded_array_and_its_view():
    doc = array_doc()
    array = parse_array_document(doc)
    assert array.chunk_shape == (10, 10) and array.shard_shape == (20, 30)
    assert array.chunks_per_shard == (2, 3) and array.chunk_grid == (10, 6) and array.shard_grid == (5, 2)
    assert array.levels == (IndexFormat((2, 3), "little", True, "end"),)
    view = array.view_document
    assert view["chunk_grid"]["configuration"]["chunk_shape"] == [10, 10]
    assert view["codecs"] == INNER
    assert {k: v for k, v in view.items() if k not in ("chunk_grid", "codecs")} == \
        {k: v for k, v in doc.items() if k not in ("chunk_grid", "codecs")}


def test_the_original_document_is_not_modified():
    doc = array_doc()
    before = copy.deepcopy(doc)
    parse_array_document(doc)
    assert doc == before


def test_groups_have_no_layout_and_unsharded_arrays_no_levels():
    assert parse_array_document({"zarr_format": 3, "node_type": "group", "attributes": {}}) is None
    layout = parse_array_document(array_doc(codecs=INNER))
    assert not layout.is_sharded and layout.chunk_shape == layout.shard_shape == (20, 30)
    assert layout.chunks_per_shard == (1, 1) and layout.local_coords((3, 1)) == []


def test_nested_sharding_is_flattened_to_the_innermost_chunks():
    inner = sharding([5, 5], location="start")
    array = parse_array_document(array_doc(codecs=[sharding([10, 10], codecs=[inner])]))
    assert array.chunk_shape == (5, 5) and array.chunks_per_shard == (4, 6)
    assert [level.chunks_per_shard for level in array.levels] == [(2, 3), (2, 2)]
    assert array.levels[1].location == "start"
    assert array.local_coords((6, 9)) == [(1, 1), (0, 1)]
    assert array.view_document["codecs"] == INNER


def test_tensorstore_style_defaults_are_filled_in():
    doc = array_doc(codecs=[sharding([10, 10], index_codecs=[{"name": "bytes"}, "crc32c"])])
    doc["chunk_key_encoding"] = {"name": "default"}
    array = parse_array_document(doc)
    assert array.levels[0] == IndexFormat((2, 3), "little", True, "end")
    assert array.key_encoding.separator == "/"


@pytest.mark.parametrize("index_codecs,reason", [
    ([{"name": "bytes"}, {"name": "zstd"}], "index_codecs"),
    ([{"name": "bytes"}, {"name": "crc32c"}, {"name": "crc32c"}], "index_codecs"),
    ([{"name": "bytes", "configuration": {"endian": "middle"}}], "endian"),
])
def test_index_codecs_without_a_fixed_size_are_refused(index_codecs, reason):
    with pytest.raises(MetadataError, match=reason):
        parse_array_document(array_doc(codecs=[sharding([10, 10], index_codecs=index_codecs)]))


@pytest.mark.parametrize("doc,reason", [
    (array_doc(codecs=[{"name": "transpose", "configuration": {"order": [1, 0]}}, sharding([10, 10])]), "combined"),
    (array_doc(codecs=[sharding([10, 10]), {"name": "crc32c"}]), "combined"),
    (array_doc(codecs=[sharding([7, 10])]), "multiple"),
    (array_doc(codecs=[sharding([10])]), "multiple"),
    (array_doc(codecs=[sharding([10, 10], location="middle")]), "index_location"),
    (array_doc(shape="big"), "shape"),
    (array_doc(chunk_grid={"name": "rectilinear"}), "regular"),
    (array_doc(chunk_key_encoding={"name": "weird"}), "chunk_key_encoding"),
    ({"zarr_format": 2}, "zarr_format"),
    ([1, 2], "object"),
])
def test_malformed_or_unservable_metadata_is_refused_with_a_reason(doc, reason):
    with pytest.raises(MetadataError, match=reason):
        parse_array_document(doc)


def test_zero_dimensional_arrays():
    array = parse_array_document(array_doc(shape=(), shard=(), codecs=[sharding([])], dimension_names=[]))
    assert array.chunk_grid == () and array.chunks_per_shard == () and array.local_coords(()) == [()]
