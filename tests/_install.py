"""tests/test_install.py's fresh venv and ``pip install`` of a copy of this repository, run in the background.

The install is ~2 minutes of pip unpacking ~7 GB (mostly torch's CUDA libraries), most of it waiting on the
disk. ``tests/conftest.py`` starts it when the session's test list holds the install test (after ``-k``/``-m``
deselection, never for ``--collect-only``), so that it runs beside the tests before that one; the test then
waits for it and checks its exit status and output like any command of its own. Run alone, the test starts it
itself. Whatever happens, the venv is deleted by a detached ``rm -rf`` (another ~30 s of unlinking) at the end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["NOT_SOURCE", "ROOT", "TEST_ID", "FreshInstall", "clean_env", "fresh_install", "remove_in_background",
           "start_in_background"]

ROOT = Path(__file__).resolve().parents[1]
TEST_ID = "tests/test_install.py::test_plain_pip_install_scans_faces"

# Not part of a source tree a user would install (and large, or another process's).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".grimp_cache", "demo", "out", "dfscan.db*", "*.onnx", "*.pt")

# A plain venv, then a plain `pip install` of the copy. --no-compile: no .pyc for the ~7 GB up front (~25 s
# here); Python writes those of the modules it imports.
_SCRIPT = '"$1" -m venv "$2" && "$2/bin/python" -m pip install --quiet --no-compile "$3"'


def clean_env() -> dict[str, str]:
    """This environment less the variables that would point the fresh venv at ours (pip's own settings kept)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_NO_INPUT"] = "1"
    return env


def remove_in_background(path: Path) -> None:
    """Move ``path`` aside at once and delete it in a detached ``rm -rf`` (it outlives pytest if it must)."""
    if not path.exists():
        return
    trash = path.with_name(f"{path.name}.removing")
    path.rename(trash)
    subprocess.Popen(["rm", "-rf", "--", str(trash)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


_PREFIX = "dfscan-install-"


def _remove_orphans() -> None:
    """Remove the installs of test sessions that were killed before they could (their pytest is gone)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        if path.name.endswith(".removing"):
            continue
        try:
            pid = int((path / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            remove_in_background(path)
        except (OSError, ValueError):
            continue  # being removed, or another's: left alone


class FreshInstall:
    """``python -m venv`` then ``pip install`` of a copy of the repository, in a process of its own."""

    def __init__(self) -> None:
        _remove_orphans()
        self.dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.source = self.dir / "src"
        self.venv = self.dir / "venv"
        self.log = self.dir / "install.log"
        shutil.copytree(ROOT, self.source, ignore=NOT_SOURCE)
        self.started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(["sh", "-c", _SCRIPT, "sh", sys.executable, str(self.venv), str(self.source)],
                                         cwd=self.dir, env=clean_env(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> tuple[int, float, str]:
        """(exit status, seconds since the start, the output) once it has ended; kills it after ``timeout`` s."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode, time.monotonic() - self.started, self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def discard(self) -> None:
        """Stop it if it still runs and delete everything it wrote (in the background)."""
        self.kill()
        remove_in_background(self.dir)


_pending: FreshInstall | None = None


def start_in_background() -> None:
    """Start the install now, for the install test to take later (``fresh_install``)."""
    global _pending
    if _pending is None:
        _pending = FreshInstall()


def fresh_install() -> FreshInstall:
    """The install started at the session's start, or a new one; the caller ``discard``s it."""
    global _pending
    install, _pending = _pending, None
    return install if install is not None else FreshInstall()


@atexit.register
def _discard_untaken() -> None:
    if _pending is not None:  # the session ended before the install test ran (interrupted, -x, ...)
        _pending.discard()
