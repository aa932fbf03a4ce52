"""Pure format code: chunk keys, shard indexes, array metadata. No I/O, no FUSE."""
