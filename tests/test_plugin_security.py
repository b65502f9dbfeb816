"""The browser extension's limits on what it sends where, in a real headless Chromium.

Test host names (``site.test``, ``other.test``, ``example.test``...) resolve to 127.0.0.1 inside the
browser (``--host-resolver-rules``), so that every request, even one the extension should not have
made, reaches a server of this test, which records it:
- the API key goes only to https servers, or over plain http to this machine;
- an image is never held in memory past the size limit, whatever Content-Length says;
- the user's cookies go only with images of the tab's own site.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests._browser import build_extension, check, chromium_with_extension, set_options
from tests._browser import playwright_driver  # noqa: F401 - fixture
from tests._images import pattern
from tests._models import linear_probe_onnx_model  # noqa: F401 - fixture

RESOLVE_TEST_HOSTS = "--host-resolver-rules=MAP *.test 127.0.0.1"
LIMIT = 1024 * 1024            # the extension's size limit in these tests
ENDLESS = 64 * 1024 * 1024     # what the streaming routes send unless the client goes away
CHUNK = 64 * 1024


@dataclass
class Log:
    """What a test server saw: connections, requests (host, path, cookie, authorization), streams."""
    connections: int = 0
    requests: list[tuple[str, str, str, str]] = field(default_factory=list)
    streams: dict[str, dict] = field(default_factory=dict)   # path -> {"sent": bytes, "finished": bool}
    changed: threading.Condition = field(default_factory=threading.Condition)

    def connected(self) -> None:
        with self.changed:
            self.connections += 1

    def request(self, host: str, path: str, cookie: str, authorization: str) -> None:
        with self.changed:
            self.requests.append((host, path, cookie, authorization))

    def stream_ended(self, path: str, sent: int, finished: bool) -> None:
        with self.changed:
            self.streams[path] = {"sent": sent, "finished": finished}
            self.changed.notify_all()

    def wait_stream(self, path: str) -> dict:
        """The outcome of the stream on ``path``, once its sender stopped (finished or cut off)."""
        with self.changed:
            assert self.changed.wait_for(lambda: path in self.streams, timeout=120), f"no stream on {path}"
            return self.streams[path]

    def cookies_for(self, host: str) -> list[str]:
        return [cookie for h, _, cookie, _ in self.requests if h.split(":")[0] == host]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    pattern(7, (320, 240)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """/img.jpg, /redirect?to=URL, /endless (chunked, no Content-Length), /lying (chunked with a
    Content-Length of 1000), POST /v1/score (answers 401, the way a server refuses a key)."""

    protocol_version = "HTTP/1.1"
    log: Log
    image: bytes

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _record(self) -> None:
        self.log.request(self.headers.get("Host", ""), self.path, self.headers.get("Cookie", ""),
                         self.headers.get("Authorization", ""))

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._record()
        url = urlsplit(self.path)
        if url.path == "/img.jpg":
            self._send(200, self.image, "image/jpeg")
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(url.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path in ("/endless", "/lying"):
            self._stream(url.path, lying=url.path == "/lying")
        else:
            self._send(404, b"not here", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._record()
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(401, b'{"detail": "invalid API key"}', "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, path: str, lying: bool) -> None:
        """A JPEG's start, then filler, chunk by chunk, until ENDLESS bytes or the client goes away."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        if lying:
            self.send_header("Content-Length", "1000")
        self.send_header("Connection", "close")
        self.end_headers()
        sent, finished = 0, False
        try:
            while sent < ENDLESS:
                part = (self.image if sent == 0 else b"")[:CHUNK].ljust(CHUNK, b"\0")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                sent += len(part)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            finished = True
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True
        self.log.stream_ended(path, sent, finished)


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def verify_request(self, request: object, client_address: object) -> bool:
        """Called for every accepted connection, before any byte of a request is read."""
        self.RequestHandlerClass.log.connected()  # type: ignore[attr-defined]
        return True


@contextmanager
def recording_server() -> Iterator[tuple[int, Log]]:
    """A recording server on 127.0.0.1 (a free port): (port, its log)."""
    log = Log()
    handler = type("Handler", (_Handler,), {"log": log, "image": _jpeg()})
    server = _CountingServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], log
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(playwright_driver, linear_probe_onnx_model: Path,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory):
    ext = build_extension(linear_probe_onnx_model, tmp_path_factory.mktemp("ext") / "dfscan-extension")
    profile = tmp_path_factory.mktemp("profile")
    with chromium_with_extension(playwright_driver, ext, profile, [RESOLVE_TEST_HOSTS]) as (context, worker):
        yield context, worker, worker.url.split("/")[2]


@pytest.fixture
def site():
    with recording_server() as served:
        yield served


def popup_error(context, ext_id: str, url: str) -> str:
    page = context.new_page()
    try:
        page.goto(f"chrome-extension://{ext_id}/popup.html?url={quote(url, safe='')}")
        page.wait_for_selector("body[data-state=error]", timeout=60_000)
        return page.inner_text("#error")
    finally:
        page.close()


def test_options_page_refuses_plain_http_to_another_machine(browser, site) -> None:
    context, worker, ext_id = browser
    port, log = site
    set_options(worker, mode="local", serverUrl="http://127.0.0.1:8000", apiKey="")
    page = context.new_page()
    try:
        page.goto(f"chrome-extension://{ext_id}/options.html")
        page.wait_for_function("document.getElementById('serverUrl').value !== ''")

        def save(url: str) -> str:
            page.check("input[name=mode][value=server]")
            page.fill("#serverUrl", url)
            page.fill("#apiKey", "dfs_secret")
            page.evaluate("document.getElementById('saved').textContent = ''")
            page.click("button[type=submit]")
            page.wait_for_function("document.getElementById('saved').textContent !== ''")
            return page.inner_text("#saved")

        assert save(f"http://example.test:{port}") == "not saved"
        assert "https://" in page.inner_text("#problem") and page.is_visible("#problem")
        stored = worker.evaluate("chrome.storage.local.get(null)")
        assert stored["serverUrl"] == "http://127.0.0.1:8000" and stored["apiKey"] == "" and stored["mode"] == "local"
        for allowed in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"https://example.test:{port}"):
            assert save(allowed) == "saved", allowed
            assert page.is_hidden("#problem")
            assert worker.evaluate("chrome.storage.local.get('serverUrl')")["serverUrl"] == allowed
        assert "tab's own site" in page.inner_text("#cookies")  # the cookie rule, stated
    finally:
        page.close()
        set_options(worker, mode="local", serverUrl="http://127.0.0.1:8000", apiKey="")
    assert log.connections == 0, "saving options connects nowhere"


def test_the_key_never_goes_to_a_plain_http_server_elsewhere(browser, site) -> None:
    """Stored settings are checked again by the service worker, before any request leaves."""
    context, worker, ext_id = browser
    port, log = site
    image = f"http://127.0.0.1:{port}/img.jpg"
    set_options(worker, mode="server", serverUrl=f"http://example.test:{port}", apiKey="dfs_secret")
    try:
        refused = check(worker, image)
        shown = popup_error(context, ext_id, image)
        assert log.connections == 0, log.requests
        set_options(worker, serverUrl=f"http://127.0.0.1:{port}")
        loopback = check(worker, image)
    finally:
        set_options(worker, mode="local", serverUrl="http://127.0.0.1:8000", apiKey="")
    assert refused["status"] == "error" and refused["code"] == "server-insecure", refused
    assert "https://" in refused["error"] and "https://" in shown
    # loopback over plain http is allowed: the request arrives, with the key
    assert loopback["code"] == "server-refused-key", loopback
    assert [auth for _, path, _, auth in log.requests if path == "/v1/score"] == ["Bearer dfs_secret"]
    # and example.test does reach this server: a request the worker had made would have been seen
    before = log.connections
    assert worker.evaluate("u => fetch(u).then(r => r.status)", f"http://example.test:{port}/probe") == 404
    assert log.connections > before


@pytest.mark.parametrize("route", ["endless", "lying"])
def test_a_body_past_the_limit_is_cut_off(browser, site, route: str) -> None:
    """Chunked without Content-Length, and chunked under a Content-Length of 1000: the extension
    stops reading at the limit and closes the connection, long before the server is done."""
    context, worker, ext_id = browser
    port, log = site
    set_options(worker, mode="local", maxBytes=LIMIT)
    try:
        shown = popup_error(context, ext_id, f"http://127.0.0.1:{port}/{route}")
        outcome = log.wait_stream(f"/{route}")
    finally:
        set_options(worker, maxBytes=32 * 1024 * 1024)
    assert "too large" in shown and "1.0 MB" in shown, shown
    assert not outcome["finished"], outcome
    print(f"\n{route}: the server had sent {outcome['sent'] / 1048576:.1f} MB of {ENDLESS / 1048576:.0f} MB "
          f"when the extension closed the connection (limit {LIMIT / 1048576:.0f} MB)")
    assert outcome["sent"] < ENDLESS


def test_cookies_go_only_with_images_of_the_tabs_site(browser, site) -> None:
    context, worker, ext_id = browser
    port, log = site
    context.add_cookies([{"name": "who", "value": "site", "domain": ".site.test", "path": "/"},
                         {"name": "who", "value": "other", "domain": ".other.test", "path": "/"}])
    tab = f"http://site.test:{port}/page.html"
    set_options(worker, mode="local")

    def cookie_sent(image: str, page: str) -> str:
        """The cookies that arrived with the image when the tab at ``page`` checked it."""
        log.requests.clear()
        r = check(worker, image, page)
        assert r["status"] == "ok", r
        return " ".join(cookie for _, path, cookie, _ in log.requests)

    assert cookie_sent(f"http://site.test:{port}/img.jpg", tab) == "who=site"
    assert cookie_sent(f"http://img.site.test:{port}/img.jpg", tab) == "who=site"  # a sub-domain of the tab's host
    assert cookie_sent(f"http://other.test:{port}/img.jpg", tab) == ""
    assert cookie_sent(f"http://site.test:{port}/img.jpg", "https://site.test/page.html") == ""  # another scheme
    assert cookie_sent(f"http://site.test:{port}/img.jpg", f"http://img.site.test:{port}/") == ""  # a parent
    assert cookie_sent(f"http://site.test:{port}/img.jpg", "") == ""  # no tab: the popup's own checks
    # a same-site image that redirects to another site: the other site's cookie stays home
    log.requests.clear()
    redirected = check(worker, f"http://site.test:{port}/redirect?to=http://other.test:{port}/img.jpg", tab)
    assert redirected["status"] == "ok", redirected
    assert log.cookies_for("other.test") == [""] and "who=other" not in str(log.requests)

    # the popup draws the image as the check fetched it: still no cookie for the other site
    log.requests.clear()
    page = context.new_page()
    try:
        other = f"http://other.test:{port}/img.jpg"
        page.goto(f"chrome-extension://{ext_id}/popup.html?url={quote(other, safe='')}&page={quote(tab, safe='')}")
        page.wait_for_selector("#figure:not([hidden])", timeout=60_000)
    finally:
        page.close()
    assert len(log.cookies_for("other.test")) == 2, log.requests  # the check and the figure
    assert log.cookies_for("other.test") == ["", ""]
