"""Backing stores: where shards, metadata and plain files really live."""
