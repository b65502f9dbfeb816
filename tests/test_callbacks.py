"""Callbacks reach only the outside world, each within its own deadline and size cap.

The address check is tested by calling it: every refused range (IPv4, IPv6,
IPv4 inside IPv6), the spellings of loopback a URL can take, the operator's
allow-list. Delivery and the server are tested with real receivers, all on
loopback addresses (127.0.0.x, ::1): nothing here connects anywhere else, and
no test lets the server try a refused address that isn't loopback.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.core.settings import Settings, SettingsError, from_env
from dfscan.db import make_engine
from dfscan.db.callbacks import REVOKED_KEY, add_callback, callback_state, mask_callback_url
from dfscan.db.engine import session_factory
from dfscan.serve.addresses import AddressPolicy, Target, refused_reason
from dfscan.serve.callbacks import post
from dfscan.serve.errors import CallbackRefused
from tests._cluster import DFSCAN, free_port, wait_for
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

# --- the address check -------------------------------------------------------------------

REFUSED = [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("100.64.0.1", "shared"), ("192.0.0.8", "reserved"),
    ("198.18.0.1", "reserved"), ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("192.0.2.1", "documentation"), ("198.51.100.1", "documentation"), ("203.0.113.1", "documentation"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("::", "unspecified"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"), ("fec0::1", "private"), ("ff02::1", "multicast"),
    ("ff05::2", "multicast"), ("100::1", "reserved"), ("2001::1", "reserved"), ("2001:db8::1", "documentation"),
    ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
    ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("::ffff:10.1.2.3", "private (IPv4 10.1.2.3"), ("::ffff:169.254.169.254", "link-local (IPv4"),
    ("64:ff9b::7f00:1", "loopback (IPv4 127.0.0.1"), ("64:ff9b::a9fe:a9fe", "link-local (IPv4 169.254.169.254"),
    ("64:ff9b:1::1", "private"),  # local-use NAT64
    ("2002:7f00:1::", "loopback (IPv4 127.0.0.1"), ("2002:c0a8:101::1", "private (IPv4 192.168.1.1"),
    ("::ffff:0:7f00:1", "reserved"),  # IPv4-translated
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450::1", "::ffff:8.8.8.8",
          "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refused_ranges(address: str, why: str) -> None:
    reason = refused_reason(ipaddress.ip_address(address))
    assert reason is not None and reason.startswith(why), (address, reason)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is None


LOOPBACK_URLS = [
    "http://127.0.0.1/", "http://127.0.0.2:9/x", "http://localhost/", "http://LOCALHOST:80/", "http://localhost./",
    "http://0.0.0.0/", "http://0/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/", "http://2130706433/", "http://0x7f.1/", "http://0x7f000001/",
    "http://0177.0.0.1/", "http://0177.1/", "http://127.1/", "http://127.0.0.1./", "http://allowed@127.0.0.1/",
    "http://user:pw@127.0.0.1:8080/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/",
    "http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/",  # full-width digits and dots (IDNA)
    "http://127\u30020\u30020\u30021/",  # ideographic full stops
    "https://127.0.0.1:8443/hook?token=x",
]


@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_loopback_spellings_refused(url: str) -> None:
    with pytest.raises(CallbackRefused, match=r"refused: address .* is (loopback|unspecified)"):
        AddressPolicy().check(url)


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/", "http:// or https://"), ("file:///etc/passwd", "http:// or https://"),
    ("gopher://127.0.0.1/", "http:// or https://"), ("http:///hook", "no host"), ("http://a@b@127.0.0.1/", "'@'"),
    ("http://127.0.0.1 /", "spaces"), ("http://evil\\@127.0.0.1/", "backslashes"), ("http://h\r\nX: y/", "control"),
    ("http://127.0.0.1:99999/", "not a valid URL"), ("http://[::1/", "not a valid URL"),
    ("http://x..y/", "not a valid host name"), ("http://a_b$.c/", "not a valid host name"),
    ("http://[fe80::zz]/", "not a valid URL"), ("http://nope.invalid./", "does not resolve"),
])
def test_malformed_urls_refused(url: str, message: str) -> None:
    policy = AddressPolicy(resolver=_resolver({}))
    with pytest.raises(CallbackRefused, match=message.replace("\\", "\\\\").replace("(", r"\(").replace("$", r"\$")):
        policy.check(url)


def _resolver(answers: dict[str, list[str]]):
    """DNS answers for names the tests make up (a lookup of them must never leave this machine)."""
    def resolve(host: str, port: int) -> list:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in answers[host]]
    return resolve


def test_every_resolved_address_is_checked_and_pinned() -> None:
    """A name whose answer holds one internal address among public ones is refused; a clean one is pinned."""
    policy = AddressPolicy(resolver=_resolver({
        "hooks.example.com": ["8.8.8.8", "2606:4700:4700::1111"],
        "mixed.example.com": ["8.8.8.8", "10.0.0.1"],
        "metadata.example.com": ["169.254.169.254"],
        "xn--bcher-kva.example": ["1.1.1.1"],
    }))
    target = policy.check("https://u:p%40ss@Hooks.Example.COM.:8443/a/b?c=d#frag")
    assert target == Target("https", "hooks.example.com", 8443, "/a/b?c=d", ("8.8.8.8", "2606:4700:4700::1111"),
                            ("u", "p@ss"))
    assert target.host_header == "hooks.example.com:8443"
    with pytest.raises(CallbackRefused, match="10.0.0.1 is private"):
        policy.check("http://mixed.example.com/")
    with pytest.raises(CallbackRefused, match="169.254.169.254 is link-local"):
        policy.check("http://metadata.example.com/latest/meta-data/")
    assert policy.check("http://b\u00fccher.example/").host == "xn--bcher-kva.example"  # IDNA before lookup


def test_operator_allow_list() -> None:
    policy = AddressPolicy(["127.0.0.1", "10.20.0.0/16", "fd00::/8", "Hooks.Internal"],
                           resolver=_resolver({"hooks.internal": ["192.168.7.7"], "other.internal": ["192.168.7.7"]}))
    assert policy.check("http://127.0.0.1:5000/hook").addresses == ("127.0.0.1",)
    assert policy.check("http://[::ffff:127.0.0.1]/").addresses == ("127.0.0.1",)
    assert policy.check("http://10.20.3.4/").addresses == ("10.20.3.4",)
    assert policy.check("http://[fd00::5]/").addresses == ("fd00::5",)
    assert policy.check("http://hooks.internal./").addresses == ("192.168.7.7",)
    for url, why in [("http://127.0.0.2/", "loopback"), ("http://10.21.0.1/", "private"),
                     ("http://other.internal/", "private"), ("http://[::1]/", "loopback")]:
        with pytest.raises(CallbackRefused, match=why):
            policy.check(url)


def test_allow_list_setting() -> None:
    settings = from_env({"DFSCAN_CALLBACK_ALLOW": " 127.0.0.1, hooks.internal ,10.0.0.0/8,[::1]"})
    assert settings.callback_allow == ("127.0.0.1", "hooks.internal", "10.0.0.0/8", "[::1]")
    for bad in ("http://x/", "10.0.0.0/99", "a b", "host:80"):
        with pytest.raises(SettingsError, match="callback allow-list entry"):
            Settings(callback_allow=(bad,))
    with pytest.raises(SettingsError, match="callback deadline"):
        Settings(callback_deadline_s=0)
    with pytest.raises(SettingsError, match="parallel callback"):
        Settings(callback_parallel=0)
    res = CliRunner().invoke(main, ["serve", "--model", "m.onnx", "--callback-allow", "not a host"])
    assert res.exit_code != 0 and "callback allow-list entry" in res.output and "Traceback" not in res.output


def test_urls_are_masked() -> None:
    assert mask_callback_url("https://u:pw@hooks.example.com/t/SECRET?token=abc") == "https://hooks.example.com/…"
    assert mask_callback_url("http://[::1]:8080/x") == "http://[::1]:8080/…"
    assert mask_callback_url("http://[::1/") == "(not a valid URL)"


# --- real receivers on loopback -------------------------------------------------------------


@dataclass
class _Log:
    requests: list[tuple[str, dict, bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _, _ in self.requests]


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers by path: /fast 204, /fail 503, /slow never, /drip a byte at a time, /endless an endless body,
    /bigheaders 120 KiB of headers, /redirect 302."""

    log_: _Log

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.log_.lock:
            self.log_.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        route = self.path.split("?")[0].rsplit("/", 1)[-1]
        try:
            getattr(self, f"_{route}", self._fast)()
        except OSError:
            pass  # the client went away: what the deadline and the cap do

    def _fast(self) -> None:
        self.send_response(204)
        self.end_headers()

    def _fail(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "22")
        self.end_headers()
        self.wfile.write(b"internal-secret-banner")

    def _slow(self) -> None:
        self.log_.release.wait(120)

    def _drip(self) -> None:
        for byte in b"HTTP/1.1 204 No Content\r\n" + b"X-Pad: " + b"a" * 10_000:
            if self.log_.release.wait(0.2):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def _endless(self) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        while not self.log_.release.is_set():
            self.wfile.write(b"x" * 65536)

    def _bigheaders(self) -> None:
        self.send_response(200)
        for i in range(60):
            self.send_header(f"X-Pad-{i}", "a" * 2048)
        self.end_headers()

    def _redirect(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:9/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


@pytest.fixture
def receivers() -> Iterator[dict[str, tuple[str, _Log]]]:
    """Receivers on 127.0.0.1, 127.0.0.2, 127.0.0.3 and ::1, on one port each: base URL and log by address."""
    out, servers = {}, []
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"):
        log = _Log()
        handler = type("Handler", (_Receiver,), {"log_": log})
        server = (_Server6 if ":" in address else _Server)((address, 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, log))
        host = f"[{address}]" if ":" in address else address
        out[address] = (f"http://{host}:{server.server_address[1]}", log)
    try:
        yield out
    finally:
        for server, log in servers:
            log.release.set()
            server.shutdown()
            server.server_close()


def _post(base: str, path: str, *, deadline_s: float = 2.0, host: str | None = None) -> str | None:
    port = int(base.rsplit(":", 1)[1])
    address = base.split("//")[1].rsplit(":", 1)[0].strip("[]")
    target = Target("http", host or address, port, path, (address,))
    return post(target, b'{"a": 1}', {"Content-Type": "application/json"}, deadline_s=deadline_s,
                max_response_bytes=64 * 1024, tls=ssl.create_default_context())


def test_delivery_deadline_cap_and_pinning(receivers: dict[str, tuple[str, _Log]]) -> None:
    base, log = receivers["127.0.0.3"]
    assert _post(base, "/fast") is None
    # The checked address is the one connected to; the URL's name goes in Host (no second lookup).
    assert _post(base, "/fast", host="hooks.example.com") is None
    assert log.requests[-1][1]["host"] == f"hooks.example.com:{base.rsplit(':', 1)[1]}"
    assert _post(base, "/fail") == "HTTP 503"  # the receiver's answer is not recorded
    assert _post(base, "/redirect") == "HTTP 302 (redirects are not followed)"
    assert _post(base, "/slow", deadline_s=1) == "timed out after 1 s"
    started = time.monotonic()
    assert _post(base, "/drip", deadline_s=1) == "timed out after 1 s"  # one deadline, not one per read
    print(f"drip: gave up after {time.monotonic() - started:.2f} s (deadline 1 s)")
    assert time.monotonic() - started < 10  # generous: a per-read timeout would wait for the whole drip
    assert _post(base, "/endless", deadline_s=30) is None  # status 200; the body is read to the cap only
    assert _post(base, "/bigheaders") == "answer headers over 65536 bytes"
    base6, _ = receivers["::1"]
    assert _post(base6, "/fast") is None
    closed = free_port()
    assert _post(f"http://127.0.0.1:{closed}", "/fast") == "connection refused"


def test_tls_certificate_is_checked_against_the_url_host(tmp_path: Path) -> None:
    """https to a pinned address: SNI and the certificate check use the URL's name, not the address."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test"],
                   check=True, capture_output=True)
    log = _Log()
    server = _Server(("127.0.0.3", 0), type("Handler", (_Receiver,), {"log_": log}))
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        def send(host: str) -> str | None:
            target = Target("https", host, port, "/fast", ("127.0.0.3",))
            return post(target, b"{}", {}, deadline_s=5, max_response_bytes=4096, tls=trust)

        assert send("hooks.test") is None
        assert log.requests[-1][1]["host"] == f"hooks.test:{port}"
        assert send("other.test") == "TLS certificate not valid for other.test"
        assert send("127.0.0.3") == "TLS certificate not valid for 127.0.0.3"
        assert len(log.requests) == 1
    finally:
        log.release.set()
        server.shutdown()
        server.server_close()


# --- the real server ---------------------------------------------------------------------


def _cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@dataclass
class _Served:
    log: Path
    db_url: str
    key_id: int
    auth: dict[str, str]
    roots: Path
    client: httpx.Client

    def scan(self, callback: str | None = None, auth: dict[str, str] | None = None) -> httpx.Response:
        body = {"roots": [str(self.roots)]} | ({"callback_url": callback} if callback else {})
        return self.client.post("/v1/scans", headers=auth or self.auth, json=body)

    def callback(self, scan_id: int) -> dict:
        return self.client.get(f"/v1/scans/{scan_id}", headers=self.auth).json()["callback"]

    def ended_scan(self, auth: dict[str, str] | None = None) -> int:
        """A scan without a callback, once it has ended."""
        scan_id = self.scan(auth=auth).json()["scan_id"]
        wait_for(lambda: self.client.get(f"/v1/scans/{scan_id}", headers=auth or self.auth).json()["status"]
                 not in ("running", "queued"), 60, f"scan {scan_id} to end")
        return scan_id

    def add_callbacks(self, rows: list[tuple[int, int, str]]) -> None:
        """Callback rows (scan, key, URL) written straight to the database in one transaction, as a server
        with another allow-list (or an older one) would have stored them."""
        engine = make_engine(self.db_url)
        try:
            with session_factory(engine).begin() as session:
                for scan_id, key_id, url in rows:
                    add_callback(session, scan_id=scan_id, api_key_id=key_id, url=url)
        finally:
            engine.dispose()

    def stored_state(self, scan_id: int) -> dict | None:
        engine = make_engine(self.db_url)
        try:
            with session_factory(engine)() as session:
                return callback_state(session, scan_id)
        finally:
            engine.dispose()


def _key(db_url: str, name: str) -> tuple[int, dict[str, str]]:
    created = json.loads(_cli("api-key", "create", "--name", name, "--db", db_url, "--json"))
    return created["id"], {"Authorization": f"Bearer {created['token']}"}


@pytest.fixture
def served(db_url: str, tiny_onnx_model: Path, tmp_path: Path) -> Iterator[_Served]:  # noqa: F811
    """``dfscan serve`` that allows callbacks to 127.0.0.3 only, with a 3 s deadline per delivery."""
    roots = tmp_path / "storage"
    write_jpegs(roots, 2)
    key_id, auth = _key(db_url, "hooks")
    port, log = free_port(), tmp_path / "serve.log"
    proc = subprocess.Popen(
        [DFSCAN, "serve", "--model", str(tiny_onnx_model), "--db", db_url, "--port", str(port), "--roots", str(roots),
         "--runtime", "onnxruntime", "--decoder", "pillow", "--callback-allow", "127.0.0.3",
         "--callback-deadline", "3"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "DFSCAN_THREADS": "1"})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return client.get("/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, "the server to be ready")
        yield _Served(log, db_url, key_id, auth, roots, client)
    finally:
        client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _is_loopback_name(name: str) -> bool:
    try:
        return all(ipaddress.ip_address(i[4][0]).is_loopback for i in socket.getaddrinfo(name, 80))
    except OSError:
        return False


@pytest.mark.timeout(240)
def test_server_reaches_only_allowed_addresses(served: _Served, receivers: dict[str, tuple[str, _Log]]) -> None:
    """Loopback in every spelling is refused at submit (422) and at delivery; the allowed receiver gets its own."""
    port = {a: base.rsplit(":", 1)[1] for a, (base, _) in receivers.items()}
    named = socket.gethostname() if _is_loopback_name(socket.gethostname()) else "localhost"
    refused = [f"http://127.0.0.1:{port['127.0.0.1']}/hook", f"http://127.0.0.2:{port['127.0.0.2']}/hook",
               f"http://localhost:{port['127.0.0.1']}/hook", f"http://{named}.:{port['127.0.0.1']}/hook",
               f"http://0.0.0.0:{port['127.0.0.1']}/hook", f"http://[::1]:{port['::1']}/hook",
               f"http://[::ffff:127.0.0.1]:{port['127.0.0.1']}/hook", f"http://2130706433:{port['127.0.0.1']}/hook",
               f"http://0x7f.1:{port['127.0.0.1']}/hook", f"http://127.0.0.3@127.0.0.1:{port['127.0.0.1']}/hook",
               f"http://[::ffff:127.0.0.2]:{port['127.0.0.2']}/hook"]
    answers = {url: served.scan(url) for url in refused}
    allowed_base, allowed_log = receivers["127.0.0.3"]
    ok = served.scan(f"{allowed_base}/hooks/SECRET-PATH/fast?token=SECRET-QUERY")
    assert ok.status_code == 202, ok.text
    ok_id = ok.json()["scan_id"]
    wait_for(lambda: served.callback(ok_id)["delivered_at"], 60, "the allowed callback")
    time.sleep(2)  # what was wrongly accepted has had the time to be delivered too
    reached = {a: receivers[a][1].paths() for a in ("127.0.0.1", "127.0.0.2", "::1")}
    print("submitted:", {url: r.status_code for url, r in answers.items()}, "reached:", reached)
    assert all(r.status_code == 422 and "refused: address" in r.json()["detail"] for r in answers.values()), \
        {url: r.text for url, r in answers.items()}
    assert reached == {"127.0.0.1": [], "127.0.0.2": [], "::1": []}
    assert served.callback(ok_id)["url"] == f"{allowed_base}/…"

    # Checked again at delivery: a stored callback to loopback is not sent.
    stored = served.ended_scan()
    served.add_callbacks([(stored, served.key_id, f"{receivers['127.0.0.2'][0]}/hook")])
    state = wait_for(lambda: (c := served.callback(stored))["last_error"] and c, 60, "the refused delivery")
    assert state["last_error"] == "refused: address 127.0.0.2 is loopback" and state["delivered_at"] is None
    assert receivers["127.0.0.2"][1].paths() == []

    # A revoked key's callbacks are given up, not sent.
    other_id, other_auth = _key(served.db_url, "revoked-later")
    revoked = served.ended_scan(other_auth)
    _cli("api-key", "revoke", str(other_id), "--db", served.db_url)
    served.add_callbacks([(revoked, other_id, f"{allowed_base}/revoked/fast")])
    state = wait_for(lambda: (c := served.stored_state(revoked)) and c["given_up_at"] and c, 60,
                     "the revoked key's callback to be given up")
    assert state["last_error"] == REVOKED_KEY and state["attempts"] == 0
    assert not any("/revoked/" in p for p in allowed_log.paths())

    # Failures are logged with the URL's origin only, and the receiver's answer is not recorded.
    failing = served.scan(f"{allowed_base}/hooks/SECRET-PATH/fail?token=SECRET-QUERY").json()["scan_id"]
    state = wait_for(lambda: (c := served.callback(failing))["last_error"] and c, 60, "a failed delivery")
    assert state["last_error"] == "HTTP 503"
    wait_for(lambda: "callback for scan" in served.log.read_text(), 30, "the failure in the log")
    text = served.log.read_text()
    assert "SECRET" not in text and f"{allowed_base}/…" in text


@pytest.mark.timeout(240)
def test_slow_receiver_does_not_hold_up_others(served: _Served, receivers: dict[str, tuple[str, _Log]]) -> None:
    """A receiver that never answers, one that answers without end, and a fast one, all due at once: the fast
    one's callback arrives while the slow one waits; the slow one times out; the endless one is read to the cap."""
    base, log = receivers["127.0.0.3"]
    slow, fast, endless = served.ended_scan(), served.ended_scan(), served.ended_scan()
    served.add_callbacks([(slow, served.key_id, f"{base}/slow"), (endless, served.key_id, f"{base}/endless"),
                          (fast, served.key_id, f"{base}/fast")])
    wait_for(lambda: served.callback(fast)["delivered_at"], 60, "the fast callback")
    assert served.callback(slow)["attempts"] == 0, "the fast callback waited for the slow one"
    state = wait_for(lambda: (c := served.callback(slow))["last_error"] and c, 60, "the slow delivery to time out")
    assert state["last_error"] == "timed out after 3 s"
    assert wait_for(lambda: served.callback(endless)["delivered_at"], 60, "the endless answer's callback")
    assert log.paths()[:1] == ["/slow"] or "/slow" in log.paths()
