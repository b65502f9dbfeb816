"""A review world for the review tests: the real `dfscan serve`, two teams' scans of real JPEGs, and keys.

Team "a" has a scanner key (alice) and a reviewer key (rita); team "b" a scanner key (bob). Each scanner
starts a scan through the API. Alice's folders hold a file whose name is HTML and two copies of one image
(the same bytes under two names); she scans them twice (``scan_a`` for the API tests, ``scan_c``, the same
files, for the browser's), so that neither sees the other's decisions.

One world per database kind serves both test modules (made on first use, stopped when pytest ends).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from tests._cluster import wait_for
from tests._images import write_jpegs
from tests.conftest import throwaway_pg_database
from tests.test_serve import Server, _start

HTML_NAME = "<img src=x onerror=alert(1)>.jpg"
SCAN_NAME = "<b>team a</b> & co"


@dataclass(frozen=True)
class World:
    server: Server
    db_url: str
    folder: Path
    tokens: dict[str, str]
    scan_a: int
    scan_b: int
    paths_a: list[str]
    scan_c: int
    folder_c: Path
    paths_c: list[str]

    @property
    def url(self) -> str:
        return self.server.url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_key(db_url: str, name: str, *args: str) -> str:
    res = CliRunner().invoke(main, ["api-key", "create", "--name", name, "--db", db_url, "--json", *args],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["token"]


def _scan(client: httpx.Client, token: str, root: Path, name: str) -> int:
    r = client.post("/v1/scans", headers=bearer(token), json={"roots": [str(root)], "name": name})
    assert r.status_code == 202, r.text
    scan_id = r.json()["scan_id"]
    wait_for(lambda: client.get(f"/v1/scans/{scan_id}", headers=bearer(token)).json()["status"] != "running",
             60, f"scan {scan_id} to end")
    return scan_id


@contextmanager
def review_world(db_url: str, model: Path, tmp: Path) -> Iterator[World]:
    storage = tmp / "storage"
    a, b, c = storage / "a", storage / "b", storage / "c"
    for folder in (a, c):
        write_jpegs(folder, 4)
        shutil.copyfile(folder / "img_00000.jpg", folder / HTML_NAME)
        shutil.copyfile(folder / "img_00001.jpg", folder / "copy_of_1.jpg")
    write_jpegs(b, 2, start=10)
    tokens = {
        "alice": make_key(db_url, "alice", "--team", "a"),
        "rita": make_key(db_url, "rita", "--role", "reviewer", "--team", "a"),
        "bob": make_key(db_url, "bob", "--team", "b"),
        "admin": make_key(db_url, "ops", "--role", "admin"),
    }
    server = _start(model, db_url, storage, tmp)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            scan_a = _scan(client, tokens["alice"], a, SCAN_NAME)
            scan_b = _scan(client, tokens["bob"], b, "team b")
            scan_c = _scan(client, tokens["alice"], c, "team a, again")
            paths = {s: sorted(r["path"] for r in client.get(f"/v1/scans/{s}/results",
                                                             headers=bearer(tokens["alice"])).json()["results"])
                     for s in (scan_a, scan_c)}
        yield World(server, db_url, a, tokens, scan_a, scan_b, paths[scan_a], scan_c, c, paths[scan_c])
    finally:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


def sign_in(client: httpx.Client, token: str, scan: int | None = None) -> str:
    """Sign ``client`` in through the form; the page's CSRF token."""
    target = f"/review?scan={scan}" if scan else "/review"
    r = client.post("/review/session", data={"api_key": token, "next": target}, follow_redirects=True)
    assert r.status_code == 200, r.text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', r.text)
    assert found, r.text
    return found.group(1)


_WORLDS: dict[str, World] = {}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory,
          ) -> World:
    """The review world of a database kind (needs the ``tiny_onnx_model`` fixture imported): made once for every
    module that uses it, its server and database dropped when pytest ends."""
    found = _WORLDS.get(request.param)
    if found is None:
        tmp = tmp_path_factory.mktemp(f"review_{request.param}")
        stack = ExitStack()
        try:
            url = (f"sqlite:///{tmp / 'dfscan.db'}" if request.param == "sqlite"
                   else stack.enter_context(throwaway_pg_database()))
            found = _WORLDS[request.param] = stack.enter_context(review_world(url, tiny_onnx_model, tmp))
        except BaseException:
            stack.close()
            raise
        request.config.add_cleanup(stack.close)
    return found
