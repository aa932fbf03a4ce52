"""An S3-compatible bucket as the backing store (SPEC §11), through obstore.

Keys are the same store-relative paths as LocalStore's, below ``s3://BUCKET/PREFIX``.
Every call blocks (the daemon runs them in worker threads) and is thread-safe:
obstore's client is, and this module's caches are behind one lock.

How POSIX maps onto objects:

- A file is an object; its version is its ETag. Directories are implied by the
  keys below them; ``mkdir`` writes a hidden marker object ``DIR/.zarrfs-dir``
  so that an empty directory exists (obstore normalises away a trailing ``/``,
  so the ``DIR/`` markers of s3fs and rclone can be read but not written).
- One delimited LIST per directory serves ``listdir`` and ``lstat`` of every
  entry in it, reused for ``reuse_listings_for`` seconds; a write through this
  store drops the listings of the directories above what it changed. Bytes are never served from a
  stale listing: every ranged read names the ETag it expects (``If-Match``).
- Whole files are written by one complete PUT, conditional on the version they
  were merged from (``If-Match``, or ``If-None-Match: *`` for a new key).
- A plain file open for writing is spooled in a local temporary file and PUT
  whole by ``fsync`` and ``close`` (write-back, as s3fs and rclone do).
- ``rename`` is a copy and a delete (of every object below, for a directory):
  not atomic; a crash in between leaves both names. ``link`` is a copy.
  Symlinks cannot be made (EPERM); modes and owners are accepted and not kept.
"""

from __future__ import annotations

import configparser
import contextlib
import errno
import logging
import os
import re
import stat as stat_module
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Hashable
from urllib.parse import urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PermissionDeniedError, PreconditionError, \
    UnauthenticatedError
from obstore.store import S3Store

from .base import ABSENT, Capabilities, Conflict, FileChanged, Stat, TooLarge
from .local import ABANDONED_AFTER_SECONDS, STAGED_PREFIX, is_temporary, join_key, split_key, temporary_name, \
    zarrfs_own

DIRECTORY_MARKER = ".zarrfs-dir"  # the object that makes an empty directory exist
SMALL_OBJECT = 8 << 20  # objects up to this size are fetched whole once several ranges are wanted
FETCH_WAIT_SECONDS = 60.0  # for another reader's whole fetch of the same object, at most
WHOLE_AFTER_RANGES = 3  # ... that many ranged reads of one version (its index read, a chunk): the 2nd chunk read fetches it whole
WHOLE_CACHE_BYTES = 256 << 20  # bytes of whole small objects kept (LRU by (key, ETag)): a
# reader walking an array row by row crosses a whole row of shards (16 × 4 MiB in the
# benchmark's D1) before it comes back to the first; a smaller cache evicts each shard
# just before it is wanted again (docs/performance.md, S3)
WANTED_MAX = 4096  # (key, ETag) pairs whose ranged reads are counted
VERSIONED_STATS_FOR = 60.0  # seconds a listing's ETag of a shard serves readers that read by If-Match
LISTINGS_MAX = 4096  # directory listings kept; past it all are dropped (they refill)
TRUNCATE_TRIES = 5  # read-modify-put attempts of ``truncate`` against concurrent writers
FILE_MODE = stat_module.S_IFREG | 0o644
DIRECTORY_MODE = stat_module.S_IFDIR | 0o755
DIRECTORY_VERSION = ("directory",)

# Network failures, timeouts and 5xx answers are retried by obstore itself, with
# exponential backoff and jitter, bounded in count and in time; then EIO.
RETRY = {"max_retries": 5, "retry_timeout": timedelta(seconds=30),
         "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5), "base": 2}}
CLIENT = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=120)}

_STATUS = re.compile(r"status code: (\d{3})")
log = logging.getLogger("zarrfs")


@dataclass
class _Listing:
    """One delimited LIST of a directory: its files and its subdirectories."""

    files: dict[str, Stat]
    directories: set[str]
    proven: bool  # something is there (a marker at least): the directory exists
    generation: int
    when: float = field(default_factory=time.monotonic)


class ObjectStore:
    def __init__(self, url: str, endpoint_url: str | None = None, reuse_listings_for: float = 1.0,
                 profile: str | None = None):
        """``url`` is ``s3://BUCKET[/PREFIX]``. Credentials, region and endpoint come from the
        ``AWS_*`` variables (read by obstore), else from the profile ``profile`` (or
        ``AWS_PROFILE``, or ``default``) of ``~/.aws/credentials`` and ``~/.aws/config``;
        ``endpoint_url`` overrides both. Raises OSError with one clear line when the
        bucket is missing, unreachable or forbidden."""
        self.bucket, self.prefix = parse_url(url)
        self.name = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.reuse_listings_for = reuse_listings_for
        self.requests: Counter = Counter()  # by kind: GET PUT LIST HEAD DELETE COPY
        # Around each wait on the network; the daemon sets it to let go of its tree lock
        # meanwhile (fs/treelock.py), so that other requests go on.
        self.waiting = contextlib.nullcontext
        self._lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._generation = 0  # of changes through this store
        self._wanted: OrderedDict[tuple, tuple[int, int]] = OrderedDict()  # (key, etag) -> (ranged reads, size)
        self._whole: OrderedDict[tuple, bytes] = OrderedDict()  # (key, etag) -> the small object's bytes
        self._fetching: dict[tuple, threading.Event] = {}  # (key, etag) -> set when its whole fetch ends
        self._whole_bytes = 0
        self._confirmed: dict[tuple, float] = {}  # (key, etag) of a whole object -> when a request last found it current
        self._probe_result: tuple[str | None] | None = None
        settings = aws_settings(profile)
        endpoint = endpoint_url or settings.pop("endpoint", None)
        self.endpoint = endpoint or "AWS S3"
        if endpoint:
            settings["endpoint"] = endpoint
        client = dict(CLIENT, allow_http=bool(endpoint and endpoint.startswith("http://")))
        self._s3 = S3Store(self.bucket, prefix=self.prefix or None, config=settings, client_options=client,
                           retry_config=RETRY)
        self.check()

    def __repr__(self) -> str:  # never the configuration: it holds the credentials
        return f"ObjectStore({self.name!r})"

    def check(self) -> None:
        """One LIST of the root: the bucket exists, answers, and lets us in."""
        try:
            self._listing("", fresh=True)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"no bucket {self.bucket!r} at {self.endpoint}") from None
        except PermissionError:
            raise PermissionError(errno.EACCES, f"access to bucket {self.bucket!r} denied at {self.endpoint} "
                                                "(check the AWS credentials)") from None
        except OSError as error:
            raise OSError(errno.EIO, f"bucket {self.bucket!r} at {self.endpoint} does not answer: "
                                     f"{error.strerror}") from None

    @property
    def capabilities(self) -> Capabilities:
        # Whether conditional writes hold is known once locking_problem() probed it (a
        # writable mount does, at start); asking for the rest must not write a probe.
        probed_and_honoured = self._probe_result is not None and self._probe_result[0] is None
        return Capabilities(hard_links=False, symlinks=False, owners_and_modes=False, cheap_calls=False,
                            conditional_writes=probed_and_honoured)

    # -- requests: counted, and their errors turned into OSErrors ---------------

    def _request(self, kind: str, key: str, call, count: int = 1):
        """``call()``, counted as ``count`` requests of ``kind``. obstore's errors become
        OSErrors; precondition failures stay obstore's, for the caller to name."""
        try:
            with self.waiting():  # (counted inside: a call tried on the daemon's loop stops here)
                with self._lock:
                    self.requests[kind] += count
                log.debug("request %s %s", kind, key)
                return call()
        except (PreconditionError, AlreadyExistsError):
            raise
        except FileNotFoundError:  # obstore's NotFoundError is one
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", key) from None
        except (PermissionDeniedError, UnauthenticatedError):
            raise PermissionError(errno.EACCES, "access denied by the object store", key) from None
        except BaseError as error:
            raise _from_status(error, key) from None
        except ValueError:  # obstore refuses the path (empty segments, "..")
            raise OSError(errno.EINVAL, "not a valid object key", key) from None

    def _get(self, key: str, **options):
        return self._request("GET", key, lambda: obstore.get(self._s3, key, options=options or None))

    def _put(self, key: str, data, mode="overwrite") -> str:
        result = self._request("PUT", key, lambda: obstore.put(self._s3, key, data, mode=mode, use_multipart=False))
        self._changed(key)
        return result["e_tag"]

    def _delete(self, keys: list[str]) -> None:
        """One bulk DELETE per 1,000 keys (S3's limit), which obstore makes."""
        if keys:
            self._request("DELETE", keys[0], lambda: obstore.delete(self._s3, keys), count=-(-len(keys) // 1000))
            self._changed(*keys)

    def _copy(self, old: str, new: str) -> None:
        self._request("COPY", old, lambda: obstore.copy(self._s3, old, new))
        self._changed(new)

    def _head(self, key: str) -> dict:
        return self._request("HEAD", key, lambda: obstore.head(self._s3, key))

    def _list_below(self, key: str) -> list[dict]:
        """Every object below directory ``key`` (a paginated LIST without delimiter)."""
        return self._request("LIST", key, lambda: [meta for batch in obstore.list(self._s3, key or None)
                                                   for meta in batch])

    def _changed(self, *keys: str) -> None:
        """A write through this store: the listings of every directory above the keys may
        have changed (implied directories appear and vanish), and of the keys themselves
        (a directory renamed or removed); no listing under way now is kept."""
        with self._lock:
            self._generation += 1
            for key in keys:
                self._forget_whole(key)
                for directory in _this_and_above(key):
                    self._listings.pop(directory, None)

    def _forget_whole(self, key: str) -> None:
        for name in [name for name in self._whole if name[0] == key]:
            self._whole_bytes -= len(self._whole.pop(name))
            self._confirmed.pop(name, None)

    def _current_whole(self, name: tuple) -> bytes | None:
        """The cached whole object ``(key, etag)`` if it is known to be current: its fetch
        or a listing found it so in the last ``reuse_listings_for`` seconds (a shard's stat
        may come from an older listing, ``versioned_stat``: then a listing tells first).
        Called holding the lock."""
        whole = self._whole.get(name)
        if whole is None:
            return None
        now = time.monotonic()
        if now - self._confirmed.get(name, -1e9) >= self.reuse_listings_for:
            parent, base = split_key(name[0])
            listing = self._listings.get(parent)
            listed = listing.files.get(base) if listing is not None else None
            if listed is None or listed.version != name[1] or now - listing.when >= self.reuse_listings_for:
                return None
        self._whole.move_to_end(name)
        return whole

    # -- listings ----------------------------------------------------------------

    def _listing(self, directory: str, fresh: bool = False) -> _Listing:
        """The delimited LIST of ``directory``, perhaps as seen a moment ago."""
        with self._lock:
            listing = self._listings.get(directory)
            # (a change through this store drops the listings it changes: the others stay good)
            if listing is not None and not fresh and time.monotonic() - listing.when < self.reuse_listings_for:
                return listing
            generation = self._generation
        found = self._request("LIST", directory, lambda: obstore.list_with_delimiter(self._s3, directory or None))
        listing = _listing_of(directory, found, generation)
        with self._lock:
            if self.reuse_listings_for > 0 and generation == self._generation:
                if len(self._listings) >= LISTINGS_MAX:
                    self._listings.clear()
                self._listings[directory] = listing
        return listing

    def lstat(self, key: str) -> Stat:
        """``key``'s attributes from its directory's listing. Raises FileNotFoundError."""
        if not key:
            return self._directory_stat()
        with self._lock:  # a directory whose own listing, seen a moment ago, holds something
            own = self._listings.get(key)
            if own is not None and own.proven and time.monotonic() - own.when < self.reuse_listings_for:
                return self._directory_stat()
        parent, name = split_key(key)
        listing = self._listing(parent)
        if name in listing.files:
            return listing.files[name]
        if name in listing.directories:
            return self._directory_stat()
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", key)

    stat = lstat  # nothing is a symlink here

    def recent_stat(self, key: str, follow_symlinks: bool = True) -> Stat:
        """Listings are what "recent" means here (nothing is a symlink)."""
        return self.lstat(key)

    def versioned_stat(self, key: str) -> Stat:
        """``key``'s attributes, for a caller that reads its bytes only by ranged reads
        naming this version (a shard), or that wants to know whether a directory of
        shards is there: from its directory's listing up to ``VERSIONED_STATS_FOR``
        seconds old, since such a read tells when the key changed (FileChanged: the
        caller then calls ``forget_recent`` and looks again). What such a listing does
        not hold is listed again as ``lstat`` lists it: absence is never taken from it."""
        parent, name = split_key(key)
        with self._lock:
            now = time.monotonic()
            own = self._listings.get(key) if key else None
            if own is not None and own.proven and now - own.when < VERSIONED_STATS_FOR:
                return self._directory_stat()
            listing = self._listings.get(parent)
            if listing is not None and now - listing.when < VERSIONED_STATS_FOR:
                found = listing.files.get(name)
                if found is not None:
                    return found
                if name in listing.directories:
                    return self._directory_stat()
        return self.lstat(key)

    def versioned_listdir(self, key: str) -> list[str]:
        """The names in directory ``key`` from a listing up to ``VERSIONED_STATS_FOR`` seconds
        old, for a caller that takes from it only what is there (and reads it by version,
        as ``versioned_stat`` says); else ``listdir``."""
        with self._lock:
            listing = self._listings.get(key)
            if listing is not None and time.monotonic() - listing.when < VERSIONED_STATS_FOR:
                return sorted([*listing.files, *listing.directories])
        return self.listdir(key)

    def forget_recent(self, key: str) -> None:
        """The next look at ``key`` lists its directory again (it was seen to have changed)."""
        with self._lock:
            self._listings.pop(split_key(key)[0], None)
            self._listings.pop(key, None)

    def generation(self) -> int | None:
        """Changes of the bucket through this store so far (see LocalStore.generation)."""
        return self._generation

    def _directory_stat(self) -> Stat:
        return Stat(st_mode=DIRECTORY_MODE, st_size=0, st_mtime_ns=0, version=DIRECTORY_VERSION, st_nlink=2)

    def listdir(self, key: str) -> list[str]:
        return [name for name, _ in self.scan(key)]

    def scan(self, key: str) -> list[tuple[str, bool]]:
        """``(name, is a directory)`` of each entry of directory ``key``, by name: one LIST."""
        listing = self._listing(key)
        if key and not listing.proven:  # empty: there, or not at all? its parent knows
            self._require_directory(key)
        return sorted([*((name, False) for name in listing.files), *((name, True) for name in listing.directories)])

    def _require_directory(self, key: str) -> None:
        if not self.lstat(key).is_directory:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", key)

    def files_below(self, key: str):
        """Key parts (relative to directory ``key``) of every object below it."""
        for meta in self._list_below(key):
            parts = tuple(_relative(key, meta["path"]).split("/"))
            if parts[-1] != DIRECTORY_MARKER:
                yield parts

    # -- reading ------------------------------------------------------------------

    def read(self, key: str, limit: int | None = None) -> bytes:
        return self.read_versioned(key, limit)[0]

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Hashable]:
        """The whole object and its ETag, from one GET; more than ``limit`` bytes raise
        TooLarge before any is fetched (the size comes with the headers)."""
        result = self._get(key)
        if limit is not None and result.meta["size"] > limit:
            raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", key)
        return bytes(self._body(result, key)), result.meta["e_tag"]

    def read_suffix(self, key: str, nbytes: int) -> tuple[bytes, Stat]:
        """The last ``nbytes`` bytes of ``key`` (all of it when shorter) and its Stat, from
        one GET with a suffix range: a shard's index without a HEAD first."""
        try:
            result = self._get(key, range={"suffix": nbytes})
        except OSError as error:
            if error.errno != errno.ERANGE:
                raise
            result = self._get(key)  # an empty object has no suffix to ask for
        return bytes(self._body(result, key)), _stat_of(result.meta)

    def pread_version(self, key: str, version: Hashable, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset`` of ``key`` as it was at ETag ``version``: a ranged GET
        with ``If-Match``. Raises FileChanged if the key now holds another version. Small
        objects are fetched whole once several of their ranges are wanted."""
        if size <= 0:
            return b""
        name = (key, version)
        with self._lock:
            whole = self._current_whole(name)
            if whole is not None:
                return whole[offset:offset + size]
            held = name in self._whole  # but not known to be current: a listing tells
            reads, known_size = self._wanted.get(name, (0, -1))
        if held:  # one LIST tells for every object of the directory (a row of shards)
            parent, base = split_key(key)
            listed = self._listing(parent).files.get(base)
            with self._lock:
                whole = self._current_whole(name) if listed is not None and listed.version == version else None
            if whole is None:
                raise FileChanged(key)
            return whole[offset:offset + size]
        if reads + 1 >= WHOLE_AFTER_RANGES and 0 <= known_size <= SMALL_OBJECT:
            return self._fetch_whole(key, version)[offset:offset + size]
        try:
            result = self._get(key, range=(offset, offset + size), if_match=version)
        except (PreconditionError, FileNotFoundError):  # replaced, or deleted
            self.forget_recent(key)
            raise FileChanged(key) from None
        except OSError as error:
            if error.errno == errno.ERANGE:  # wholly past the end
                return b""
            raise
        data = bytes(self._body(result, key))
        self._count_wanted(name, reads + 1, result.meta["size"])
        return data

    def cached_range(self, key: str, version: Hashable, size: int, offset: int) -> bytes | None:
        """What ``pread_version`` would return, if it needs no request (the object is in the
        whole-object cache at that version), else None."""
        with self._lock:
            whole = self._current_whole((key, version))
            return None if whole is None else whole[offset:offset + size]

    def _count_wanted(self, name: tuple, reads: int, size: int) -> None:
        with self._lock:
            self._wanted[name] = (reads, size)
            while len(self._wanted) > WANTED_MAX:
                self._wanted.popitem(last=False)

    def _fetch_whole(self, key: str, version: Hashable) -> bytes:
        """The whole object at that version, fetched once however many readers want it at
        the same moment: the others wait for the fetch under way."""
        name = (key, version)
        with self._lock:
            under_way = self._fetching.get(name)
            if under_way is None:
                self._fetching[name] = threading.Event()
        if under_way is not None:
            with self.waiting():  # the fetching thread may want the daemon's tree lock to finish
                under_way.wait(FETCH_WAIT_SECONDS)
            with self._lock:
                whole = self._whole.get(name)
            if whole is not None:
                return whole
            return self._fetch_whole_now(key, version)  # the fetch under way failed: our own
        try:
            return self._fetch_whole_now(key, version)
        finally:
            with self._lock:
                self._fetching.pop(name).set()

    def _fetch_whole_now(self, key: str, version: Hashable) -> bytes:
        try:
            result = self._get(key, if_match=version)
        except (PreconditionError, FileNotFoundError):  # replaced, or deleted
            self.forget_recent(key)
            raise FileChanged(key) from None
        data = bytes(self._body(result, key))
        with self._lock:
            self._wanted.pop((key, version), None)
            if (key, version) not in self._whole:
                self._whole[(key, version)] = data
                self._whole_bytes += len(data)
            self._confirmed[(key, version)] = time.monotonic()
            while self._whole_bytes > WHOLE_CACHE_BYTES:
                evicted, old = self._whole.popitem(last=False)
                self._whole_bytes -= len(old)
                self._confirmed.pop(evicted, None)
        return data

    def _body(self, result, key: str):
        """The response body. A connection that breaks while it streams is retried by
        nobody (the request itself succeeded): EIO."""
        try:
            with self.waiting():
                return result.bytes()
        except BaseError as error:
            raise _from_status(error, key) from None

    def share(self, key: str, version: Hashable | None = None) -> ObjectFile:
        """The current version of ``key`` for reading (every read names its ETag); a bucket
        keeps no other, whatever ``version`` asks for."""
        st = self.lstat(key)
        if not st.is_file:
            raise OSError(errno.EIO, "not a regular file", key)
        return ObjectFile(self, key, st)

    def readlink(self, key: str) -> str:
        self.lstat(key)
        raise OSError(errno.EINVAL, "not a symlink (object stores have none)", key)

    def statvfs(self) -> os.statvfs_result:
        """A bucket has no size: a large, never-full filesystem."""
        blocks, files = 1 << 40, 1 << 40
        return os.statvfs_result((4096, 4096, blocks, blocks, blocks, files, files, files, 0, 1024))

    # -- whole files ------------------------------------------------------------------

    def replace_durably(self, key: str, data: bytes, mode: int = 0o644, like: str | None = None,
                        expected: Hashable | None = None, owner: tuple[int, int] | None = None) -> str:
        """One complete PUT of ``data`` at ``key``: unconditional, or conditional on the key
        holding ``expected`` (an ETag, or ABSENT). Raises Conflict when it does not.
        Returns the new ETag. ``mode``, ``like`` and ``owner`` are for owners and modes,
        which objects do not keep."""
        if expected is None:
            put_mode = "overwrite"
        elif expected == ABSENT:
            put_mode = "create"
        else:
            put_mode = {"e_tag": expected}
        try:
            return self._put(key, data, put_mode)
        except (PreconditionError, AlreadyExistsError):
            self._changed(key)
            raise Conflict(key) from None

    def remove_durably(self, key: str, up_to: str, expected: Hashable | None = None) -> None:
        """Delete ``key`` (if it holds ``expected``: S3 has no conditional DELETE, so a HEAD
        checks just before; a writer in the moment between is overwritten by the delete),
        then our directory markers of the directories left empty, up to ``up_to``."""
        if expected is not None:
            try:
                current = self._head(key)["e_tag"]
            except FileNotFoundError:
                current = ABSENT
            if current != expected:
                raise Conflict(key)
            if current == ABSENT:
                return
        self._delete([key])
        directory = split_key(key)[0]
        while directory and directory != up_to and directory.startswith(up_to):
            listing = self._listing(directory, fresh=True)
            if listing.files or listing.directories:
                break
            self._remove_directory_entries([directory])
            directory = split_key(directory)[0]

    def _remove_directory_entries(self, directories: list[str]) -> None:
        """Remove these empty directories: our markers in them, and the entries of servers
        that keep real directories (SeaweedFS lists an empty directory until its own key is
        deleted; elsewhere that DELETE finds nothing). A file of the same name, which S3
        allows beside a prefix, is kept."""
        keys = []
        for directory in directories:
            keys.append(join_key(directory, DIRECTORY_MARKER))
            parent, name = split_key(directory)
            if name not in self._listing(parent).files:
                keys.append(directory)
        self._delete(keys)

    # -- the namespace -------------------------------------------------------------------

    def create(self, key: str, flags: int, mode: int) -> SpooledFile:
        """A plain file open for writing, spooled locally and PUT whole by fsync and close.
        A new (or truncated) file is PUT empty at once, so that it exists, as on a disk."""
        self._require_directory(split_key(key)[0])
        try:
            st = self.lstat(key)
        except FileNotFoundError:
            st = None
        if st is not None and flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, "File exists", key)
        if st is not None and st.is_directory:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", key)
        if st is None and not flags & os.O_CREAT:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", key)
        spool = tempfile.TemporaryFile(prefix="zarrfs-spool-", buffering=0)  # read by os.pread too
        try:
            if st is None or flags & os.O_TRUNC:
                version = self._put(key, b"", "create" if st is None else "overwrite")
            else:
                version = self._download(key, spool)
        except (AlreadyExistsError, PreconditionError):
            spool.close()
            raise FileExistsError(errno.EEXIST, "File exists", key) from None
        except BaseException:
            spool.close()
            raise
        return SpooledFile(self, key, spool, version)

    def _download(self, key: str, spool) -> str:
        result = self._get(key)
        try:
            for piece in result.stream(min_chunk_size=1 << 20):
                spool.write(piece)
        except BaseError as error:
            raise _from_status(error, key) from None
        return result.meta["e_tag"]

    def mkdir(self, key: str, mode: int) -> None:
        parent, _ = split_key(key)
        self._require_directory(parent)
        with contextlib.suppress(FileNotFoundError):
            self.lstat(key)
            raise FileExistsError(errno.EEXIST, "File exists", key)
        try:
            self._put(join_key(key, DIRECTORY_MARKER), b"", "create")
        except (AlreadyExistsError, PreconditionError):
            raise FileExistsError(errno.EEXIST, "File exists", key) from None

    def rmdir(self, key: str) -> None:
        listing = self._listing(key, fresh=True)
        if not listing.proven:
            self._require_directory(key)
        if listing.files or listing.directories:
            raise OSError(errno.ENOTEMPTY, "Directory not empty", key)
        self._remove_directory_entries([key])

    def unlink(self, key: str) -> None:
        if self.lstat(key).is_directory:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", key)
        self._delete([key])

    def symlink(self, target: str, key: str) -> None:
        raise OSError(errno.EPERM, "object stores have no symlinks", key)

    def rename(self, old: str, new: str) -> None:
        """Copy, then delete: not atomic (a crash in between leaves both names). A directory
        is renamed object by object."""
        source = self.lstat(old)
        self._require_directory(split_key(new)[0])
        try:
            target = self.lstat(new)
        except FileNotFoundError:
            target = None
        if old == new:
            return
        if source.is_directory:
            self._rename_directory(old, new, target)
        elif target is not None and target.is_directory:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", new)
        else:
            self._copy(old, new)
            self._delete([old])

    def _rename_directory(self, old: str, new: str, target: Stat | None) -> None:
        if target is not None and not target.is_directory:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", new)
        if new.startswith(old + "/"):
            raise OSError(errno.EINVAL, "cannot move a directory into itself", new)
        if target is not None:
            self.rmdir(new)  # only an empty directory may be replaced
        keys = [meta["path"] for meta in self._list_below(old)]
        if not keys:  # implied by nothing we can copy (a foreign marker): make the new one
            self.mkdir(new, 0o755)
        for key in keys:
            self._copy(key, new + key[len(old):])
        # Everything below ``old`` has moved, so the directory entries below it (SeaweedFS's)
        # go too, deepest first, whatever S3 holds there.
        below = {parent for key in keys for parent in _parents_up_to(split_key(key)[0], old)}
        self._delete(keys + sorted(below, key=len, reverse=True))
        self._remove_directory_entries([old])

    def link(self, old: str, new: str) -> None:
        """A copy: objects have one name each."""
        if self.lstat(old).is_directory:
            raise PermissionError(errno.EPERM, "Operation not permitted", old)
        self._require_directory(split_key(new)[0])
        with contextlib.suppress(FileNotFoundError):
            self.lstat(new)
            raise FileExistsError(errno.EEXIST, "File exists", new)
        self._copy(old, new)

    def truncate(self, key: str, size: int) -> None:
        """Read, cut or extend, PUT back conditional on what was read (retried on conflict)."""
        for _ in range(TRUNCATE_TRIES):
            data, version = self.read_versioned(key)
            try:
                self._put(key, data[:size].ljust(size, b"\0"), {"e_tag": version})
                return
            except PreconditionError:
                continue
        raise OSError(errno.EIO, "kept changing while being truncated", key)

    def set_attributes(self, key: str, mode=None, uid=None, gid=None, times_ns=None) -> None:
        """Accepted and not kept: objects have no owners, modes or settable times."""
        self.lstat(key)

    def chown_to(self, key: str, uid: int, gid: int) -> None:
        """Objects have no owners."""

    # -- coordination between writers ----------------------------------------------------

    def locked(self, array_key: str, target: str, wait: bool = True):
        """Nothing to lock: writers coordinate by conditional PUTs (``expected``)."""
        return contextlib.nullcontext()

    def locking_problem(self) -> str | None:
        """Why conditional writes cannot be trusted here, or None when they can (probed once)."""
        if self._probe_result is None:
            self._probe_result = (self.probe_conditional_writes(),)
        return self._probe_result[0]

    def probe_conditional_writes(self) -> str | None:
        """PUT a probe object with ``If-None-Match: *``; a second such PUT and one with a wrong
        ``If-Match`` must both fail. Returns None if they do, else the reason in one line.
        A bucket we may not write to has nothing to coordinate: None."""
        probe = temporary_name("conditional-write-probe")
        try:
            self._put(probe, b"1", "create")
        except PermissionError:
            return None
        except (AlreadyExistsError, PreconditionError):
            return "a new probe object was refused as existing"
        try:
            if _succeeds(lambda: self._put(probe, b"2", "create")):
                return f"{self.endpoint} ignores If-None-Match: * on PUT (an existing object was overwritten)"
            if _succeeds(lambda: self._put(probe, b"3", {"e_tag": '"00000000000000000000000000000000"'})):
                return f"{self.endpoint} ignores If-Match on PUT (an object was overwritten despite a wrong ETag)"
            return None
        finally:
            self._delete([probe])

    def clean_after_crash(self, metadata_names=("zarr.json", ".zarray")) -> tuple[int, dict]:
        """Delete probe objects a crashed daemon left behind (once they are old), and find
        chunk files it was adopting. Whole objects are written by one PUT, so there are no
        temporaries of shards to clean. One recursive LIST of the store."""
        keys = {meta["path"]: meta for meta in self._list_below("")}
        abandoned = [key for key, meta in keys.items() if is_temporary(split_key(key)[1])
                     and time.time() - meta["last_modified"].timestamp() > ABANDONED_AFTER_SECONDS]
        self._delete(abandoned)
        staged: dict[str, list] = {}
        for key in keys:
            directory, name = split_key(key)
            if name.startswith(STAGED_PREFIX):
                self._found_staged(key, directory, name, keys, metadata_names, staged)
        return len(abandoned), staged

    def _found_staged(self, key: str, directory: str, name: str, keys, metadata_names, staged: dict) -> None:
        array_key = _array_above(directory, keys, metadata_names)
        original = join_key(directory, name[len(STAGED_PREFIX):])
        if array_key is None:  # its array is gone: the file is a plain file again
            self._copy(key, original)
            self._delete([key])
            return
        staged.setdefault(array_key, []).append((key, tuple(_relative(array_key, original).split("/"))))

    def stage_chunk_files(self, array_key: str, is_chunk_key) -> list[tuple[str, tuple[str, ...]]]:
        """Move the chunk files below ``array_key`` to hidden staging names beside them (a
        copy and a delete each); returns ``(staged key, key parts)`` of each."""
        staged = []
        for parts in list(self.files_below(array_key)):
            if zarrfs_own(parts[-1]) or not is_chunk_key(parts):
                continue
            key = join_key(array_key, *parts[:-1], STAGED_PREFIX + parts[-1])
            original = join_key(array_key, *parts)
            self._copy(original, key)
            self._delete([original])
            staged.append((key, parts))
        return staged

    def remove_staged(self, keys: list[str]) -> None:
        self._delete(list(keys))

    def remove_lock_file(self, array_key: str) -> None:
        """There is no lock file on an object store."""

    def read_many(self, dir_key: str, names, limit: int | None = None) -> list[bytes | None]:
        """``read`` of each ``dir_key/name``, in order, None for a missing one: one GET each,
        up to ``READ_MANY_AT_ONCE`` at a time (threads: each waits on the network), each
        bounded by ``limit`` like ``read``. The first error (in the order of ``names``) is
        raised once the GETs under way have ended; those not yet started are not made."""
        from concurrent.futures import ThreadPoolExecutor

        def one(name: str) -> bytes | None:
            try:
                return self.read(join_key(dir_key, name), limit)
            except FileNotFoundError:
                return None

        names = list(names)
        if len(names) < 2:
            return [one(name) for name in names]
        pool = ThreadPoolExecutor(max_workers=min(READ_MANY_AT_ONCE, len(names)),
                                  thread_name_prefix="zarrfs-read-many")
        try:
            return list(pool.map(one, names))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def replace_durably_from_files(self, key: str, source, groups, finish, mode: int = 0o644,
                                   limit: int | None = None) -> list[int | None]:
        """``LocalStore.replace_durably_from_files``: here the files are read with
        ``source.read_many`` and the object written with one PUT (``replace_durably``)."""
        from .local import replace_from_read_many

        return replace_from_read_many(self, key, source, groups, finish, mode, limit)


READ_MANY_AT_ONCE = 16  # GETs under way at once in one read_many


class ObjectFile:
    """One version (ETag) of an object, for reading: every read is conditional on it."""

    def __init__(self, store: ObjectStore, key: str, st: Stat):
        self.store, self.key, self._stat = store, key, st
        self.version = st.version

    def pread(self, size: int, offset: int) -> bytes:
        size = min(size, self._stat.st_size - offset)
        return self.store.pread_version(self.key, self.version, size, offset) if size > 0 else b""

    def stat(self) -> Stat:
        """The attributes of the version being read."""
        return self._stat

    def release(self) -> None:
        """Holds nothing open."""


class SpooledFile:
    """A plain file open for writing: a local spool, PUT whole when fsync'ed or closed."""

    def __init__(self, store: ObjectStore, key: str, spool, version: str):
        self.store, self.key, self.spool, self.version = store, key, spool, version
        self.dirty = False
        self.mtime_ns = time.time_ns()
        self._lock = threading.Lock()

    def pread(self, size: int, offset: int) -> bytes:
        with self._lock:
            return os.pread(self.spool.fileno(), size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        with self._lock:
            written = os.pwrite(self.spool.fileno(), data, offset)
            self._touched()
            return written

    def truncate(self, size: int) -> None:
        with self._lock:
            os.ftruncate(self.spool.fileno(), size)
            self._touched()

    def _touched(self) -> None:
        self.dirty = True
        self.mtime_ns = time.time_ns()

    def stat(self) -> Stat:
        with self._lock:
            size = os.fstat(self.spool.fileno()).st_size
            version = ("unsaved", id(self), self.mtime_ns) if self.dirty else self.version
            return Stat(st_mode=FILE_MODE, st_size=size, st_mtime_ns=self.mtime_ns, version=version)

    def fsync(self) -> None:
        """PUT the whole file if it changed since the last PUT (last writer wins, as with
        any write-back of whole objects)."""
        with self._lock:
            if not self.dirty:
                return
            self.spool.seek(0)
            self.version = self.store._put(self.key, self.spool)
            self.dirty = False

    def close(self) -> None:
        try:
            self.fsync()
        finally:
            self.spool.close()


def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix without slashes at either end)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise ValueError(f"not an s3://BUCKET/PREFIX URL: {url}")
    return parsed.netloc, parsed.path.strip("/")


# What ~/.aws files may give, and obstore's name for it (obstore itself reads only AWS_* variables).
PROFILE_SETTINGS = {"aws_access_key_id": "access_key_id", "aws_secret_access_key": "secret_access_key",
                    "aws_session_token": "session_token", "region": "region", "endpoint_url": "endpoint"}
ENVIRONMENT_OF = {"access_key_id": ("AWS_ACCESS_KEY_ID",), "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
                  "session_token": ("AWS_SESSION_TOKEN", "AWS_TOKEN"),
                  "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
                  "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")}


def aws_settings(profile: str | None = None) -> dict[str, str]:
    """Settings of an ``~/.aws`` profile that no ``AWS_*`` variable gives (those win, as
    with the AWS CLI). Credentials keep together: a key pair from the environment is
    never mixed with a token from a file."""
    profile = profile or os.environ.get("AWS_PROFILE") or "default"
    found = {}
    home = os.path.expanduser("~/.aws")
    files = [(os.environ.get("AWS_CONFIG_FILE", os.path.join(home, "config")),
              "default" if profile == "default" else f"profile {profile}"),
             (os.environ.get("AWS_SHARED_CREDENTIALS_FILE", os.path.join(home, "credentials")), profile)]
    for path, section in files:
        parser = configparser.RawConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
        if parser.has_section(section):
            for name, setting in PROFILE_SETTINGS.items():
                if parser.has_option(section, name):
                    found[setting] = parser.get(section, name).strip()
    if any(os.environ.get(variable) for variable in ENVIRONMENT_OF["access_key_id"]):
        for setting in ("access_key_id", "secret_access_key", "session_token"):
            found.pop(setting, None)
    return {setting: value for setting, value in found.items()
            if not any(os.environ.get(variable) for variable in ENVIRONMENT_OF[setting])}


def _listing_of(directory: str, found: dict, generation: int) -> _Listing:
    files, proven = {}, bool(found["objects"] or found["common_prefixes"])
    for meta in found["objects"]:
        name = _relative(directory, meta["path"])
        if name not in (DIRECTORY_MARKER, ""):  # "": a foreign "DIR/" marker, or SeaweedFS's entry
            files[name] = _stat_of(meta)
    directories = {split_key(prefix)[1] for prefix in found["common_prefixes"]}
    return _Listing(files, directories, proven, generation)


def _relative(directory: str, path: str) -> str:
    return path[len(directory) + 1:] if directory else path


def _stat_of(meta: dict) -> Stat:
    mtime_ns = int(meta["last_modified"].timestamp() * 1e9)
    return Stat(st_mode=FILE_MODE, st_size=meta["size"], st_mtime_ns=mtime_ns, version=meta["e_tag"],
                st_atime_ns=mtime_ns, st_ctime_ns=mtime_ns)


def _from_status(error: BaseError, key: str) -> OSError:
    """An OSError for an error obstore did not classify, by the HTTP status in its message
    (the first line only: the rest is a debug dump)."""
    found = _STATUS.search(str(error))
    status = int(found.group(1)) if found else None
    if status == 404:
        return FileNotFoundError(errno.ENOENT, "No such file or directory", key)
    if status in (401, 403):
        return PermissionError(errno.EACCES, "access denied by the object store", key)
    if status == 416 or "non-partial response" in str(error):  # past the end, or a range the server ignored
        return OSError(errno.ERANGE, "range not satisfiable", key)
    return OSError(errno.EIO, f"object store request failed: {str(error).splitlines()[0][:300]}", key)


def _parents_up_to(key: str, top: str):
    """``key`` and the directories above it, below ``top``."""
    while key != top and key.startswith(top + "/"):
        yield key
        key = split_key(key)[0]


def _succeeds(call) -> bool:
    try:
        call()
    except (AlreadyExistsError, PreconditionError):
        return False
    return True


def _array_above(directory: str, keys, metadata_names) -> str | None:
    """The key of the array a staged file's directory belongs to, from a full listing."""
    while True:
        if any(join_key(directory, name) in keys for name in metadata_names):
            return directory
        if not directory:
            return None
        directory = split_key(directory)[0]


def _this_and_above(key: str):
    """``key``, its parent directory, and so on up to the root ``""``."""
    while key:
        yield key
        key = split_key(key)[0]
    yield ""
