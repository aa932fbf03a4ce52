"""Chunk key encodings: whole keys, path components and prefixes."""

import pytest
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding

from zarrfs.format.keys import ChunkKeyEncoding, KeyEncodingError, parse_index

ENCODINGS = [
    (ChunkKeyEncoding("default", "/"), DefaultChunkKeyEncoding(separator="/")),
    (ChunkKeyEncoding("default", "."), DefaultChunkKeyEncoding(separator=".")),
    (ChunkKeyEncoding("v2", "."), V2ChunkKeyEncoding(separator=".")),
    (ChunkKeyEncoding("v2", "/"), V2ChunkKeyEncoding(separator="/")),
]
COORDS = [(), (0,), (7,), (1, 2), (0, 10, 3), (4, 3, 2, 1, 0)]


@pytest.mark.parametrize("ours,zarrs", ENCODINGS)
@pytest.mark.parametrize("coords", COORDS)
def test_encode_matches_zarr_python(ours, zarrs, coords):
    assert ours.encode(coords) == zarrs.encode_chunk_key(coords)


@pytest.mark.parametrize("ours,_", ENCODINGS)
@pytest.mark.parametrize("coords", COORDS)
def test_whole_key_round_trips_through_components(ours, _, coords):
    parts = ours.components(coords)
    assert len(parts) == ours.depth(len(coords))
    assert ours.decode_prefix(parts, len(coords)) == coords


def test_prefixes_of_slash_keys_name_directories():
    default = ChunkKeyEncoding("default", "/")
    assert default.decode_prefix(("c",), 3) == ()
    assert default.decode_prefix(("c", "4"), 3) == (4,)
    assert default.decode_prefix(("x",), 3) is None
    v2 = ChunkKeyEncoding("v2", "/")
    assert v2.decode_prefix(("4", "5"), 3) == (4, 5)
    assert v2.decode_prefix(("4", "5", "6", "7"), 3) is None  # deeper than a key


@pytest.mark.parametrize("key", ["c.1", "c.1.2.3", "c.01.2", "c.-1.2", "1.2", "c.a.b"])
def test_dotted_keys_of_the_wrong_shape_are_not_keys(key):
    assert ChunkKeyEncoding("default", ".").decode_prefix((key,), 2) is None


def test_only_canonical_integers_are_indices():
    assert parse_index("0") == 0 and parse_index("120") == 120
    for text in ("", "01", "+1", "-1", "1.0", "١", " 1"):
        assert parse_index(text) is None


def test_metadata_forms():
    assert ChunkKeyEncoding.from_json({"name": "default"}) == ChunkKeyEncoding("default", "/")
    assert ChunkKeyEncoding.from_json({"name": "v2"}) == ChunkKeyEncoding("v2", ".")
    assert ChunkKeyEncoding.from_json("default") == ChunkKeyEncoding("default", "/")
    with pytest.raises(KeyEncodingError):
        ChunkKeyEncoding.from_json({"name": "suffix"})
    with pytest.raises(KeyEncodingError):
        ChunkKeyEncoding.from_json({"name": "default", "configuration": {"separator": "-"}})
