"""Throwaway servers and worker processes for the distributed fault tests.

Everything here is real: ``redis-server`` on a free port without persistence
(so a restart loses its data), a PostgreSQL cluster made with ``initdb`` and
run with ``pg_ctl``, a TCP proxy in front of it that a test can cut, and
``dfscan worker`` processes, each in its own process group so that SIGKILL
reaches the Celery parent and its pool children alike.  The shared servers on
the standard ports are never touched.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
DFSCAN = str(Path(sys.executable).with_name("dfscan"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - a server may be restarting
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


# --- Redis -----------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free port, no RDB, no AOF: a restart starts empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_for(self.ping, 20, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def client(self):
        import redis

        return redis.Redis(port=self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Kill it and start an empty one on the same port: every message is lost."""
        self.stop()
        self.start()


# --- PostgreSQL ------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found (PostgreSQL server binaries)")
    return path


def pg_available() -> str | None:
    """None if a throwaway cluster can be made here, else why not."""
    try:
        _pg_bin("initdb")
        _pg_bin("pg_ctl")
    except FileNotFoundError as exc:
        return str(exc)
    return None


class PostgresServer:
    """A cluster made by ``initdb`` in a temporary directory, run by ``pg_ctl`` on a free port.

    Run as the ``postgres`` user when the tests run as root (initdb refuses root).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dfscan-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as_user: list[str] = []
        self._templates: set[str] = set()
        if os.geteuid() == 0:
            import pwd

            pwd.getpwnam("postgres")
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> "PostgresServer":
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        return self.start()

    def start(self) -> "PostgresServer":
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=100"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def create_migrated_database(self, name: str) -> str:
        """A database at ``upgrade head``: a copy of this cluster's template, migrated once per content of
        the migration files (tests/_dbtemplate.py's key) by the real ``dfscan.db.upgrade``."""
        from dfscan import db
        from tests._dbtemplate import migrations_key

        template = f"dfscan_tmpl_{migrations_key()}"
        if template not in self._templates:
            url = self.create_database(template)
            engine = db.make_engine(url)
            try:
                db.upgrade(engine)
            finally:
                engine.dispose()
            self._templates.add(template)
        return self.create_database(name, template=template)

    def url(self, name: str, port: int | None = None) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port or self.port}/{name}"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


# --- a TCP proxy that can be cut -------------------------------------------------------


class TcpProxy:
    """Forwards a free local port to ``target_port``; :meth:`cut` drops every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        self._open.clear()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._close(s)

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self._server.close()


# --- worker processes ------------------------------------------------------------------


def all_ready(*workers: "Worker", timeout: float = 90) -> list["Worker"]:
    """Wait until every one of ``workers`` (started together: they boot side by side) is ready."""
    return [w.wait_ready(timeout) for w in workers]


def stop_all(workers: "list[Worker]") -> None:
    """Stop ``workers``: every warm shutdown asked for first, then each waited for (side by side, not in turn)."""
    for w in workers:
        w.terminate()
    for w in workers:
        w.stop()


class Worker:
    """A ``dfscan worker`` process (prefork, one pool process) in its own process group.

    ``faults`` (see ``tests/_faults.py``) are injected through the worker's
    ``--include`` of that module.
    """

    def __init__(self, broker_url: str, db_url: str, log_dir: Path, *, name: str = "w",
                 faults: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 concurrency: int = 1) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}-{time.monotonic_ns()}.log"
        args = [DFSCAN, "worker", "--broker", broker_url, "--db", db_url, "--concurrency", str(concurrency),
                "--pool", "prefork", "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h",
                "--include", "tests._faults"]  # fmt: skip
        full_env = {**os.environ, "DFSCAN_THREADS": "1", "DFSCAN_READ_THREADS": "2",
                    "DFSCAN_DECODE_THREADS": "1", "DFSCAN_BATCH_SIZE": "8", "DFSCAN_TEST_FAULTS": json.dumps(faults or {}),
                    **(env or {})}  # fmt: skip
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        """Pids of the Celery pool processes."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def wait_ready(self, timeout: float = 90) -> "Worker":
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
            return "ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} to be ready")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL the whole worker: the Celery parent and its pool processes."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.proc.wait(30)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the group) without waiting: :meth:`stop` waits."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill_group()
            except ProcessLookupError:
                pass
        # Leftover pool processes of a killed parent.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
