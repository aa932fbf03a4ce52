"""One backing store, on either backend: a local directory, or a prefix of the test SeaweedFS.

Suites that run on both take the ``backend`` fixture (conftest.py, parametrized over
``local`` and ``s3``) and go through it for everything that touches the backing store:

- ``backend.store(directory)``: a store holding what ``directory`` holds. ``local``: the
  directory itself; ``s3``: a fresh prefix the directory was uploaded to (obstore).
- ``backend.empty_store(tmp_path)``: an empty store.
- ``backend.mount(mounter, store, *options)``: mounted by its path or URL (with
  ``--endpoint-url`` for S3); the daemon takes the credentials from the ``AWS_*``
  variables the ``backend`` fixture set for this process.
- ``store.snapshot()``: a local directory holding what the backing store holds right now
  (``local``: the directory itself; ``s3``: a fresh download of the prefix, with zarrfs's
  directory marker objects made directories), to read with zarr-python, tensorstore or
  plain file calls.
- ``store.alter(key, change)``: ``change(path)`` on a local file holding the object, which
  then replaces it (``s3``: a GET and a PUT through obstore), to damage shards or rewrite metadata.

Everything here talks to S3 with obstore directly, never through zarrfs: an oracle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import obstore
from obstore.store import S3Store

from s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

BACKENDS = ["local", "s3"]
THREADS = 16
DIRECTORY_MARKER = ".zarrfs-dir"  # the object zarrfs's S3 backend writes for a directory (docs/s3.md)
_UPLOADED: dict[tuple[str, Path], str] = {}  # (endpoint, directory) -> URL of a shared read-only upload


def credentials_environment() -> dict[str, str]:
    """The ``AWS_*`` variables that give the test identity (and hide any of the developer's)."""
    scratch = tempfile.gettempdir()
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": os.path.join(scratch, "zarrfs-tests-no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(scratch, "zarrfs-tests-no-aws-credentials")}


def client(server: S3Server, url: str) -> S3Store:
    """An obstore client for the prefix of ``url`` (keys relative to it), with the test identity."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix=prefix or None, endpoint=server.endpoint, access_key_id=ACCESS_KEY,
                   secret_access_key=SECRET_KEY, region=REGION, client_options={"allow_http": True})


def files_below(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def upload(s3: S3Store, root: Path, only=None) -> None:
    """Every file below ``root`` as an object at its relative path (empty directories are lost);
    ``only``: just the files at or below these relative paths."""
    keys = files_below(root)
    if only is not None:
        keys = [k for k in keys if any(k == p or k.startswith(p.rstrip("/") + "/") for p in only)]
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda key: obstore.put(s3, key, (root / key).read_bytes()), keys))


def download(s3: S3Store, into: Path) -> Path:
    """Every object below the prefix as a file below ``into`` (made fresh)."""
    keys = [meta["path"] for batch in obstore.list(s3) for meta in batch]

    def fetch(key: str) -> None:
        if key.endswith("/") or not key:
            return
        target = into / key
        if target.name == DIRECTORY_MARKER:  # the object that makes a directory exist: a directory
            target.parent.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(obstore.get(s3, key).bytes()))

    into.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(fetch, keys))
    return into


class LocalStore:
    backend = "local"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = str(self.root)

    def snapshot(self) -> Path:
        return self.root

    def alter(self, key: str, change) -> None:
        change(self.root / key)

    def keys(self) -> set[str]:
        return set(files_below(self.root))

    def put(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def mtime_ns(self, key: str) -> int:
        return (self.root / key).stat().st_mtime_ns

    def __repr__(self) -> str:
        return f"LocalStore({self.location})"


class ObjectStore:
    backend = "s3"

    def __init__(self, server: S3Server, url: str, scratch: Path):
        self.server, self.location, self._scratch = server, url, Path(scratch)
        self.s3 = client(server, url)
        self._count = 0

    def _fresh(self, what: str) -> Path:
        self._count += 1
        return Path(tempfile.mkdtemp(prefix=f"{what}{self._count}-", dir=self._scratch))

    def snapshot(self) -> Path:
        return download(self.s3, self._fresh("snapshot") / "store")

    def alter(self, key: str, change) -> None:
        path = self._fresh("alter") / Path(key).name
        path.write_bytes(bytes(obstore.get(self.s3, key).bytes()))
        change(path)
        obstore.put(self.s3, key, path.read_bytes())

    def keys(self) -> set[str]:
        return {meta["path"] for batch in obstore.list(self.s3) for meta in batch}

    def put(self, key: str, data: bytes) -> None:
        obstore.put(self.s3, key, data)

    def mtime_ns(self, key: str) -> int:
        return int(obstore.head(self.s3, key)["last_modified"].timestamp() * 1e9)

    def __repr__(self) -> str:
        return f"ObjectStore({self.location})"


class Backend:
    """``local`` or ``s3`` (on ``server``); ``scratch`` holds downloads and altered objects."""

    def __init__(self, name: str, scratch: Path, server: S3Server | None = None):
        self.name, self.server, self.scratch = name, server, Path(scratch)

    def __repr__(self) -> str:
        return f"Backend({self.name})"

    @property
    def is_s3(self) -> bool:
        return self.name == "s3"

    def store(self, directory: Path, *, shared: bool = False, only=None):
        """A store holding what ``directory`` holds. ``shared``: a store tests only read (the
        corpus), uploaded once per server and reused. ``only``: on S3, upload just these
        relative paths (and what is below them), to save time where a test needs no more;
        a local store is the whole directory."""
        directory = Path(directory)
        if not self.is_s3:
            return LocalStore(directory)
        if shared and (self.server.endpoint, directory) in _UPLOADED:
            return ObjectStore(self.server, _UPLOADED[self.server.endpoint, directory], self.scratch)
        url = self.server.url()
        upload(client(self.server, url), directory, None if shared else only)
        if shared:
            _UPLOADED[self.server.endpoint, directory] = url
        return ObjectStore(self.server, url, self.scratch)

    def empty_store(self, tmp_path: Path):
        if not self.is_s3:
            root = Path(tempfile.mkdtemp(prefix="store-", dir=tmp_path)) / "store.zarr"
            root.mkdir()
            return LocalStore(root)
        return ObjectStore(self.server, self.server.url(), self.scratch)

    def options(self) -> tuple[str, ...]:
        return ("--endpoint-url", self.server.endpoint) if self.is_s3 else ()

    def mount(self, mounter, store, *options: str):
        """``mounter`` is the ``mount`` or ``module_mount`` fixture."""
        return mounter(store.location, *self.options(), *options)

    def zarrfs_args(self, store) -> list[str]:
        """``STORE [--endpoint-url URL]`` for ``zarrfs info``/``check``."""
        return [store.location, *self.options()]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
