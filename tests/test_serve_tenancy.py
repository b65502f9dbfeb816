"""Tenancy of `dfscan serve`: a key sees and cancels only its own scans, an admin key every scan, and the
operations endpoints are for admin keys (or on a bind of their own). The real server process, real SQLite and
PostgreSQL, real images and a real ONNX model.

A second key used to read every scan of the database by id: another key's roots and result paths, scans
started from the command line (outside the server's roots) and the fleet's, and could cancel them all.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from dfscan import db
from dfscan.cli import main
from tests._cluster import TcpProxy, free_port, wait_for
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests.test_serve import Server, _start

OPS = ("/metrics", "/openapi.json", "/docs")


def _key(db_url: str, name: str, *role: str) -> str:
    res = CliRunner().invoke(main, ["api-key", "create", "--name", name, "--db", db_url, "--json", *role],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["token"]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


def _cli_scan(folder: Path, model: Path, db_url: str) -> int:
    res = CliRunner().invoke(main, ["scan", str(folder), "--model", str(model), "--db", db_url, "--json",
                                    "--runtime", "onnxruntime", "--decoder", "pillow", "--no-progress"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["scan_id"]


def _running_fleet_scan(db_url: str) -> int:
    """A scan as the fleet producer or the schedule registers it: no key, still running."""
    engine = db.make_engine(db_url)
    try:
        with db.session_factory(engine).begin() as session:
            model_id = db.get_or_create_model(session, sha256="f" * 64, name="nightly", path="/m", info={})
            return db.create_scan(session, name="nightly", roots=["/srv/nightly"], model_id=model_id,
                                  threshold=0.5, settings={})
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
def test_a_key_sees_and_cancels_only_its_own_scans(db_url: str, tiny_onnx_model: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    allowed = tmp_path / "storage"
    write_jpegs(allowed / "alice", 3)
    private = tmp_path / "private"  # outside --roots: scanned from the command line
    write_jpegs(private, 2)
    cli_scan = _cli_scan(private, tiny_onnx_model, db_url)
    nightly = _running_fleet_scan(db_url)
    alice, bob = _key(db_url, "alice"), _key(db_url, "bob", "--role", "scanner")
    admin = _key(db_url, "ops", "--role", "admin")
    server = _start(tiny_onnx_model, db_url, allowed, tmp_path)
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        r = client.post("/v1/scans", headers=_auth(alice), json={"roots": [str(allowed / "alice")]})
        assert r.status_code == 202, r.text
        mine = r.json()["scan_id"]
        wait_for(lambda: client.get(f"/v1/scans/{mine}", headers=_auth(alice)).json()["status"] != "running",
                 60, "alice's scan to end")
        rows = client.get(f"/v1/scans/{mine}/results", headers=_auth(alice)).json()["results"]
        assert len(rows) == 3

        unknown = client.get("/v1/scans/999999", headers=_auth(bob))
        assert unknown.status_code == 404
        for scan_id in (mine, cli_scan, nightly):
            for method, path in (("GET", f"/v1/scans/{scan_id}"), ("GET", f"/v1/scans/{scan_id}/results"),
                                 ("POST", f"/v1/scans/{scan_id}/cancel")):
                r = client.request(method, path, headers=_auth(bob))
                # Another key's scan answers as an unknown id does: 404, nothing of the scan in the body.
                assert r.status_code == 404, (path, r.text)
                assert r.json() == {"detail": f"scan {scan_id} does not exist"}, path
        # alice sees her own scan only: not the command line's, not the fleet's
        for scan_id in (cli_scan, nightly):
            assert client.get(f"/v1/scans/{scan_id}", headers=_auth(alice)).status_code == 404
            assert client.post(f"/v1/scans/{scan_id}/cancel", headers=_auth(alice)).status_code == 404
        assert client.get(f"/v1/scans/{nightly}", headers=_auth(admin)).json()["status"] == "running"

        # an admin key sees every scan, the command line's included, and may cancel the fleet's
        for scan_id in (mine, cli_scan):
            assert client.get(f"/v1/scans/{scan_id}", headers=_auth(admin)).status_code == 200
        paths = [row["path"] for row in
                 client.get(f"/v1/scans/{cli_scan}/results", headers=_auth(admin)).json()["results"]]
        assert len(paths) == 2 and all(p.startswith(str(private)) for p in paths)
        r = client.post(f"/v1/scans/{nightly}/cancel", headers=_auth(admin))
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

        _check_ops_need_an_admin_key(client, alice, admin)
        _check_readyz_says_only_ready(client)
    finally:
        client.close()
        _stop(server)


def _check_ops_need_an_admin_key(client: httpx.Client, scanner: str, admin: str) -> None:
    for path in OPS:
        assert client.get(path).status_code == 401, path
        refused = client.get(path, headers=_auth(scanner))
        assert refused.status_code == 403 and "admin" in refused.json()["detail"], path
        assert client.get(path, headers=_auth(admin)).status_code == 200, path


def _check_readyz_says_only_ready(client: httpx.Client) -> None:
    assert client.get("/readyz").json() == {"ready": True, "model": True, "database": True}


def test_ops_bind_serves_metrics_and_the_document_apart(sqlite_url: str, tiny_onnx_model: Path,  # noqa: F811
                                                        tmp_path: Path) -> None:
    """With --ops-bind the API's bind serves no operations endpoint; the ops bind serves them without a key."""
    admin = _key(sqlite_url, "ops", "--role", "admin")
    ops_port = free_port()
    server = _start(tiny_onnx_model, sqlite_url, tmp_path, tmp_path, "--ops-bind", f"127.0.0.1:{ops_port}")
    try:
        for path in OPS:
            assert httpx.get(server.url + path, headers=_auth(admin)).status_code == 404, path
            assert httpx.get(f"http://127.0.0.1:{ops_port}{path}").status_code == 200, path
        document = httpx.get(f"http://127.0.0.1:{ops_port}/openapi.json").json()
        assert "/v1/scans/{scan_id}" in document["paths"]
        assert "dfscan_serve_requests_total" in httpx.get(f"http://127.0.0.1:{ops_port}/metrics").text
    finally:
        _stop(server)


@pytest.mark.postgres
def test_readyz_does_not_answer_the_database_error(pg_url: str, tiny_onnx_model: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """The database goes away: /readyz says 503, not ready, and nothing of the driver's error (host, user)."""
    proxy = TcpProxy(5432)
    url = pg_url.replace(":5432/", f":{proxy.port}/")
    server = _start(tiny_onnx_model, url, tmp_path, tmp_path)
    try:
        proxy.cut()
        r = wait_for(lambda: (r := httpx.get(server.url + "/readyz", timeout=30)).status_code == 503 and r,
                     60, "readyz to see the database gone")
        assert r.json() == {"ready": False, "model": True, "database": False}
        assert "not ready: the database does not answer" in server.log.read_text()
    finally:
        _stop(server)
        proxy.close()


def test_api_key_roles_on_the_command_line(sqlite_url: str) -> None:
    res = CliRunner().invoke(main, ["api-key", "create", "--name", "x", "--role", "root", "--db", sqlite_url])
    assert res.exit_code == 2 and "'root' is not one of 'scanner', 'reviewer', 'admin'" in res.output
    _key(sqlite_url, "plain")
    _key(sqlite_url, "ops", "--role", "admin")
    res = CliRunner().invoke(main, ["api-key", "list", "--db", sqlite_url, "--json"], catch_exceptions=False)
    assert [(k["name"], k["role"]) for k in json.loads(res.output)] == [("plain", "scanner"), ("ops", "admin")]


@pytest.mark.parametrize("bind", ["9100", "localhost:", "127.0.0.1:70000", ":9100"])
def test_a_bad_ops_bind_is_one_line_not_a_traceback(bind: str, sqlite_url: str) -> None:
    res = CliRunner().invoke(main, ["serve", "--db", sqlite_url, "--model", "/nonexistent.onnx", "--ops-bind", bind])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "bind address must be HOST:PORT with a port between 1 and 65535" in res.output, res.output


def test_migration_0013_down_and_up_keeps_scans_and_keys(db_engine: Engine) -> None:
    """Keys made before roles are scanners; scans made before owners have none (admin keys only see them);
    no chunk or result row is lost on the way down and up (SQLite: the columns are added in place)."""
    from dfscan.db.api_keys import create_api_key, set_scan_owner

    with db.session_factory(db_engine).begin() as session:
        model_id = db.get_or_create_model(session, sha256="a" * 64, name="m", path="/m", info={})
        scan_id = db.create_scan(session, name="s", roots=[], model_id=model_id, threshold=0.5, settings={})
        db.add_chunk(session, scan_id=scan_id, seq=0, paths=["/x.jpg"])
        admin = create_api_key(session, "ops", "admin")
        set_scan_owner(session, scan_id, admin.info.id)
    db.downgrade(db_engine, "0012")
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM chunks")).scalar() == 1
    db.upgrade(db_engine, "0013")
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT role FROM api_keys")).scalars().all() == ["scanner"]
        assert conn.execute(text("SELECT api_key_id FROM scans")).scalars().all() == [None]
        assert conn.execute(text("SELECT count(*) FROM chunks")).scalar() == 1
    db.upgrade(db_engine)
