"""zarrfs on S3 (issue 12) against raw obstore, rclone mount and s3fs, one interleaved run:

    make bench-s3            # or: .venv/bin/python bench/s3.py [--repeats N] [--parts ...]

Starts a SeaweedFS (`weed mini`, as tests/s3server.py does, plus its Prometheus port) on free
ports of 127.0.0.1, uploads D1's sharded store and its plain chunk files (and a small D2-like
dataset, "d2s": 4 KiB chunks in 4 MiB shards, 64 MiB) with obstore from 16 threads, then:

  requests   requests per chunk read through a fresh zarrfs S3 mount: cold (first chunk of a
             shard), warm (another chunk of a shard already read), and over a whole cat pass
  cat        cold `cat` of every D1 chunk: zarrfs on S3 vs zarrfs on the local directory
  concurrent 16 reader threads reading small chunks: zarrfs on S3 vs raw obstore ranged GETs
  peers      the plain chunk files through rclone mount (--vfs-cache-mode off and full) and
             s3fs vs zarrfs on the sharded store: find, stat of every file, cold cat
  write      zarr-python 2 writing D1 through a zarrfs S3 mount (--view v2) vs obstore
             PUTting D1's plain chunk files (16 threads)

Requests are counted at the server: SeaweedFS's SeaweedFS_s3_request_total counter (by type)
read before and after each step; nothing else talks to the server meanwhile. Every server and
mount is stopped (by PID) / unmounted in `finally` blocks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import REPO, RESULTS, ZARRFS, force_unmount, load_average, log, run, timed, warm_files
from datasets import D1, Dataset, SEED, _write_arrays, random_source
from peers import LIVE_MOUNTS, unmount_everything, unmount_zarrfs
import report
from suite import cat_all, check, find_files, stat_all, stop_on_sigterm
import zarr_io

sys.path.insert(0, str(REPO / "tests"))
import s3server  # noqa: E402  (free_ports, start, stop, wait_for_bucket, the identity)

THREADS = 16
# d2s: D2's chunking (4 KiB chunks, 4 MiB shards) on a 8192 x 8192 array: 16 shards, 16,384 chunks.
D2S = Dataset("d2s", (8192, 8192), (64, 64), (2048, 2048), description="16,384 raw chunks of 4 KiB in 16 shards of 4 MiB")
REQUEST_SAMPLE = 64  # shards sampled for the cold/warm request counts


# -- the server --------------------------------------------------------------------

class Seaweed:
    """`weed mini` as tests/s3server.py starts it, with a Prometheus port for request counts."""

    def __init__(self, work: Path):
        self.work = work
        (work / "data").mkdir(parents=True)
        identities = {"identities": [{"name": "zarrfs", "credentials": [
            {"accessKey": s3server.ACCESS_KEY, "secretKey": s3server.SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        (work / "s3.json").write_text(json.dumps(identities))
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "metricsPort"]
        self.ports = dict(zip(names, s3server.free_ports(len(names))))
        command = [str(s3server.BIN / "weed"), "mini", f"-dir={work / 'data'}", "-ip=127.0.0.1",
                   "-ip.bind=127.0.0.1", *(f"-{flag}={port}" for flag, port in self.ports.items()),
                   "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                   f"-s3.config={work / 's3.json'}", f"-bucket={s3server.BUCKET}"]
        self.log = work / "weed.log"
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process = s3server.start(command, self.log, cwd=work, env=s3server.server_environment())
        try:
            s3server.wait_for_bucket(self.endpoint, self.process, self.log)
        except BaseException:
            self.stop()
            raise
        log(f"SeaweedFS pid {self.process.pid} at {self.endpoint}")

    def stop(self) -> None:
        s3server.stop(self.process)

    def requests(self) -> dict[str, int]:
        """S3 requests on the bucket so far, by type (GET, PUT, LIST, HEAD, DELETE, ...)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metricsPort']}/metrics", timeout=10).read()
        counts: dict[str, int] = {}
        for line in text.decode().splitlines():
            if line.startswith("SeaweedFS_s3_request_total{") and 'bucket="zarrfs"' in line:
                kind = line.split('type="', 1)[1].split('"', 1)[0]
                counts[kind] = counts.get(kind, 0) + int(float(line.rsplit(" ", 1)[1]))
        return counts

    def store(self, prefix: str | None = None):
        from obstore.store import S3Store

        return S3Store(s3server.BUCKET, prefix=prefix, endpoint=self.endpoint, access_key_id=s3server.ACCESS_KEY,
                       secret_access_key=s3server.SECRET_KEY, region=s3server.REGION,
                       client_options={"allow_http": True})


class Counted:
    """Requests the server saw during a ``with`` block: ``.delta`` by type, ``.total``."""

    def __init__(self, server: Seaweed):
        self.server = server

    def __enter__(self) -> "Counted":
        time.sleep(0.05)
        self.before = self.server.requests()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.05)  # the last answers' counters
        after = self.server.requests()
        self.delta = {k: after.get(k, 0) - self.before.get(k, 0) for k in after
                      if after.get(k, 0) != self.before.get(k, 0)}
        self.total = sum(self.delta.values())


def aws_environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(AWS_ACCESS_KEY_ID=s3server.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
               AWS_REGION=s3server.REGION, AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    return env


# -- data ---------------------------------------------------------------------------

def ensure_d2s() -> Dataset:
    """The small D2-like dataset, from the first 8192 x 8192 of the random source."""
    if D2S.sharded.exists() and D2S.plain.exists():
        return D2S
    import zarr

    D2S.root.mkdir(parents=True, exist_ok=True)
    source = np.load(random_source(), mmap_mode="r")
    tmp_s, tmp_p = D2S.root / "partial-sharded", D2S.root / "partial-plain"
    for path in (tmp_s, tmp_p):
        shutil.rmtree(path, ignore_errors=True)
    common = dict(shape=D2S.shape, chunks=D2S.chunk, dtype="uint8", compressors=None, fill_value=0, zarr_format=3)
    sharded = zarr.create_array(zarr.storage.LocalStore(tmp_s / "arr"), shards=D2S.shard, **common)
    plain = zarr.create_array(zarr.storage.LocalStore(tmp_p / "arr"), **common)
    for top in range(0, D2S.shape[0], D2S.shard[0]):
        slab = np.ascontiguousarray(source[top:top + D2S.shard[0], :D2S.shape[1]])
        sharded[top:top + len(slab)] = slab
        plain[top:top + len(slab)] = slab
    os.sync()
    tmp_s.rename(D2S.sharded)
    tmp_p.rename(D2S.plain)
    return D2S


def files_of(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def upload(server: Seaweed, dataset: Dataset) -> float:
    """Both forms to s3://zarrfs/<name>/{sharded,plain}/..., 16 PUTs at a time."""
    import obstore

    store = server.store()
    jobs = [(f"{dataset.name}/{form}/{rel}", directory / rel)
            for form, directory in (("sharded", dataset.sharded), ("plain", dataset.plain))
            for rel in files_of(directory)]

    def put(job):
        key, path = job
        obstore.put(store, key, path.read_bytes(), use_multipart=False)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(put, jobs))
    seconds = time.perf_counter() - started
    log(f"uploaded {dataset.name}: {len(jobs)} objects in {seconds:.1f} s")
    return seconds


# -- mounts ----------------------------------------------------------------------------

class Mounted:
    """A mount made by a command; unmounted (and its process waited for) on exit."""

    def __init__(self, name: str, mountpoint: Path, process: subprocess.Popen | None = None):
        self.name, self.mountpoint, self.process = name, mountpoint, process

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unmount()

    def unmount(self) -> None:
        if self.process is None:  # zarrfs (daemonized)
            unmount_zarrfs(self.mountpoint)
        else:
            force_unmount(self.mountpoint)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        LIVE_MOUNTS.discard(self.mountpoint)


def wait_mounted(mountpoint: Path, process: subprocess.Popen, log_file: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{mountpoint}: exited {process.returncode}: {log_file.read_text()[-2000:]}")
        if os.path.ismount(mountpoint):
            try:
                os.stat(mountpoint / "arr")
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint}: not mounted after {timeout} s: {log_file.read_text()[-2000:]}")
        time.sleep(0.01)


class Mounter:
    def __init__(self, server: Seaweed, workdir: Path):
        self.server, self.workdir = server, workdir
        self.passwd = workdir / "s3fs-passwd"
        self.passwd.write_text(f"{s3server.ACCESS_KEY}:{s3server.SECRET_KEY}\n")
        self.passwd.chmod(0o600)

    def point(self, name: str) -> Path:
        path = self.workdir / f"mnt-{name}"
        path.mkdir(exist_ok=True)
        return path

    whole_cache_mib: int | None = None  # an experiment: the S3 daemons with another WHOLE_CACHE_BYTES

    def zarrfs(self, name: str, store: str, options=(), s3: bool = True) -> Mounted:
        mountpoint = self.point(name)
        LIVE_MOUNTS.add(mountpoint)
        command = [ZARRFS]
        if s3 and self.whole_cache_mib:
            # The daemon forks from this process, so the patched constant is the daemon's too.
            command = [sys.executable, "-c", "import sys, zarrfs.store.object as o; "
                       "o.WHOLE_CACHE_BYTES = int(sys.argv.pop(1)) << 20; "
                       "from zarrfs.cli import main; sys.exit(main())", self.whole_cache_mib]
        args = [*command, "mount", *options, "--log-file", self.workdir / f"{name}.log"]
        if s3:
            args += ["--endpoint-url", self.server.endpoint]
        try:
            run([*args, store, mountpoint], env=aws_environment())
        except BaseException:
            force_unmount(mountpoint)
            raise
        return Mounted(name, mountpoint)

    def rclone(self, name: str, prefix: str, cache_mode: str) -> Mounted:
        mountpoint = self.point(name)
        env = {k: v for k, v in aws_environment().items() if not k.startswith("AWS_")}
        env.update(RCLONE_S3_PROVIDER="Other", RCLONE_S3_ENDPOINT=self.server.endpoint,
                   RCLONE_S3_ACCESS_KEY_ID=s3server.ACCESS_KEY, RCLONE_S3_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
                   RCLONE_S3_REGION=s3server.REGION, RCLONE_S3_FORCE_PATH_STYLE="true",
                   RCLONE_CONFIG="/dev/null")
        cache = self.workdir / f"rclone-cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        log_file = self.workdir / f"{name}.log"
        command = ["rclone", "mount", f":s3:{s3server.BUCKET}/{prefix}", str(mountpoint), "--read-only",
                   "--vfs-cache-mode", cache_mode, "--cache-dir", str(cache)]
        return self._foreground(name, mountpoint, command, env, log_file)

    def s3fs(self, name: str, prefix: str) -> Mounted:
        mountpoint = self.point(name)
        log_file = self.workdir / f"{name}.log"
        command = ["s3fs", f"{s3server.BUCKET}:/{prefix}", str(mountpoint), "-f", "-o", "ro",
                   "-o", f"url={self.server.endpoint}", "-o", "use_path_request_style",
                   "-o", f"passwd_file={self.passwd}", "-o", "endpoint=" + s3server.REGION]
        env = {k: v for k, v in aws_environment().items() if not k.startswith("AWS_")}
        return self._foreground(name, mountpoint, command, env, log_file)

    def _foreground(self, name, mountpoint, command, env, log_file) -> Mounted:
        with open(log_file, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        LIVE_MOUNTS.add(mountpoint)
        mounted = Mounted(name, mountpoint, process)
        try:
            wait_mounted(mountpoint, process, log_file)
        except BaseException:
            mounted.unmount()
            raise
        return mounted


# -- the steps ---------------------------------------------------------------------------

def chunk_paths(dataset: Dataset) -> list[str]:
    return [p for p in files_of(dataset.plain) if not p.endswith("zarr.json")]


def write_list(workdir: Path, name: str, paths: list[str]) -> Path:
    path = workdir / f"list-{name}.nul"
    path.write_bytes(b"".join(p.encode() + b"\0" for p in paths))
    return path


def read_file(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def step_requests(server: Seaweed, mounter: Mounter, dataset: Dataset, workdir: Path) -> dict:
    """Requests per chunk read on a fresh mount: one chunk of each of REQUEST_SAMPLE shards
    (cold: the shard's index is not known yet), then another chunk of each of those shards
    (warm), then a whole cat pass of every chunk on another fresh mount."""
    chunks = chunk_paths(dataset)
    per_shard = [(dataset.shard[0] // dataset.chunk[0]), (dataset.shard[1] // dataset.chunk[1])]
    by_shard: dict[tuple, list[str]] = {}
    for rel in chunks:
        i, j = map(int, rel.split("/")[-2:])
        by_shard.setdefault((i // per_shard[0], j // per_shard[1]), []).append(rel)
    rng = random.Random(SEED)
    shards = rng.sample(sorted(by_shard), min(REQUEST_SAMPLE, len(by_shard)))
    picks = [rng.sample(by_shard[s], 2) for s in shards]
    out = {}
    with mounter.zarrfs("req", f"s3://{s3server.BUCKET}/{dataset.name}/sharded") as m:
        root = str(m.mountpoint)
        for label, column in (("cold", 0), ("warm", 1)):
            with Counted(server) as c:
                for pick in picks:
                    read_file(f"{root}/{pick[column]}")
            out[label] = {"chunks": len(picks), "requests": c.delta, "per_chunk": c.total / len(picks)}
            log(f"{dataset.name} requests per chunk {label}: {c.total / len(picks):.2f} {c.delta}")
    with mounter.zarrfs("req", f"s3://{s3server.BUCKET}/{dataset.name}/sharded") as m:
        listing = write_list(workdir, dataset.name, chunks)
        with Counted(server) as c:
            cat_all(m.mountpoint, listing)
        out["cat pass"] = {"chunks": len(chunks), "requests": c.delta, "per_chunk": c.total / len(chunks)}
        with Counted(server) as c:
            cat_all(m.mountpoint, listing)
        out["cat pass again"] = {"chunks": len(chunks), "requests": c.delta, "per_chunk": c.total / len(chunks)}
        log(f"{dataset.name} requests per chunk, cat pass: {out['cat pass']['per_chunk']:.3f} "
            f"{out['cat pass']['requests']}; again {out['cat pass again']['requests']}")
    return out


def step_cat(server: Seaweed, mounter: Mounter, dataset: Dataset, workdir: Path, repeats: int) -> dict:
    """Cold cat of every chunk, fresh mount each: zarrfs on the local directory, on S3."""
    listing = write_list(workdir, dataset.name, chunk_paths(dataset))
    out = {"local": [], "s3": [], "s3 requests": []}
    for repeat in range(repeats):
        warm_files([dataset.sharded])
        with mounter.zarrfs("cat-local", str(dataset.sharded), s3=False) as m:
            out["local"].append(timed(cat_all, m.mountpoint, listing)[0])
        with mounter.zarrfs("cat-s3", f"s3://{s3server.BUCKET}/{dataset.name}/sharded") as m:
            with Counted(server) as c:
                out["s3"].append(timed(cat_all, m.mountpoint, listing)[0])
            out["s3 requests"].append(c.delta)
        log(f"{dataset.name} cold cat {repeat + 1}/{repeats}: local {out['local'][-1]:.2f} s, "
            f"S3 {out['s3'][-1]:.2f} s {c.delta} (load {load_average()})")
    return out


def shard_ranges(server: Seaweed, dataset: Dataset, rels: list[str]) -> dict[str, tuple[str, int, int]]:
    """chunk rel path -> (shard key, offset, length), from the shards' indexes (untimed)."""
    import obstore

    store = server.store()
    per = [dataset.shard[0] // dataset.chunk[0], dataset.shard[1] // dataset.chunk[1]]
    n = per[0] * per[1]
    indexes = {}
    out = {}
    for rel in rels:
        i, j = map(int, rel.split("/")[-2:])
        key = f"{dataset.name}/sharded/arr/c/{i // per[0]}/{j // per[1]}"
        if key not in indexes:
            raw = bytes(obstore.get(store, key, options={"range": {"suffix": n * 16 + 4}}).bytes())
            indexes[key] = np.frombuffer(raw[:n * 16], dtype="<u8").reshape(per[0], per[1], 2)
        offset, length = indexes[key][i % per[0], j % per[1]]
        out[rel] = (key, int(offset), int(length))
    return out


def parallel(function, items, threads: int = THREADS) -> int:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(function, items, chunksize=16))


def step_concurrent(server: Seaweed, mounter: Mounter, dataset: Dataset, repeats: int) -> dict:
    """16 threads read every chunk (shuffled order) once: through a fresh zarrfs S3 mount
    (open, read, close) vs raw obstore ranged GETs of the same bytes."""
    import obstore

    rels = chunk_paths(dataset)
    random.Random(SEED).shuffle(rels)
    ranges = shard_ranges(server, dataset, rels)
    store = server.store()
    expected = sum(length for _, _, length in ranges.values())

    def get(rel):
        key, offset, length = ranges[rel]
        return len(obstore.get(store, key, options={"range": (offset, offset + length)}).bytes())

    out = {"obstore": [], "zarrfs": [], "zarrfs requests": [], "obstore requests": []}
    for repeat in range(repeats):
        with Counted(server) as c:
            seconds, total = timed(parallel, get, rels)
        check(total == expected, f"obstore read {total} bytes, expected {expected}")
        out["obstore"].append(seconds)
        out["obstore requests"].append(c.delta)
        with mounter.zarrfs("conc", f"s3://{s3server.BUCKET}/{dataset.name}/sharded") as m:
            root = str(m.mountpoint)
            with Counted(server) as c:
                seconds, total = timed(parallel, read_file, [f"{root}/{r}" for r in rels])
        check(total == expected, f"zarrfs read {total} bytes, expected {expected}")
        out["zarrfs"].append(seconds)
        out["zarrfs requests"].append(c.delta)
        log(f"{dataset.name} 16 readers {repeat + 1}/{repeats}: obstore {out['obstore'][-1]:.2f} s, zarrfs "
            f"{seconds:.2f} s {c.delta} (load {load_average()})")
    return out


PEER_SYSTEMS = ("zarrfs", "rclone-off", "rclone-full", "s3fs")


def step_peers(server: Seaweed, mounter: Mounter, dataset: Dataset, workdir: Path, repeats: int,
               systems=PEER_SYSTEMS) -> dict:
    """find, stat every file, cold cat every file, a fresh mount each session, interleaved."""
    rel_paths = files_of(dataset.plain)
    listing = write_list(workdir, f"{dataset.name}-all", rel_paths)
    out = {s: {"list": [], "stat": [], "cat cold": [], "requests": []} for s in systems}

    def mount(system):
        if system == "zarrfs":
            return mounter.zarrfs("peer-zarrfs", f"s3://{s3server.BUCKET}/{dataset.name}/sharded", ["--read-only"])
        if system.startswith("rclone"):
            return mounter.rclone(system, f"{dataset.name}/plain", system.split("-")[1])
        return mounter.s3fs(system, f"{dataset.name}/plain")

    for repeat in range(repeats):
        for system in systems:
            r = out[system]
            requests = {}
            try:
                with mount(system) as m:
                    with Counted(server) as c:
                        seconds, listed = timed(find_files, m.mountpoint)
                    check(len(listed) == len(rel_paths), f"{system}: find listed {len(listed)} files, "
                                                         f"expected {len(rel_paths)}")
                    r["list"].append(seconds)
                    requests["list"] = c.delta
                    paths = [f"{m.mountpoint}/{p}" for p in rel_paths]
                    with Counted(server) as c:
                        r["stat"].append(timed(stat_all, paths)[0])
                    requests["stat"] = c.delta
                    with Counted(server) as c:
                        r["cat cold"].append(timed(cat_all, m.mountpoint, listing)[0])
                    requests["cat cold"] = c.delta
            except (Exception, SystemExit) as error:  # one peer failing does not lose the others
                r.setdefault("errors", []).append(str(error)[-500:])
                log(f"{dataset.name} {system}: FAILED {error}")
                continue
            finally:
                r["requests"].append(requests)
            log(f"{dataset.name} {system} {repeat + 1}/{repeats}: list {r['list'][-1]:.2f} s, stat "
                f"{r['stat'][-1]:.2f} s, cat cold {r['cat cold'][-1]:.2f} s, {requests} (load {load_average()})")
    return out


def step_write(server: Seaweed, mounter: Mounter, dataset: Dataset, repeats: int) -> dict:
    """zarr-python 2 writes D1 through a fresh zarrfs S3 mount (--view v2) under a new prefix,
    until `zarrfs umount` returns (every shard PUT); vs obstore PUTting the plain chunk files
    (read from the page cache) from 16 threads."""
    import obstore

    npy = random_source()
    store = server.store()
    plain = [(rel, dataset.plain / rel) for rel in files_of(dataset.plain)]
    out = {"obstore": [], "zarrfs": [], "obstore requests": [], "zarrfs requests": [], "zarrfs write": [],
           "zarrfs flush": []}
    for repeat in range(repeats):
        prefix = f"write-{repeat}"
        warm_files([dataset.plain])

        def put(item):
            rel, path = item
            obstore.put(store, f"{prefix}/plain/{rel}", path.read_bytes(), use_multipart=False)
            return 1

        with Counted(server) as c:
            seconds, _ = timed(parallel, put, plain)
        out["obstore"].append(seconds)
        out["obstore requests"].append(c.delta)
        warm_files([npy])
        m = mounter.zarrfs("write", f"s3://{s3server.BUCKET}/{prefix}/zarrfs", ["--view", "v2"])
        try:
            with Counted(server) as c:
                w = zarr_io.write_array(m.mountpoint / "data.zarr", npy, dataset.chunk, 2048)
                problem = unmount_zarrfs(m.mountpoint)
                done = time.monotonic()
        finally:
            m.unmount()
        check(problem is None, f"zarrfs S3 write: {problem}")
        objects = sum(len(batch) for batch in obstore.list(store, f"{prefix}/zarrfs"))
        out["zarrfs"].append(done - w["start"])
        out["zarrfs write"].append(w["end"] - w["start"])
        out["zarrfs flush"].append(done - w["end"])
        out["zarrfs requests"].append(c.delta)
        out.setdefault("zarrfs objects", []).append(objects)
        log(f"{dataset.name} write {repeat + 1}/{repeats}: obstore {out['obstore'][-1]:.1f} s, zarrfs "
            f"{out['zarrfs'][-1]:.1f} s ({objects} objects) {c.delta} (load {load_average()})")
    return out


# -- the report ----------------------------------------------------------------------------

def med(values) -> float | None:
    return report.median(values)


def render(results: dict) -> str:
    fmt = report.fmt
    lines = [f"zarrfs on S3 (SeaweedFS {results['seaweedfs']}, local), commit {results['commit']}"
             + (f" with WHOLE_CACHE_BYTES = {results['whole_cache_mib']} MiB (experiment)"
                if results.get("whole_cache_mib") else "") + ", "
             f"{os.cpu_count()} cores, load {results['load_before']} before, {results['load_after']} after; "
             f"median of {results['repeats']}"]
    req = results.get("requests", {})
    for name, r in req.items():
        lines.append("")
        lines.append(f"requests per chunk read ({name}; counted at the server):")
        for label in ("cold", "warm", "cat pass", "cat pass again"):
            if label in r:
                lines.append(f"  {label:15} {r[label]['per_chunk']:.3f}  ({r[label]['chunks']} chunks: "
                             f"{r[label]['requests']})")
    for name, c in results.get("cat", {}).items():
        local, s3 = med(c["local"]), med(c["s3"])
        lines.append("")
        lines.append(f"cold cat of every {name} chunk: local-directory mount {fmt(local, '.2f')} s, S3 mount "
                     f"{fmt(s3, '.2f')} s; S3 speed / local speed {fmt(report.ratio(local, s3), '.2f')} "
                     f"(target >= 0.5); S3 requests {c['s3 requests'][0]}")
    for name, c in results.get("concurrent", {}).items():
        o, z = med(c["obstore"]), med(c["zarrfs"])
        lines.append("")
        lines.append(f"16 readers, every {name} chunk once: raw obstore ranged GETs {fmt(o, '.2f')} s, zarrfs S3 "
                     f"mount {fmt(z, '.2f')} s; zarrfs speed / obstore speed {fmt(report.ratio(o, z), '.2f')} "
                     f"(target >= 0.7); zarrfs requests {c['zarrfs requests'][0]}, obstore {c['obstore requests'][0]}")
    for name, p in results.get("peers", {}).items():
        systems = list(p)
        lines.append("")
        lines.append(f"{name}: zarrfs (sharded store) vs rclone mount and s3fs (plain chunk files), same server; "
                     f"seconds, fresh mount each")
        rows = [[step, *(fmt(med(p[s][step]), ".2f") for s in systems)] for step in ("list", "stat", "cat cold")]
        for step in ("list", "stat", "cat cold"):
            rows.append([f"{step} requests", *(str(sum((p[s]["requests"][0].get(step) or {}).values()))
                                               if p[s]["requests"] else "-" for s in systems)])
        lines.append(report.table(["", *systems], rows))
        rows = [[step, *(fmt(report.ratio(med(p[s][step]), med(p["zarrfs"][step])), ".2f") for s in systems[1:])]
                for step in ("list", "stat", "cat cold")]
        lines.append("")
        lines.append(report.table(["peer s / zarrfs s", *systems[1:]], rows))
    for name, w in results.get("write", {}).items():
        lines.append("")
        lines.append(f"{name} write: obstore PUT of the plain chunk files (16 threads) {fmt(med(w['obstore']), '.1f')} s, "
                     f"{w['obstore requests'][0]}; zarr-python 2 through the zarrfs S3 mount (v2 view, until umount "
                     f"returns) {fmt(med(w['zarrfs']), '.1f')} s (write {fmt(med(w['zarrfs write']), '.1f')} + flush "
                     f"{fmt(med(w['zarrfs flush']), '.1f')}), {w['zarrfs requests'][0]}, {w['zarrfs objects'][0]} "
                     f"objects; ratio {fmt(report.ratio(med(w['zarrfs']), med(w['obstore'])), '.2f')}")
    if results.get("write_error"):
        lines.append(f"\nwrite step failed: {results['write_error']}")
    for name, p in results.get("peers", {}).items():
        for s, r in p.items():
            for e in r.get("errors", []):
                lines.append(f"{name} {s} failed: {e}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="requests,cat,concurrent,peers,write")
    parser.add_argument("--peers", default=",".join(PEER_SYSTEMS))
    parser.add_argument("--concurrent-d1", action="store_true", help="the 16-reader step on D1 too")
    parser.add_argument("--whole-cache-mib", type=int,
                        help="experiment: run the S3 daemons with zarrfs.store.object.WHOLE_CACHE_BYTES = this many MiB")
    parser.add_argument("--smoke", action="store_true", help="d2s only, 1 repeat, no write (checks the bench)")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 1
    parts = args.parts.split(",")
    stop_on_sigterm()
    for tool in ("rclone", "s3fs"):
        if "peers" in parts and not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: `make bench-s3` installs it")
    if not (D1.sharded.exists() and D1.plain.exists()):
        D1.root.mkdir(parents=True, exist_ok=True)
        _write_arrays(D1)
    ensure_d2s()
    if "write" in parts:
        zarr_io.zarr2_python()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    version = subprocess.run([str(s3server.BIN / "weed"), "version"], capture_output=True, text=True).stdout.split()
    results = {"commit": commit, "seaweedfs": version[2] if len(version) > 2 else "?", "repeats": args.repeats,
               "parts": parts, "load_before": load_average(),
               "requests": {}, "cat": {}, "concurrent": {}, "peers": {}, "write": {}}
    workdir = Path(tempfile.mkdtemp(prefix="zarrfs-s3bench-"))
    server = None
    try:
        server = Seaweed(workdir / "seaweedfs")
        mounter = Mounter(server, workdir)
        mounter.whole_cache_mib = args.whole_cache_mib
        results["whole_cache_mib"] = args.whole_cache_mib
        datasets = (D2S,) if args.smoke else (D1,) if parts == ["cat"] else (D1, D2S)
        big = datasets[0] if args.smoke else D1
        results["upload_seconds"] = {d.name: upload(server, d) for d in datasets}
        for dataset in datasets:
            warm_files([dataset.sharded, dataset.plain])
        if "requests" in parts:
            for d in datasets:
                results["requests"][d.name] = step_requests(server, mounter, d, workdir)
        if "cat" in parts:
            results["cat"][big.name] = step_cat(server, mounter, big, workdir, args.repeats)
        if "concurrent" in parts:
            for d in ([D2S] if args.smoke or not args.concurrent_d1 else [D2S, D1]):
                results["concurrent"][d.name] = step_concurrent(server, mounter, d, args.repeats)
        if "peers" in parts:
            results["peers"][big.name] = step_peers(server, mounter, big, workdir, args.repeats, args.peers.split(","))
        if "write" in parts and not args.smoke:
            try:
                results["write"]["d1"] = step_write(server, mounter, D1, 1)
            except (Exception, SystemExit) as error:
                results["write_error"] = str(error)[-2000:]
                log(f"write FAILED: {error}")
    finally:
        unmount_everything()
        if server is not None:
            server.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False)
        results["load_after"] = load_average()
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"s3-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=1))
        log(f"raw results: {path.relative_to(REPO)}")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
