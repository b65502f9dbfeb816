"""`dfscan serve` under load: the real server process with 50 scans and 64 uploads in flight at once.

Uploads are held in flight by sending their headers and the start of their
bodies and waiting (the server holds an upload slot from its headers on);
scans are 50 folders of real JPEGs asked for at once. Throughout, /healthz is
asked every 50 ms and must always answer (its latency is printed and checked
generously against the issue's 100 ms goal); uploads past a key's limit, or
the server's, get 429 with Retry-After; scans past ``--max-scans`` say
``queued`` and then complete with every row; and a made-up HTTP method adds no
metric series. Twenty whole-scan result streams whose clients stop reading
leave the database pool to other requests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from tests._cluster import DFSCAN, free_port, wait_for
from tests._images import write_jpegs
from tests._load import HealthWatch, HeldUpload, percentiles, rss_mb
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

N_SCANS = 50
FILES_PER_SCAN = 4
PER_KEY = 2
N_KEYS = 32  # x PER_KEY uploads each: 64 in flight, the server's --max-uploads
MAX_SCANS = 2


def _key(db_url: str, name: str, *role: str) -> str:
    res = CliRunner().invoke(main, ["api-key", "create", "--name", name, "--db", db_url, "--json", *role],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["token"]


def _serve(model: Path, db_url: str, roots: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [DFSCAN, "serve", "--model", str(model), "--db", db_url, "--port", str(port), "--roots", str(roots),
         "--runtime", "onnxruntime", "--decoder", "pillow", "--request-timeout", "300",
         "--max-scans", str(MAX_SCANS), "--max-uploads-per-key", str(PER_KEY), "--max-uploads", str(N_KEYS * PER_KEY)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "DFSCAN_THREADS": "1"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        return httpx.get(url + "/readyz", timeout=2).status_code == 200

    wait_for(ready, 90, "the server to be ready")
    return proc, url


def _metric(url: str, admin: str, name: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=10).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.mark.timeout(600)
def test_serve_holds_under_load(db_url: str, tiny_onnx_model: Path, tmp_path: Path) -> None:  # noqa: F811
    storage = tmp_path / "storage"
    for i in range(N_SCANS):
        write_jpegs(storage / f"s{i:02d}", FILES_PER_SCAN, start=i * FILES_PER_SCAN)
    keys = [_key(db_url, f"k{i}") for i in range(N_KEYS)]
    admin = _key(db_url, "ops", "--role", "admin")
    proc, url = _serve(tiny_onnx_model, db_url, storage, tmp_path / "serve.log")
    health = HealthWatch(url)
    try:
        held = _hold_uploads(url, keys, admin)
        scan_ids = _start_scans(url, keys, storage)
        cancelled = _cancel_a_queued_scan(url, scan_ids)
        print(f"server RSS with {N_SCANS} scans and {len(held)} uploads in flight: {rss_mb(proc.pid):.0f} MB")
        with ThreadPoolExecutor(len(held)) as pool:
            answers = list(pool.map(HeldUpload.finish, held))
        for code, _, body in answers:
            assert code == 200 and json.loads(body)["results"][0]["status"] == "ok", (code, body[:300])
        _check_scans(url, {k: v for k, v in scan_ids.items() if k != cancelled})
        _check_metric_labels(url, admin)
    finally:
        watched = health.stop()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    answered = [latency for _, latency in watched if latency is not None]
    assert answered and len(answered) == len(watched), f"{len(watched) - len(answered)} /healthz went unanswered"
    print(f"/healthz under load: {percentiles(answered)}")
    assert max(answered) < 1.0  # the goal is 100 ms; a loaded, shared 2-core test machine gets slack


def _hold_uploads(url: str, keys: list[str], admin: str) -> list[HeldUpload]:
    """PER_KEY uploads of every key held in flight; one more of a key, or of anyone past the total, is a 429."""
    held = [HeldUpload(url, key, seed) for seed, key in enumerate(k for k in keys for _ in range(PER_KEY))]
    wait_for(lambda: _metric(url, admin, "dfscan_serve_uploads_in_flight") == len(held), 60,
             "every held upload to be in flight")
    for token, why in [(keys[0], "this API key already has"), (admin, "uploads in flight")]:
        code, headers, body = HeldUpload(url, token, 999).answer()
        assert code == 429 and int(headers["retry-after"]) >= 1, (code, body)
        assert why in json.loads(body)["detail"]
    return held


def _start_scans(url: str, keys: list[str], storage: Path) -> dict[int, str]:
    """N_SCANS scans asked for at once, each answered 202 at once; those past MAX_SCANS are queued."""
    client = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=N_SCANS))

    def start(i: int) -> tuple[int, str, dict]:
        key = keys[i % len(keys)]
        r = client.post("/v1/scans", headers={"Authorization": f"Bearer {key}"},
                        json={"roots": [str(storage / f"s{i:02d}")]})
        assert r.status_code == 202, r.text
        return r.json()["scan_id"], key, r.json()

    with client, ThreadPoolExecutor(N_SCANS) as pool:
        started = list(pool.map(start, range(N_SCANS)))
    queued = [answer for _, _, answer in started if answer["status"] == "queued"]
    assert queued and all(a["queue_position"] >= 1 for a in queued), [a["status"] for _, _, a in started]
    return {scan_id: key for scan_id, key, _ in started}


def _cancel_a_queued_scan(url: str, scan_ids: dict[int, str]) -> int:
    """A scan far back in the queue, cancelled: it leaves the queue and ends without running."""
    seen = []
    for scan_id, key in reversed(scan_ids.items()):
        auth = {"Authorization": f"Bearer {key}"}
        st = httpx.get(f"{url}/v1/scans/{scan_id}", headers=auth, timeout=30).json()
        seen.append((scan_id, st["status"], st.get("queue_position")))
        if st["status"] == "queued" and st["queue_position"] >= 2:  # two scans end before it could start
            answer = httpx.post(f"{url}/v1/scans/{scan_id}/cancel", headers=auth, timeout=30).json()
            assert answer == {"scan_id": scan_id, "cancelled": True, "status": "cancelled"}, answer
            st = httpx.get(f"{url}/v1/scans/{scan_id}", headers=auth, timeout=30).json()
            assert (st["status"], st["total"], "queue_position" in st) == ("cancelled", 0, False), st
            return scan_id
    raise AssertionError(f"no scan was still far back in the queue: {seen}")


def _check_scans(url: str, scan_ids: dict[int, str]) -> None:
    """Every scan ends completed with every file's row, streamed in full and paged."""
    with httpx.Client(base_url=url, timeout=60) as client:
        def ended(scan_id: int, key: str) -> dict | None:
            st = client.get(f"/v1/scans/{scan_id}", headers={"Authorization": f"Bearer {key}"}).json()
            return st if st["status"] not in ("queued", "running") else None

        for scan_id, key in scan_ids.items():
            auth = {"Authorization": f"Bearer {key}"}
            final = wait_for(lambda: ended(scan_id, key), 300, f"scan {scan_id} to end")
            assert (final["status"], final["total"], final["errors"]) == ("completed", FILES_PER_SCAN, 0), final
            rows = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"limit": 0}).json()
            assert rows["count"] == FILES_PER_SCAN and rows["next_cursor"] is None
            page = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"limit": 3}).json()
            assert page["count"] == 3 and page["next_cursor"]
            csv_all = client.get(f"/v1/scans/{scan_id}/results", headers=auth, params={"limit": 0, "format": "csv"})
            assert len(csv_all.text.splitlines()) == FILES_PER_SCAN + 1


def _check_metric_labels(url: str, admin: str) -> None:
    """A made-up method is counted as ``other``: no client can add a series."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"FOO /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 ")
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=10).text
    assert 'method="FOO"' not in text and 'method="other"' in text


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--max-scans", "0"], {}, "max scans must be between 1 and 64, got 0 (--max-scans, DFSCAN_MAX_SCANS)"),
    ([], {"DFSCAN_MAX_UPLOADS_PER_KEY": "0"}, "max uploads per key must be between 1 and 10000, got 0"),
    ([], {"DFSCAN_MAX_CONNECTIONS": "many"}, "'many' is not a valid integer"),
])
def test_serve_refuses_bad_limits_with_a_message(args: list[str], env: dict[str, str], message: str,
                                                  tiny_onnx_model: Path) -> None:  # noqa: F811
    res = CliRunner().invoke(main, ["serve", "--model", str(tiny_onnx_model), *args], env=env)
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output, res.output


N_STREAMS = 20  # more than the database pool's 5 + 10 connections
STREAM_ROWS = 40_000  # a whole-scan stream far longer than the socket buffers: the server must wait on the client


def _stalled_stream(url: str, token: str, scan_id: int) -> socket.socket:
    """``limit=0``: every row, streamed to a client that reads the first bytes and then nothing more."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/scans/{scan_id}/results?limit=0 HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.timeout(300)
def test_result_streams_hold_no_database_connection_while_the_client_reads(
        sqlite_url: str, tiny_onnx_model: Path, tmp_path: Path) -> None:  # noqa: F811
    """Clients that stop reading whole-scan streams leave the database to everyone else's requests."""
    from datetime import datetime, timezone

    from dfscan import db
    from dfscan.db.api_keys import set_scan_owner

    res = CliRunner().invoke(main, ["api-key", "create", "--name", "reader", "--db", sqlite_url, "--json"],
                             catch_exceptions=False)
    key = json.loads(res.output)
    engine = db.make_engine(sqlite_url)
    try:
        sessions = db.session_factory(engine)
        now = datetime.now(timezone.utc)
        with sessions.begin() as s:
            model_id = db.get_or_create_model(s, sha256="e" * 64, name="m", path="/m.onnx", info={})
            scan_id = db.create_scan(s, name="big", roots=["/archive"], model_id=model_id, threshold=0.5, settings={})
            set_scan_owner(s, scan_id, key["id"])
            db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[
                db.ResultRow(f"/archive/folder-{i // 1000:03d}/image-{i:06d}.jpg", 1, 0.0, "ok", "real", 0.25, 0.5,
                             None, None, now) for i in range(STREAM_ROWS)])
    finally:
        engine.dispose()
    (tmp_path / "storage").mkdir()
    proc, url = _serve(tiny_onnx_model, sqlite_url, tmp_path / "storage", tmp_path / "serve.log")
    streams: list[socket.socket] = []
    try:
        streams = [_stalled_stream(url, key["token"], scan_id) for _ in range(N_STREAMS)]
        auth = {"Authorization": f"Bearer {key['token']}"}
        # Each stalled stream holding a pooled connection would leave this waiting for the pool's 30 s timeout.
        answer = httpx.get(f"{url}/v1/scans/{scan_id}", headers=auth, timeout=20)
        assert answer.status_code == 200 and answer.json()["total"] == STREAM_ROWS
        for sock in streams:
            sock.close()
        streams = []
        full = httpx.get(f"{url}/v1/scans/{scan_id}/results", params={"limit": 0, "format": "csv"}, headers=auth,
                         timeout=120)
        assert full.status_code == 200 and len(full.text.splitlines()) == STREAM_ROWS + 1  # the header line
    finally:
        for sock in streams:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
