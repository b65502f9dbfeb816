"""Library chatter goes to the log at debug level, not to the operator's stderr.

libjpeg-turbo inside DALI ("Corrupt JPEG data: premature end of data
segment"), libtiff, and Pillow's Python warnings ("Corrupt EXIF data") write
a line per odd file; a scan of a few hundred awkward files used to print ~600
of them, even with ``--json``.  The file's row already says what matters.

:func:`library_chatter_to_log` is process-wide (file descriptor 2 and the
warnings hook), so only a command's top level uses it, once, around the
whole run, before it creates anything that holds ``sys.stderr`` (a progress
bar).  Inside it ``sys.stderr`` is a new stream on the real terminal; what C
libraries write to descriptor 2 is read from a pipe by a thread and logged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

log = logging.getLogger("dfscan.library")


class Chatter:
    """How many lines of library chatter were logged instead of printed."""

    def __init__(self) -> None:
        self.lines = 0
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        text = text.rstrip()
        if not text:
            return
        with self._lock:
            self.lines += 1
        log.debug("%s", text)

    def summary(self) -> str | None:
        """One line for stderr, or None when there was nothing."""
        if not self.lines:
            return None
        return f"{self.lines} line(s) of image-library warnings went to the log (logger dfscan.library, debug level)"


@contextlib.contextmanager
def library_chatter_to_log() -> Iterator[Chatter]:
    """Route C-level stderr and Python warnings to the debug log for the duration."""
    chatter = Chatter()
    saved_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' signature
        chatter.note(f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")

    try:
        # Only when sys.stderr is descriptor 2 itself: under a test runner's capture
        # (click's CliRunner, pytest) it is something else, and that is left alone.
        if sys.stderr is None or sys.stderr.fileno() != 2:
            raise ValueError("sys.stderr is not descriptor 2")
        sys.stderr.flush()
        real_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
    except (OSError, AttributeError, ValueError):  # no usable descriptor 2 (captured, closed): only the warnings
        warnings.showwarning = show
        try:
            yield chatter
        finally:
            warnings.showwarning = saved_show
        return
    saved_stderr = sys.stderr
    os.dup2(write_fd, 2)
    os.close(write_fd)
    real = io.TextIOWrapper(os.fdopen(real_fd, "wb", buffering=0), encoding=getattr(saved_stderr, "encoding", None)
                            or "utf-8", errors="backslashreplace", line_buffering=True, write_through=True)
    sys.stderr = real
    warnings.showwarning = show

    def pump() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while block := pipe.read(65536):
                *lines, pending = (pending + block).split(b"\n")
                for raw in lines:
                    chatter.note(raw.decode("utf-8", "backslashreplace"))
            chatter.note(pending.decode("utf-8", "backslashreplace"))

    reader = threading.Thread(target=pump, name="library-chatter", daemon=True)
    reader.start()
    try:
        yield chatter
    finally:
        warnings.showwarning = saved_show
        with contextlib.suppress(Exception):
            real.flush()
        os.dup2(real.fileno(), 2)  # descriptor 2 is the terminal again; the pipe's last writer is gone
        reader.join(timeout=5)
        sys.stderr = saved_stderr
        real.close()
