"""Videos in object storage: sniffed with one ranged GET, then streamed by FFmpeg from a presigned URL.

A video is never read whole (it may be gigabytes): the container is named from
the object's first bytes (:meth:`ObjectStore.get`, as the image reader's
header), and FFmpeg opens a presigned GET URL (:meth:`ObjectStore.presigned_get`,
SigV4, valid for the time limit plus a margin) with its own
``http`` protocol, which seeks with ``Range`` requests of at most
:data:`HTTP_REQUEST_BYTES` each: sampling T frames reads about what it reads on
disk, a few requests per target, never the whole object.

The presigned URL carries the access key id and a signature. It exists only
inside :func:`open_object`'s caller: every message that FFmpeg or PyAV makes
about it passes :meth:`ObjectVideo.clean` (the URL replaced by the object's
``s3://`` URL, anything left masked by :func:`dfscan.core.redact.mask_text`) before
it reaches a row, and the object's ``repr`` leaves it out.  PyAV keeps
FFmpeg's own log off unless a program turns it on (``av.logging``); dfscan
never does.

Failures are the image reader's: a vanished object is ``missing``, access
denied ``unreadable`` (from the GET of the first bytes, or from FFmpeg's HTTP
status when it changes between the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dfscan.core.redact import mask_text
from dfscan.scanner.objects import ObjectError, ObjectStore, ObjectUrl, object_error
from dfscan.workers.video._containers import SIGNATURE_BYTES, ContainerSpec, container_for, what_else
from dfscan.workers.reading.errors import VideoError

# The presigned URL outlives the per-file time limit by this much, and no more.
PRESIGN_MARGIN_S = 60
# FFmpeg's HTTP requests ask for at most this many bytes each (its ``request_size`` option; the image reader's
# head size). Without it each seek opens a ``Range: bytes=N-`` request to the object's end, and the store sends
# whatever the TCP buffers take before FFmpeg hangs up: measured on 127.0.0.1, 16 frames of a 12.7 MB MP4 moved
# 60 MB that way, 4.7 MB with 256 KiB requests (tests/test_s3.py measures it on every run).
HTTP_REQUEST_BYTES = 256 << 10

# PyAV's exceptions for FFmpeg's HTTP statuses -> (error code, reason) of the row.
_HTTP_ERRORS = {
    "HTTPNotFoundError": ("missing", "object not found (vanished since it was listed)"),
    "HTTPForbiddenError": ("unreadable", "access denied (HTTP 403)"),
    "HTTPUnauthorizedError": ("unreadable", "access denied (HTTP 401)"),
    "HTTPBadRequestError": ("unreadable", "object store error (HTTP 400)"),
    "HTTPTooManyRequestsError": ("unreadable", "object store error (HTTP 429: throttled)"),
    "HTTPClientError": ("unreadable", "object store error (HTTP 4xx)"),
    "HTTPServerError": ("unreadable", "object store error (HTTP 5xx)"),
    "HTTPError": ("unreadable", "object store error (HTTP)"),
}


@dataclass(frozen=True)
class ObjectVideo:
    """One video object, ready for FFmpeg: its container, its size, and the URL FFmpeg opens."""

    url: str  # s3://bucket/key: what rows and messages name
    spec: ContainerSpec
    size: int
    store: ObjectStore = field(repr=False)
    presigned: str = field(repr=False)  # a secret: never printed, stored or logged

    @property
    def options(self) -> dict[str, str]:
        """FFmpeg's options for opening :attr:`presigned`."""
        return {"request_size": str(HTTP_REQUEST_BYTES)}

    def clean(self, text: str) -> str:
        """``text`` (an FFmpeg or PyAV message) with the presigned URL, or any part of it, out."""
        return mask_text(str(text).replace(self.presigned, self.url))

    def http_error(self, exc: BaseException) -> VideoError | None:
        """The row's reason when FFmpeg's request got an HTTP error status (None: it was something else)."""
        for cls in type(exc).__mro__:
            found = _HTTP_ERRORS.get(cls.__name__)
            if found is not None:
                return VideoError(*found)
        return None

    def missing_index(self) -> str | None:
        """Why the container looks cut short (the MP4 box walk, by ranged GETs), or None."""
        if self.spec.missing_index is None:
            return None
        try:
            return self.spec.missing_index(self._read_at, self.size)
        except ObjectError:
            return None

    def _read_at(self, offset: int, n: int) -> bytes:
        where = ObjectUrl.parse(self.url)
        try:
            r = self.store.client.get_object(Bucket=where.bucket, Key=where.key, Range=f"bytes={offset}-{offset + n - 1}")
            body = r["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as exc:  # noqa: BLE001 - the box walk is a hint: a failed read ends it
            raise object_error(exc) from None


def open_object(url: str, store: ObjectStore, time_limit_s: float) -> ObjectVideo:
    """The video object at ``url``: its first bytes read and named, a presigned GET URL made; raises VideoError."""
    try:
        head, info = store.get(url, SIGNATURE_BYTES)
    except ObjectError as exc:
        raise VideoError(exc.code, exc.message) from None
    if not head:
        raise VideoError("empty", "empty object")
    spec = container_for(head)
    if spec is None:
        raise VideoError("not-video", f"not a video: the object is {what_else(head)} (named like a video)")
    try:
        presigned = store.presigned_get(url, int(math.ceil(time_limit_s)) + PRESIGN_MARGIN_S)
    except ObjectError as exc:
        raise VideoError(exc.code, exc.message) from None
    return ObjectVideo(url, spec, info.size, store, presigned)
