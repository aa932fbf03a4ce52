"""The backend protocol (zarrfs/store/base.py), held by every backend: a local directory,
and real S3-compatible servers (SeaweedFS and moto, tests/s3server.py)."""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass

import pytest

from s3server import ACCESS_KEY, SECRET_KEY, S3Server, moto, s3_credentials, seaweedfs  # noqa: F401 (fixtures)
from zarrfs.store.base import ABSENT, Conflict, FileChanged, Stat, TooLarge
from zarrfs.store.local import LocalStore
from zarrfs.store.object import DIRECTORY_MARKER, ObjectStore, aws_settings

BACKENDS = ["local", "seaweedfs", "moto"]
SERVERS = ["seaweedfs", "moto"]


@dataclass
class Backend:
    name: str
    store: object
    server: S3Server | None
    tmp_path: object

    def missing_store(self):
        """A store whose root (directory, bucket) does not exist."""
        if self.server is None:
            return LocalStore(str(self.tmp_path / "no-such-directory"))
        return ObjectStore("s3://no-such-bucket-zarrfs/prefix", endpoint_url=self.server.endpoint)


def object_store(request, name: str) -> ObjectStore:
    server = request.getfixturevalue(name)
    request.getfixturevalue("s3_credentials")
    return ObjectStore(server.url(), endpoint_url=server.endpoint)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        (tmp_path / "store").mkdir()
        return Backend("local", LocalStore(str(tmp_path / "store")), None, tmp_path)
    store = object_store(request, request.param)
    return Backend(request.param, store, request.getfixturevalue(request.param), tmp_path)


@pytest.fixture
def store(backend):
    return backend.store


@pytest.fixture(params=SERVERS)
def s3(request) -> ObjectStore:
    return object_store(request, request.param)


def put(store, key: str, data: bytes) -> None:
    store.replace_durably(key, data)


# -- reading -----------------------------------------------------------------------

def test_stat_and_listdir_show_files_and_implied_directories(store):
    put(store, "arr/zarr.json", b"{}")
    put(store, "arr/c/0/1", b"x" * 300)
    put(store, "top.txt", b"hi")
    assert store.listdir("") == ["arr", "top.txt"]
    assert store.listdir("arr") == ["c", "zarr.json"]
    assert store.listdir("arr/c/0") == ["1"]
    assert store.scan("arr") == [("c", True), ("zarr.json", False)]
    st = store.stat("arr/c/0/1")
    assert isinstance(st, Stat) and st.is_file and st.st_size == 300 and st.st_blocks == 1
    assert store.lstat("arr/c").is_directory and store.stat("").is_directory
    assert store.recent_stat("top.txt").st_size == 2
    assert abs(st.st_mtime_ns / 1e9 - time.time()) < 120


def test_read_whole_and_bounded(store):
    put(store, "m/zarr.json", b"a" * 100)
    assert store.read("m/zarr.json") == b"a" * 100
    assert store.read("m/zarr.json", limit=100) == b"a" * 100
    with pytest.raises(TooLarge):
        store.read("m/zarr.json", limit=99)
    with pytest.raises(TooLarge):
        store.read_versioned("m/zarr.json", limit=99)


def test_read_versioned_names_the_version_stat_sees(store):
    put(store, "k", b"0123456789")
    data, version = store.read_versioned("k")
    assert data == b"0123456789"
    assert store.stat("k").version == version
    assert store.pread_version("k", version, 3, 2) == b"234"
    assert store.pread_version("k", version, 100, 8) == b"89"


def test_pread_of_a_replaced_version_raises_file_changed(store):
    put(store, "k", b"old bytes")
    _, old = store.read_versioned("k")
    put(store, "k", b"new bytes!")
    with pytest.raises(FileChanged):
        store.pread_version("k", old, 3, 0)
    store.forget_recent("k")
    assert store.stat("k").version != old


def test_share_never_mixes_two_versions(store):
    """A reader streams a file while another writer replaces it over and over: each shared
    version reads as one version throughout (or says it changed), never a mix."""
    size, step = 32 << 10, 4 << 10
    put(store, "s", bytes([0]) * size)
    stop = threading.Event()

    def overwrite():
        version = 1
        while not stop.is_set():
            put(store, "s", bytes([version % 256]) * size)
            version += 1

    def read_one_version() -> bool:
        store.forget_recent("s")
        shared = store.share("s")
        assert shared.stat().version == shared.version and shared.stat().st_size == size
        try:
            data = b"".join(shared.pread(step, offset) for offset in range(0, size, step))
        except FileChanged:
            return False
        finally:
            shared.release()
        assert data == data[:1] * size
        return True

    writer = threading.Thread(target=overwrite)
    writer.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            read_one_version()
    finally:
        stop.set()
        writer.join()
    assert read_one_version()


# -- whole files, durably ------------------------------------------------------------------

def test_conditional_replace(store):
    store.replace_durably("shard", b"one", expected=ABSENT)
    with pytest.raises(Conflict):
        store.replace_durably("shard", b"two", expected=ABSENT)
    _, first = store.read_versioned("shard")
    store.replace_durably("shard", b"three", expected=first)
    with pytest.raises(Conflict) as raised:
        store.replace_durably("shard", b"four", expected=first)
    assert raised.value.errno == errno.EAGAIN
    assert store.read("shard") == b"three"


def test_remove_durably(store):
    put(store, "arr/zarr.json", b"{}")
    put(store, "arr/c/0/0", b"shard")
    _, version = store.read_versioned("arr/c/0/0")
    put(store, "arr/c/0/0", b"shard, rewritten")
    with pytest.raises(Conflict):
        store.remove_durably("arr/c/0/0", up_to="arr", expected=version)
    assert store.read("arr/c/0/0") == b"shard, rewritten"
    _, version = store.read_versioned("arr/c/0/0")
    store.remove_durably("arr/c/0/0", up_to="arr", expected=version)
    store.forget_recent("arr/c")
    assert store.listdir("arr") == ["zarr.json"]  # the directories it left empty went too
    store.remove_durably("arr/c/9/9", up_to="arr")  # already gone: nothing to do


# -- the namespace ---------------------------------------------------------------------

def test_plain_file_written_through_and_read_back(store):
    plain = store.create("notes.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    assert store.lstat("notes.txt").st_size == 0  # it exists from the create on
    assert plain.pwrite(b"hello", 0) == 5
    plain.pwrite(b" world", 5)
    assert plain.stat().st_size == 11 and plain.pread(5, 6) == b"world"
    plain.fsync()
    assert store.read("notes.txt") == b"hello world"
    plain.truncate(5)
    plain.close()
    assert store.read("notes.txt") == b"hello"
    again = store.create("notes.txt", os.O_RDWR, 0o644)
    assert again.pread(5, 0) == b"hello"
    again.pwrite(b"!", 5)
    again.close()
    assert store.read("notes.txt") == b"hello!"


def test_create_refuses_what_posix_refuses(store):
    put(store, "f", b"x")
    with pytest.raises(FileExistsError):
        store.create("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with pytest.raises(FileNotFoundError):
        store.create("no-such-dir/f", os.O_WRONLY | os.O_CREAT, 0o644)


def test_mkdir_rmdir(store):
    store.mkdir("d", 0o755)
    assert store.listdir("") == ["d"] and store.listdir("d") == [] and store.stat("d").is_directory
    with pytest.raises(FileExistsError):
        store.mkdir("d", 0o755)
    with pytest.raises(FileNotFoundError):
        store.mkdir("missing/d", 0o755)
    put(store, "d/f", b"x")
    with pytest.raises(OSError) as raised:
        store.rmdir("d")
    assert raised.value.errno == errno.ENOTEMPTY
    store.unlink("d/f")
    store.rmdir("d")
    assert store.listdir("") == []
    with pytest.raises(FileNotFoundError):
        store.stat("d")


def test_rename_a_file(store):
    put(store, "a", b"A")
    put(store, "b", b"B")
    store.rename("a", "b")
    assert store.listdir("") == ["b"] and store.read("b") == b"A"


def test_rename_a_directory(store):
    put(store, "old/x/1", b"one")
    put(store, "old/2", b"two")
    store.mkdir("old/empty", 0o755)
    store.rename("old", "new")
    assert store.listdir("") == ["new"]
    assert store.listdir("new") == ["2", "empty", "x"]
    assert store.read("new/x/1") == b"one" and store.read("new/2") == b"two"
    with pytest.raises(FileNotFoundError):
        store.stat("old")


def test_link_and_symlink_as_capabilities_say(store):
    put(store, "a", b"A")
    store.link("a", "b")
    assert store.read("b") == b"A"
    with pytest.raises(FileExistsError):
        store.link("a", "b")
    if store.capabilities.symlinks:
        store.symlink("a", "s")
        assert store.readlink("s") == "a"
    else:
        with pytest.raises(OSError) as raised:
            store.symlink("a", "s")
        assert raised.value.errno == errno.EPERM


def test_truncate_and_attributes(store):
    put(store, "t", b"0123456789")
    store.truncate("t", 4)
    assert store.read("t") == b"0123"
    store.truncate("t", 6)
    assert store.read("t") == b"0123\0\0"
    store.set_attributes("t", mode=0o600, times_ns=(0, 0))
    assert store.statvfs().f_bsize > 0


def test_staged_chunk_files_are_found_after_a_crash(store):
    put(store, "arr/zarr.json", b"{}")
    put(store, "arr/c/0", b"chunk")
    put(store, "arr/notes", b"plain")
    staged = store.stage_chunk_files("arr", lambda parts: parts[0] == "c")
    assert staged == [("arr/c/.zarrfs-adopt-0", ("c", "0"))]
    assert store.read("arr/c/.zarrfs-adopt-0") == b"chunk"
    assert sorted(store.files_below("arr")) == [("c", ".zarrfs-adopt-0"), ("notes",), ("zarr.json",)]
    assert store.clean_after_crash() == (0, {"arr": staged})
    store.remove_staged([key for key, _ in staged])
    assert sorted(store.files_below("arr")) == [("notes",), ("zarr.json",)]


def test_coordination_is_available(store):
    assert store.locking_problem() is None
    assert store.capabilities.conditional_writes
    with store.locked("", "shard"):
        pass


# -- errors ------------------------------------------------------------------------------

def test_a_missing_key_is_file_not_found(store):
    put(store, "present", b"x")
    _, version = store.read_versioned("present")
    for call in (lambda: store.stat("nope"), lambda: store.read("nope"), lambda: store.read_versioned("nope"),
                 lambda: store.listdir("nope"), lambda: store.unlink("nope"), lambda: store.share("nope"),
                 lambda: store.rename("nope", "other")):
        with pytest.raises(FileNotFoundError):
            call()
    with pytest.raises((FileNotFoundError, FileChanged)):
        store.pread_version("nope", version, 1, 0)


def test_a_missing_bucket_is_one_clear_error(backend):
    with pytest.raises(FileNotFoundError) as raised:
        backend.missing_store()
    if backend.server is not None:
        assert "no-such-bucket-zarrfs" in str(raised.value)


def test_wrong_credentials_are_permission_errors(seaweedfs, s3_credentials, monkeypatch):
    """On SeaweedFS, which checks signatures (moto accepts any; root reads every local file)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(PermissionError) as raised:
        ObjectStore(seaweedfs.url(), endpoint_url=seaweedfs.endpoint)
    assert raised.value.errno == errno.EACCES
    assert "wrong-secret" not in str(raised.value) and SECRET_KEY not in str(raised.value)


# -- what only object stores have --------------------------------------------------------

def test_a_chunk_read_costs_one_request_and_an_index_one_more(s3):
    s3.replace_durably("arr/c/0", bytes(range(256)) * 64)
    s3.requests.clear()
    tail, st = s3.read_suffix("arr/c/0", 16)  # the shard index, without a HEAD
    assert tail == (bytes(range(256)) * 64)[-16:] and st.st_size == 16384
    assert s3.pread_version("arr/c/0", st.version, 10, 100) == bytes(range(100, 110))
    assert s3.requests == {"GET": 2}


def test_one_list_serves_a_directory_and_its_entries(s3):
    for i in range(5):
        s3.replace_durably(f"dir/{i}", b"x")
    s3.requests.clear()
    names = s3.listdir("dir")
    assert [s3.lstat(f"dir/{name}").st_size for name in names] == [1] * 5
    assert s3.requests == {"LIST": 1}


def test_small_objects_are_fetched_whole_once_several_ranges_are_wanted(s3):
    data = os.urandom(100_000)
    s3.replace_durably("small", data)
    _, version = s3.read_versioned("small")
    s3.requests.clear()
    for offset in range(0, 100_000, 10_000):
        assert s3.pread_version("small", version, 10_000, offset) == data[offset:offset + 10_000]
    assert s3.requests["GET"] == 3  # two ranges, then the whole object, then memory


def test_read_suffix_of_short_and_empty_objects(s3):
    s3.replace_durably("short", b"abc")
    assert s3.read_suffix("short", 16)[0] == b"abc"
    s3.replace_durably("empty", b"")
    data, st = s3.read_suffix("empty", 16)
    assert data == b"" and st.st_size == 0


def test_the_probe_finds_conditional_writes_and_leaves_nothing(s3):
    assert s3.probe_conditional_writes() is None
    assert s3.listdir("") == []
    assert s3.requests["PUT"] == 3 and s3.requests["DELETE"] == 1


def test_directory_markers_are_hidden(s3):
    s3.mkdir("d", 0o755)
    assert s3.listdir("d") == [] and list(s3.files_below("d")) == []
    assert DIRECTORY_MARKER not in s3.listdir("d")


def test_no_secret_in_what_the_store_shows(s3):
    assert SECRET_KEY not in repr(s3) and ACCESS_KEY not in repr(s3)
    assert s3.name.startswith("s3://zarrfs/")


def test_aws_profiles_are_read_where_the_environment_says_nothing(tmp_path, monkeypatch):
    (tmp_path / "config").write_text("[profile lab]\nregion = eu-west-3\nendpoint_url = http://127.0.0.1:9\n")
    (tmp_path / "credentials").write_text("[lab]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    assert aws_settings() == {"region": "eu-west-3", "endpoint": "http://127.0.0.1:9", "access_key_id": "AK",
                              "secret_access_key": "SK"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENV")
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    assert aws_settings() == {"endpoint": "http://127.0.0.1:9"}


def test_an_unreachable_server_is_eio_after_bounded_retries(s3_credentials):
    from s3server import free_ports

    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        ObjectStore("s3://zarrfs/prefix", endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}")
    assert raised.value.errno == errno.EIO and "does not answer" in str(raised.value)
    assert time.monotonic() - started < 35


def test_many_threads_share_one_store(s3):
    """The daemon's worker threads all call one store: caches and counters stay right."""
    blobs = {f"k{i}": os.urandom(50_000) for i in range(4)}
    for key, data in blobs.items():
        s3.replace_durably(key, data)
    versions = {key: s3.stat(key).version for key in blobs}
    s3.requests.clear()
    failures = []

    def read(seed: int):
        for n in range(20):
            key = f"k{(seed + n) % 4}"
            offset = (seed * 7919 + n * 104729) % 45_000
            if s3.pread_version(key, versions[key], 5_000, offset) != blobs[key][offset:offset + 5_000]:
                failures.append((key, offset))

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert s3.requests["GET"] <= 8 * 20 and set(s3.requests) == {"GET"}


# -- the local store's reuse of stats and descriptors (the daemon's settings) ----------

@pytest.fixture
def reusing(tmp_path) -> tuple[LocalStore, object]:
    """A LocalStore that reuses stats for a minute and keeps 4 descriptors, and its directory."""
    (tmp_path / "store").mkdir()
    return LocalStore(str(tmp_path / "store"), reuse_stats_for=60.0, keep_open=4), tmp_path / "store"


def test_stats_are_reused_until_the_store_changes_through_it(reusing):
    store, root = reusing
    (root / "a").write_bytes(b"1")
    (root / "b").write_bytes(b"1")
    assert store.recent_stat("a").st_size == 1
    assert store.recent_stat("b", follow_symlinks=False).st_size == 1
    (root / "a").write_bytes(b"22")  # outside the mount: seen once the reuse runs out
    (root / "b").write_bytes(b"22")
    assert store.recent_stat("a").st_size == 1
    assert store.recent_stat("b", follow_symlinks=False).st_size == 1
    store.mkdir("c", 0o755)  # any change through the store: nothing seen before it serves
    assert store.recent_stat("a").st_size == 2
    assert store.recent_stat("b", follow_symlinks=False).st_size == 2
    with pytest.raises(FileNotFoundError):
        store.recent_stat("new")
    put(store, "new", b"333")
    assert store.recent_stat("new").st_size == 3  # a miss is not reused past a change either


def test_no_stat_is_reused_while_a_change_is_under_way(reusing):
    store, root = reusing
    (root / "a").write_bytes(b"1")
    store.recent_stat("a")
    seen, generations = [], []

    def looking(*args):  # runs inside a change (as a repack's worker thread would)
        (root / "a").write_bytes(b"22")
        seen.append(store.recent_stat("a").st_size)
        generations.append(store.generation())
        return original(*args)

    original, store._parent = store._parent, looking
    store.mkdir("d", 0o755)
    assert seen == [2] and generations == [None]
    assert store.generation() is not None


def test_a_version_is_opened_once_and_its_descriptor_kept_after_its_readers(reusing):
    store, root = reusing
    (root / "s").write_bytes(b"old")
    version = store.recent_stat("s").version
    before = len(os.listdir("/proc/self/fd"))
    first = store.share("s", version)
    second = store.share("s", version)
    assert first is second and len(os.listdir("/proc/self/fd")) == before + 1
    first.release()
    second.release()
    assert len(os.listdir("/proc/self/fd")) == before + 1  # kept: the next reader makes no system call
    assert store.pread_version("s", version, 3, 0) == b"old"
    os.rename(root / "s", root / "s.old")  # replaced outside: the old version's bytes stay readable
    (root / "s").write_bytes(b"new")
    assert store.pread_version("s", version, 3, 0) == b"old"
    store.forget_recent("s")
    newer = store.recent_stat("s").version
    assert store.pread_version("s", newer, 3, 0) == b"new"
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the replaced version's descriptor is closed
    for i in range(8):  # past keep_open, the least recently used go
        (root / f"k{i}").write_bytes(b"k")
        store.pread_version(f"k{i}", store.recent_stat(f"k{i}").version, 1, 0)
    assert len(os.listdir("/proc/self/fd")) == before + 4
