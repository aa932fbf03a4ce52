"""zarrfs: mount sharded Zarr stores so that every inner chunk is its own file."""

__version__ = "0.1.0"
