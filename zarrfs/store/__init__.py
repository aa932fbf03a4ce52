"""Backing stores: where shards, metadata and plain files really live (protocol: base.py)."""

from __future__ import annotations

import os

from .base import Store


class StoreError(Exception):
    """The store cannot be opened at all (missing, not a directory, no such bucket)."""


def is_object_store_url(location: str) -> bool:
    return location.startswith("s3://")


def open_store(location: str, endpoint_url: str | None = None, **local_options) -> Store:
    """The store at ``location``: a local directory, or ``s3://BUCKET/PREFIX``.
    ``local_options`` tune the local backend (see LocalStore). Raises StoreError."""
    if is_object_store_url(location):
        from .object import ObjectStore  # obstore is loaded only by those who need it

        try:
            return ObjectStore(location, endpoint_url=endpoint_url)
        except (OSError, ValueError) as error:
            raise StoreError(f"{location}: {_reason(error)}") from None
    from .local import LocalStore

    if not os.path.exists(location):
        raise StoreError(f"{location}: no such directory")
    if not os.path.isdir(location):
        raise StoreError(f"{location}: not a directory")
    return LocalStore(location, **local_options)


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)
