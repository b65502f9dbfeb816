"""`dfscan serve` end to end: the real server process on a free port, spoken to over HTTP.

A tiny real ONNX model, real JPEG files, real SQLite and PostgreSQL; the
callback receiver is a small ``http.server`` in this test on 127.0.0.1. Each
backend gets one server and goes through every endpoint and refusal in turn
(starting the server is the slow part).
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from tests._cluster import DFSCAN, free_port, wait_for
from tests._images import jpeg_bytes, write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

N_IMAGES = 6


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).fail_first > 0:  # the first delivery fails: the server must retry
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


def _start(model: Path, db_url: str, roots: Path, tmp: Path, *extra: str) -> Server:
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "DFSCAN_THREADS": "1"}
    proc = subprocess.Popen(
        [DFSCAN, "serve", "--model", str(model), "--db", db_url, "--port", str(port), "--roots", str(roots),
         "--runtime", "onnxruntime", "--decoder", "pillow", "--max-upload-bytes", "400000", "--max-upload-files", "8",
         "--request-timeout", "2", "--max-batch-delay-ms", "250", "--callback-allow", "127.0.0.1", *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 60, "the server to be ready")
    return Server(proc, url, log)


def _files(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in sorted(folder.iterdir())]


@dataclass(frozen=True)
class _Served:
    """One running server and what the end-to-end walk through it shares from step to step."""

    server: Server
    client: httpx.Client
    receiver: http.server.ThreadingHTTPServer
    db_url: str
    token: str
    secret: str
    allowed: Path  # the server's --roots
    imgs: Path  # under allowed: N_IMAGES JPEGs, broken.jpg and empty.jpg
    outside: Path  # not under allowed
    stored: dict[str, dict]  # what `dfscan scan` stored for imgs, by file name

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.mark.timeout(180)
def test_serve_end_to_end(db_url: str, tiny_onnx_model: Path, tmp_path: Path) -> None:  # noqa: F811
    """Every endpoint and refusal in turn, in one server per backend; the steps build on each other (request
    counts, the revoked key, the shutdown last), so they are steps of one test rather than tests of their own."""
    allowed = tmp_path / "storage"
    imgs = allowed / "imgs"
    write_jpegs(imgs, N_IMAGES)
    (imgs / "broken.jpg").write_bytes(b"this is not a jpeg")
    (imgs / "empty.jpg").write_bytes(b"")
    outside = tmp_path / "outside"
    write_jpegs(outside, 1)
    created = json.loads(_cli("api-key", "create", "--name", "tests", "--role", "admin", "--db", db_url, "--json"))
    stored = _scan_reference(imgs, tiny_onnx_model, db_url)

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    _Receiver.fail_first = 1
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    server = _start(tiny_onnx_model, db_url, allowed, tmp_path)
    client = httpx.Client(base_url=server.url, timeout=30)
    served = _Served(server=server, client=client, receiver=receiver, db_url=db_url, token=created["token"],
                     secret=created["signing_secret"], allowed=allowed, imgs=imgs, outside=outside, stored=stored)
    try:
        _check_access(served)
        _check_scoring(served)
        _check_refusals(served)
        _check_scan_roots(served)
        scan_id = _check_scan_through_the_api(served)
        _check_callback(served, scan_id)
        _check_cancel(served)
        _check_key_counts_and_revocation(served, scan_id)
        _check_graceful_shutdown(served)
    finally:
        client.close()
        receiver.shutdown()
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


def _scan_reference(imgs: Path, model: Path, db_url: str) -> dict[str, dict]:
    """What `dfscan scan` stores for the same files and model: the reference, by file name."""
    scanned = json.loads(_cli("scan", str(imgs), "--model", str(model), "--db", db_url, "--json",
                              "--runtime", "onnxruntime", "--decoder", "pillow", "--no-progress"))
    stored = {Path(r["path"]).name: r for r in json.loads(
        _cli("results", "--db", db_url, "--scan", str(scanned["scan_id"]), "--format", "json"))}
    assert len(stored) == N_IMAGES + 2
    return stored


def _check_access(s: _Served) -> None:
    """Every /v1 route refuses a missing or wrong key; health is open, the document and docs need an admin key."""
    client = s.client
    for method, path in [("POST", "/v1/score"), ("POST", "/v1/scans"), ("GET", "/v1/scans/1"),
                         ("GET", "/v1/scans/1/results"), ("POST", "/v1/scans/1/cancel")]:
        assert client.request(method, path).status_code == 401, path
        bad = client.request(method, path, headers={"Authorization": "Bearer dfs_nope_nope"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer", path
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json", headers=s.auth).json()
    assert {"/v1/score", "/v1/scans", "/v1/scans/{scan_id}", "/v1/scans/{scan_id}/results",
            "/v1/scans/{scan_id}/cancel"} <= set(spec["paths"])
    assert client.get("/docs", headers=s.auth).status_code == 200


def _check_scoring(s: _Served) -> None:
    """The p_fake `dfscan scan` stored, bit for bit; bad files are per-file errors; single requests batch."""
    client, auth, stored = s.client, s.auth, s.stored
    res = client.post("/v1/score", headers=auth, files=_files(s.imgs))
    assert res.status_code == 200, res.text
    scored = {r["name"]: r for r in res.json()["results"]}
    assert set(scored) == set(stored)
    for name, row in stored.items():
        got = scored[name]
        assert (got["status"], got["label"], got["p_fake"], got["confidence"]) == \
            (row["status"], row["label"], row["p_fake"], row["confidence"]), name
    assert scored["broken.jpg"]["error_code"] == "not-image"
    assert scored["empty.jpg"]["error_code"] == "empty"

    # concurrent single-image requests are batched together, and still give the same p_fake
    one_each = sorted(p for p in s.imgs.iterdir() if p.name.startswith("img_"))
    with ThreadPoolExecutor(len(one_each)) as pool:
        singles = list(pool.map(lambda p: client.post("/v1/score", headers=auth,
                                                      files={"file": (p.name, p.read_bytes())}), one_each))
    for p, r in zip(one_each, singles):
        assert r.status_code == 200 and r.json()["results"][0]["p_fake"] == stored[p.name]["p_fake"]
    metrics = client.get("/metrics", headers=auth).text
    batches = _metric(metrics, "dfscan_serve_batch_size_count")
    images = _metric(metrics, "dfscan_serve_batch_size_sum")
    assert images == 2 * N_IMAGES and batches < 1 + N_IMAGES, metrics  # some single requests shared a batch
    assert 'dfscan_serve_requests_total{method="POST",route="/v1/score",status="401"}' in metrics


def _check_refusals(s: _Served) -> None:
    """Too large (413), too many files, not multipart, cut short (400), slow client (408)."""
    client, auth = s.client, s.auth
    big = [("files", ("big.jpg", b"\xff" * 500_000, "image/jpeg"))]
    assert client.post("/v1/score", headers=auth, files=big).status_code == 413
    many = [("files", (f"{i}.jpg", jpeg_bytes(i, (32, 32)), "image/jpeg")) for i in range(9)]
    r = client.post("/v1/score", headers=auth, files=many)
    assert r.status_code == 400 and "files" in r.json()["detail"].lower()
    r = client.post("/v1/score", headers={**auth, "Content-Type": "image/jpeg"}, content=b"\xff\xd8")
    assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]
    cut = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
           b"Content-Type: image/jpeg\r\n\r\n" + jpeg_bytes(1, (32, 32))[:200])
    r = client.post("/v1/score", headers={**auth, "Content-Type": "multipart/form-data; boundary=XyZ"}, content=cut)
    assert r.status_code == 400, r.text
    r = client.post("/v1/score", headers={**auth, "Content-Type": "multipart/form-data"}, content=b"--x--")
    assert r.status_code == 400, r.text
    assert _slow_client(s.server.url, s.token) == 408


def _check_scan_roots(s: _Served) -> None:
    """Scans of the allowed prefixes only; a relative root fails the documented schema (422)."""
    client, auth, allowed, outside = s.client, s.auth, s.allowed, s.outside
    for roots, code in [(["/etc"], 403), ([str(outside)], 403), ([str(allowed / ".." / "outside")], 403),
                        ([str(allowed / "missing")], 400), (["relative/path"], 422), ([], 422)]:
        r = client.post("/v1/scans", headers=auth, json={"roots": roots})
        assert r.status_code == code, (roots, r.text)
    r = client.post("/v1/scans", headers={**auth, "Content-Type": "application/json"}, content=b'{"roots": [')
    assert r.status_code == 400 and "malformed" in r.json()["detail"]
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    assert client.post("/v1/scans", headers=auth, json={"roots": [str(allowed / "escape")]}).status_code == 403
    assert client.get("/v1/scans/999999", headers=auth).status_code == 404


def _check_scan_through_the_api(s: _Served) -> int:
    """A scan through the API: 202, progress, results paged with a cursor and filtered; returns its id."""
    client, auth = s.client, s.auth
    callback = f"http://127.0.0.1:{s.receiver.server_address[1]}/hook"
    r = client.post("/v1/scans", headers=auth, json={"roots": [str(s.imgs)], "name": "api", "callback_url": callback})
    assert r.status_code == 202, r.text
    scan_id = r.json()["scan_id"]
    final = wait_for(lambda: (st := client.get(f"/v1/scans/{scan_id}", headers=auth).json())["status"] != "running"
                     and st, 60, "the scan to end")
    assert (final["status"], final["total"], final["errors"]) == ("completed", N_IMAGES + 2, 2)
    assert {"images_per_s", "eta_s", "real", "fake", "walk_done"} <= set(final)
    pages, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params=params).json()
        pages.append(page["results"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    rows = {Path(r["path"]).name: r for p in pages for r in p}
    assert {n: r["p_fake"] for n, r in rows.items()} == {n: r["p_fake"] for n, r in s.stored.items()}
    only_errors = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"status": "error"}).json()
    assert sorted(Path(r["path"]).name for r in only_errors["results"]) == ["broken.jpg", "empty.jpg"]
    fakes = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"label": "fake", "min_p": 0.5})
    assert all(r["label"] == "fake" and r["p_fake"] >= 0.5 for r in fakes.json()["results"])
    csv_text = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"format": "csv", "limit": 0}).text
    assert csv_text.splitlines()[0].startswith("scan_id,path,status") and len(csv_text.splitlines()) == 9
    paged_csv = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"format": "csv", "limit": 5})
    assert len(paged_csv.text.splitlines()) == 6 and paged_csv.headers["x-next-cursor"]
    assert client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"cursor": "!!"}).status_code == 400
    return scan_id


def _check_callback(s: _Served, scan_id: int) -> None:
    """The scan's signed callback arrives, after one failed try."""
    wait_for(lambda: _Receiver.received, 30, "the callback (after one failed try)")
    headers, body = _Receiver.received[0]
    expected = "sha256=" + hmac.new(s.secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-dfscan-signature"], expected)
    event = json.loads(body)
    assert event["scan"]["scan_id"] == scan_id and event["scan"]["status"] == "completed"
    state = s.client.get(f"/v1/scans/{scan_id}", headers=s.auth).json()["callback"]
    assert state["attempts"] == 2 and state["delivered_at"] is not None


def _check_cancel(s: _Served) -> None:
    client, auth = s.client, s.auth
    r = client.post("/v1/scans", headers=auth, json={"roots": [str(s.allowed)]})
    cancelled_id = r.json()["scan_id"]
    c = client.post(f"/v1/scans/{cancelled_id}/cancel", headers=auth).json()
    end = wait_for(lambda: (st := client.get(f"/v1/scans/{cancelled_id}", headers=auth).json())["status"] != "running"
                   and st, 60, "the cancelled scan to end")
    assert end["status"] == ("cancelled" if c["cancelled"] else "completed")
    if not c["cancelled"]:  # too quick to cancel: then every file under the root, but not through the symlink
        assert end["total"] == N_IMAGES + 2
    assert client.post(f"/v1/scans/{cancelled_id}/cancel", headers=auth).json()["cancelled"] is False


def _check_key_counts_and_revocation(s: _Served, scan_id: int) -> None:
    """Each key's requests are counted; a revoked key is refused within a second or two."""
    listed = wait_for(lambda: [k for k in json.loads(_cli("api-key", "list", "--db", s.db_url, "--json"))
                               if k["requests"] >= 25], 10, "request counts")
    assert listed[0]["name"] == "tests"
    _cli("api-key", "revoke", "tests", "--db", s.db_url)
    wait_for(lambda: s.client.get(f"/v1/scans/{scan_id}", headers=s.auth).status_code == 401, 10, "the revocation")


def _check_graceful_shutdown(s: _Served) -> None:
    """SIGTERM while a request is arriving, and that request still gets its answer."""
    second = json.loads(_cli("api-key", "create", "--name", "late", "--db", s.db_url, "--json"))["token"]
    body = httpx.Request("POST", "http://x/", files=_files(s.imgs))
    payload = body.read()

    def trickle():
        yield payload[:100]
        time.sleep(1.0)
        yield payload[100:]

    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(s.client.post, "/v1/score", content=trickle(),
                           headers={"Authorization": f"Bearer {second}",
                                    "Content-Type": body.headers["Content-Type"]})
        time.sleep(0.4)
        s.server.proc.send_signal(signal.SIGTERM)
        answer = late.result()
    assert answer.status_code == 200 and len(answer.json()["results"]) == N_IMAGES + 2, answer.text
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is SIGTERM's.
    assert s.server.proc.wait(timeout=30) in (0, -signal.SIGTERM), s.server.log.read_text()
    assert "Application shutdown complete" in s.server.log.read_text()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _slow_client(url: str, token: str) -> int:
    """Send the headers and part of the body, then stall: the server must answer 408, not wait forever."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall((f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 5000\r\n\r\n--XyZ\r\n").encode())
        started = time.monotonic()
        head = s.recv(4096).decode()
        assert time.monotonic() - started < 10
        return int(head.split()[1])


def test_settings_refuse_bad_serve_values() -> None:
    from dfscan.core.settings import Settings, SettingsError, from_env

    with pytest.raises(SettingsError):
        Settings(serve_roots=("relative",))
    with pytest.raises(SettingsError):
        Settings(max_upload_bytes=0)
    assert from_env({"DFSCAN_SERVE_ROOTS": "/a:/b", "DFSCAN_SERVE_PORT": "9000"}).serve_roots == ("/a", "/b")


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_serve_sends_scans_to_the_fleet_with_a_broker(sqlite_url: str, redis_server, tiny_onnx_model: Path,  # noqa: F811
                                                       tmp_path: Path) -> None:
    """With --broker the scan's chunks are recorded and enqueued for workers (none run here), then cancelled."""
    import redis

    allowed = tmp_path / "storage"
    write_jpegs(allowed / "imgs", 5)
    token = json.loads(_cli("api-key", "create", "--name", "fleet", "--db", sqlite_url, "--json"))["token"]
    auth = {"Authorization": f"Bearer {token}"}
    broker = redis_server.url(0)
    server = _start(tiny_onnx_model, sqlite_url, allowed, tmp_path, "--broker", broker)
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=auth) as client:
            r = client.post("/v1/scans", json={"roots": [str(allowed)], "name": "fleet"})
            assert r.status_code == 202, r.text
            scan_id = r.json()["scan_id"]
            state = wait_for(lambda: (s := client.get(f"/v1/scans/{scan_id}").json())["walk_done"] and s, 30,
                             "the walk")
            assert (state["status"], state["images_total"], state["chunks_queued"], state["total"]) == \
                ("running", 5, 1, 0)
            queued = redis.Redis.from_url(broker).llen("dfscan")
            assert queued == 1  # one chunk message waits for a worker
            assert client.post(f"/v1/scans/{scan_id}/cancel").json() == \
                {"scan_id": scan_id, "cancelled": True, "status": "cancelled"}
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)


@pytest.mark.timeout(240)
def test_score_with_faces_on_gives_each_face_and_the_scans_verdict(sqlite_url: str, tiny_onnx_model: Path,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """With faces on, /v1/score returns the faces and the same image verdict `dfscan scan --faces on` stores."""
    from tests.test_faces import _write_inputs

    expected = _write_inputs(tmp_path / "imgs")
    for big in ("panorama.jpg",):  # the 20000-px panorama is the scan tests' business; uploads stay small here
        (tmp_path / "imgs" / big).unlink()
        expected.pop(big)
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db",
                                    sqlite_url, "--faces", "on", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).name: r for r in json.loads(_cli("results", "--db", sqlite_url, "--format", "json"))}
    token = json.loads(_cli("api-key", "create", "--name", "faces", "--db", sqlite_url, "--json"))["token"]
    server = _start(tiny_onnx_model, sqlite_url, tmp_path, tmp_path, "--faces", "on", "--max-upload-bytes",
                    "8000000")
    try:
        with httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
            r = client.post("/v1/score", files=_files(tmp_path / "imgs"))
            assert r.status_code == 200, r.text
            got = {x["name"]: x for x in r.json()["results"]}
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
    assert set(got) == set(expected)
    for name, (status, n_faces) in expected.items():
        assert got[name]["status"] == rows[name]["status"] == status, (name, got[name])
        if status == "ok":
            assert len(got[name]["faces"]) == n_faces
            assert got[name]["p_fake"] == rows[name]["p_fake"]
            assert got[name]["p_fake"] == max(f["p_fake"] for f in got[name]["faces"])
            assert all(f["w"] > 0 and f["h"] > 0 for f in got[name]["faces"])
        elif status == "no-face":
            assert got[name]["faces"] == [] and got[name]["p_fake"] is None
