"""Load on a real `dfscan serve`: uploads held in flight, and /healthz watched from a process of its own.

Used by tests/test_serve_load.py and tests/bench/bench_serve_load.py.  The
watcher is a separate process so that the load's own client threads (50
scans asked for at once) can't delay its requests: what it measures is the
server.  Run as ``python -m tests._load URL``, it asks ``URL/healthz`` every
50 ms and prints ``<time.monotonic()> <latency s | none>`` per answer until
it is terminated.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests._images import jpeg_bytes

REPO = Path(__file__).resolve().parent.parent


class HeldUpload:
    """POST /v1/score over a raw socket: the headers and the body's first bytes now, the rest on :meth:`finish`.

    The server takes an upload's slot from its headers on, so a held upload is in flight until it is finished.
    """

    def __init__(self, url: str, token: str, seed: int) -> None:
        request = httpx.Request("POST", "http://x/", files=[("files", (f"u{seed}.jpg", jpeg_bytes(seed), "image/jpeg"))])
        body = request.read()
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=600)
        head = (f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n"
                f"Content-Type: {request.headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode() + body[:64])
        self.rest = body[64:]

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the server's answer (status 0: the connection closed without one)."""
        data = b""
        try:
            while block := self.sock.recv(65536):
                data += block
        except OSError:
            pass
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/"):
            return 0, {}, data
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    def finish(self) -> tuple[int, dict[str, str], bytes]:
        """Send the rest of the body; the answer."""
        try:
            self.sock.sendall(self.rest)
        except OSError:
            pass  # answered already (a refusal) and closed
        return self.answer()


class HealthWatch:
    """``python -m tests._load URL`` in a process of its own; :meth:`stop` gives its ``(when, latency)`` pairs."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests._load", url], cwd=REPO, stdout=subprocess.PIPE,
                                     text=True)

    def stop(self) -> list[tuple[float, float | None]]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        pairs = []
        for line in out.splitlines():
            when, latency = line.split()
            pairs.append((float(when), None if latency == "none" else float(latency)))
        return pairs


def percentiles(values: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of ``values`` (seconds) in milliseconds."""
    if not values:
        return {"n": 0}
    v = sorted(values)
    at = lambda q: round(v[min(len(v) - 1, int(len(v) * q))] * 1000, 1)  # noqa: E731
    return {"n": len(v), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(v[-1] * 1000, 1)}


def rss_mb(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def _watch(url: str) -> None:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with httpx.Client(timeout=30) as client:
        while not stopping:
            started = time.monotonic()
            try:
                ok = client.get(url + "/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            latency = f"{time.monotonic() - started:.6f}" if ok else "none"
            print(f"{started:.6f} {latency}", flush=True)
            time.sleep(max(0.0, 0.05 - (time.monotonic() - started)))


if __name__ == "__main__":
    _watch(sys.argv[1])
