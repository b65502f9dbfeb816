"""Debian's chromium driven by Playwright (no browser download), with an unpacked extension loaded,
and a quiet local HTTP server for test pages and images."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.plugin import ORT_FILES, PLUGIN_DIR

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# New headless (the old headless shell never starts an extension's service worker), and none of
# Chromium's own network traffic: no updates, sync, metrics, safe browsing, component downloads.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--no-pings",
    "--safebrowsing-disable-auto-update",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
    "--no-sandbox",
]


ORT_DIST = PLUGIN_DIR / "node_modules" / "onnxruntime-web" / "dist"


def build_extension(model: Path, out: Path) -> Path:
    """`dfscan plugin build` of ``model`` into ``out``; skips without the npm packages."""
    if not (ORT_DIST / ORT_FILES[0]).is_file():
        pytest.skip("onnxruntime-web is not installed: run `npm ci` in plugin/ (make plugin)")
    res = CliRunner().invoke(main, ["plugin", "build", "--model", str(model), "--out", str(out), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def check(worker, url: str, page: str = "") -> dict:
    """The service worker's checkImage(url, page): the context menu's path (``page`` is the tab's address)."""
    return worker.evaluate("([url, page]) => checkImage(url, page)", [url, page])


def set_options(worker, **options: object) -> None:
    worker.evaluate("o => chrome.storage.local.set(o)", options)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def playwright_driver():
    """One Playwright driver for the session (its sync API allows only one at a time). Each test
    module that imports this fixture gets its own instance of it, so they share one driver, stopped
    when the last of them is torn down."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not _DRIVER["users"]:
        _DRIVER["driver"] = sync_api.sync_playwright().start()
    _DRIVER["users"] += 1
    try:
        yield _DRIVER["driver"]
    finally:
        _DRIVER["users"] -= 1
        if not _DRIVER["users"]:
            _DRIVER.pop("driver").stop()


_DRIVER: dict = {"users": 0}


@contextmanager
def chromium_with_extension(driver, extension: Path, profile: Path, extra_args: Sequence[str] = ()):
    """(context, service worker) of a headless Chromium with ``extension`` loaded; skips where it can't start.

    ``extra_args`` adds Chromium switches, such as ``--host-resolver-rules=MAP *.test 127.0.0.1`` for
    test host names that must resolve to this machine."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    try:
        context = driver.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            ignore_default_args=["--disable-extensions"],
            args=[*CHROMIUM_ARGS, *extra_args, f"--disable-extensions-except={extension}",
                  f"--load-extension={extension}"],
        )
    except Exception as exc:  # noqa: BLE001 - no browser here: skip with its reason
        pytest.skip(f"chromium could not start: {str(exc).splitlines()[0][:300]}")
    try:
        workers = context.service_workers
        worker = workers[0] if workers else context.wait_for_event("serviceworker", timeout=30_000)
        yield context, worker
    finally:
        context.close()
