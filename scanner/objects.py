"""Object-storage roots: ``s3://bucket/prefix`` URLs, listed and read through boto3.

A scan names objects by their URL (``s3://bucket/key``): that is the path a
chunk carries and a result row keeps.  The walker lists a root's keys page by
page (``list_objects_v2``; one page in memory at a time) and the workers'
reader gets each object's bytes (:mod:`workers.reading.reader`), both through an
:class:`ObjectStore`.

Credentials come from boto3's standard chain (environment variables, the
shared config and credentials files with ``AWS_PROFILE``, container and
instance roles); dfscan never takes, prints or stores them.  The endpoint of
an S3-compatible store is ``--s3-endpoint-url`` (``DFSCAN_S3_ENDPOINT_URL``),
else boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.

Failures are data where they concern one object (:class:`ObjectError`, which
the reader turns into an error row) and setup errors where they concern a
root (:class:`~scanner.errors.RootNotFound`: no such bucket, access denied,
endpoint unreachable).  Messages are built from the error's code only:
botocore's own text never reaches a row or a terminal.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dfscan.core.redact import mask_url
from dfscan.scanner.errors import RootNotFound, ScannerError

__all__ = ["SCHEME", "ObjectError", "ObjectInfo", "ObjectPath", "ObjectStore", "ObjectUrl", "is_object_url",
           "forget_stores", "object_store", "store_of_scan", "walk_objects"]  # fmt: skip

SCHEME = "s3://"
# Keys per list_objects_v2 page (S3's maximum): the walker holds one page at a time.
LIST_PAGE_SIZE = 1000
# Throttling (503 SlowDown), 5xx and dropped connections are retried by botocore with back-off.
RETRIES = {"mode": "standard", "max_attempts": 6}
# A root's check at start-up fails fast: a wrong endpoint is a setup error, not a retry loop.
PROBE_RETRIES = {"mode": "standard", "max_attempts": 2}
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
# Connections per client: the reader's threads (8 by default) each hold one while reading.
MAX_POOL_CONNECTIONS = 32


class ObjectError(ScannerError):
    """One object can't be read; ``code`` is a per-image reason of :mod:`workers.reading.errors` (``missing``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_object_url(path: str) -> bool:
    return path.startswith(SCHEME)


@dataclass(frozen=True)
class ObjectUrl:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> "ObjectUrl":
        if not is_object_url(url):
            raise ScannerError(f"{url}: not an {SCHEME} URL")
        bucket, _, key = url[len(SCHEME):].partition("/")
        if not bucket:
            raise RootNotFound(f"{url}: no bucket name ({SCHEME}BUCKET/PREFIX)")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """What the listing (or a HEAD request) says of an object: the incremental scan's "stat"."""

    size: int
    mtime: float  # LastModified, whole seconds (the listing and the Last-Modified header agree at that precision)
    etag: str


class ObjectPath(str):
    """An object's URL that also carries what the listing said of it, so that ``--incremental`` needs no request.

    It travels as a plain string (chunks, JSON messages, SQL); :meth:`stat`
    asks the store only for a URL that came from a path list.
    """

    __slots__ = ("info", "store")

    info: ObjectInfo | None
    store: "ObjectStore"

    def __new__(cls, url: str, store: "ObjectStore", info: ObjectInfo | None = None) -> "ObjectPath":
        self = super().__new__(cls, url)
        self.store = store
        self.info = info
        return self

    def stat(self) -> ObjectInfo:
        """Size and LastModified (raises :class:`ObjectError`)."""
        return self.info if self.info is not None else self.store.head(str(self))


def _mtime(value: datetime) -> float:
    return float(int(value.timestamp()))


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


def _error_code(exc: BaseException) -> tuple[str, int | None]:
    """The S3 error code and HTTP status of a botocore ClientError ("" and None for anything else)."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status


_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken"}  # fmt: skip


def object_error(exc: BaseException) -> ObjectError:
    """The per-object reason for a failed request: vanished, denied, unreachable, or the store's error code."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code in _MISSING or status == 404:
            return ObjectError("missing", "object not found (vanished since it was listed)")
        if code in _DENIED or status == 403:
            return ObjectError("unreadable", f"access denied ({code or status})")
        return ObjectError("unreadable", f"object store error {code or status}")
    if isinstance(exc, BotoCoreError):
        return ObjectError("unreadable", _transport_reason(exc))
    return ObjectError("unreadable", f"read failed ({type(exc).__name__})")


def _transport_reason(exc: BaseException) -> str:
    """Why a request got no answer: no credentials in the chain, or the store out of reach (never botocore's text)."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ("no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance "
                "role)")
    return f"object store unreachable ({type(exc).__name__})"


class ObjectStore:
    """One S3 endpoint: a boto3 client made on first use, shared by every thread of this process.

    boto3 clients are thread-safe, sessions are not: the session lives only
    inside :meth:`_make`, under a lock.  A process that forks (Celery's
    prefork pool) makes its own client.
    """

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._lock = threading.Lock()
        self._clients: dict[tuple[int, str], Any] = {}

    def __repr__(self) -> str:
        return f"ObjectStore({mask_url(self.endpoint_url) if self.endpoint_url else 'AWS default'})"

    @property
    def where(self) -> str:
        return mask_url(self.endpoint_url) if self.endpoint_url else "the default AWS endpoint"

    @property
    def client(self) -> Any:
        return self._client("io")

    def _client(self, purpose: str) -> Any:
        key = (os.getpid(), purpose)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = self._make(PROBE_RETRIES if purpose == "probe" else RETRIES,
                                                             "s3v4" if purpose == "presign" else None)
        return client

    def _make(self, retries: dict, signature_version: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        quiet_sdk_logs()
        config = Config(retries=retries, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                        max_pool_connections=MAX_POOL_CONNECTIONS, signature_version=signature_version,
                        # Path-style (endpoint/bucket/key) works with every S3-compatible store.
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    # --- roots --------------------------------------------------------------------------

    def check_root(self, url: str) -> str:
        """``url`` if its bucket can be listed and it names something; raises :class:`RootNotFound`.

        "Something" is an object under the folder ``PREFIX/``, or the object
        ``PREFIX`` itself; a bucket (no prefix) may be empty.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        where = ObjectUrl.parse(url)
        folder = where.key if not where.key or where.key.endswith("/") else where.key + "/"
        probe = self._client("probe")
        try:
            page = probe.list_objects_v2(Bucket=where.bucket, Prefix=folder, MaxKeys=1)
            found = bool(page.get("KeyCount", len(page.get("Contents", ()))))
            if not found and folder != where.key:
                found = self._exists(probe, where)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "NoSuchBucket" or status == 404:
                raise RootNotFound(f"{url}: no such bucket at {self.where}") from None
            if code in _DENIED or status == 403:
                raise RootNotFound(f"{url}: access denied ({code or status}) at {self.where}") from None
            raise RootNotFound(f"{url}: object store error {code or status} at {self.where}") from None
        except BotoCoreError as exc:
            raise RootNotFound(f"{url}: {_transport_reason(exc)} at {self.where}") from None
        if where.key and not found:
            raise RootNotFound(f"{url}: no objects under this prefix")
        return url

    @staticmethod
    def _exists(client: Any, where: ObjectUrl) -> bool:
        """Whether the key exists (a 403 says it does: its row will say it can't be read)."""
        from botocore.exceptions import ClientError

        try:
            client.head_object(Bucket=where.bucket, Key=where.key)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in _MISSING or status == 404:
                return False
            if code in _DENIED or status == 403:
                return True
            raise
        return True

    def walk(self, url: str, wanted: Callable[[str], bool], page_size: int | None = None) -> Iterator[ObjectPath]:
        """The objects under ``url`` whose key ``wanted`` accepts, in key order, one page in memory at a time.

        A URL that names one object exactly is that object, whatever its
        extension (as a file given as a root); otherwise it is a folder:
        ``s3://b/photos`` lists ``photos/...``, never ``photos2/...``.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        where = ObjectUrl.parse(url)
        prefix = where.key
        if prefix and not prefix.endswith("/"):
            try:
                info = self.head(url)
            except ObjectError as exc:
                if exc.code != "missing":  # there, but not readable: its row will say why
                    yield ObjectPath(url, self)
                    return
                prefix += "/"
            else:
                yield ObjectPath(url, self, info)
                return
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=where.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size or LIST_PAGE_SIZE})
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    if key.endswith("/") or not wanted(key):
                        continue
                    info = ObjectInfo(int(item["Size"]), _mtime(item["LastModified"]), _etag(item.get("ETag")))
                    yield ObjectPath(f"{SCHEME}{where.bucket}/{key}", self, info)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectError("unreadable", f"listing failed: {object_error(exc).message}") from None

    # --- objects ------------------------------------------------------------------------

    def head(self, url: str) -> ObjectInfo:
        """Size, LastModified and ETag of one object (raises :class:`ObjectError`)."""
        where = ObjectUrl.parse(url)
        try:
            r = self.client.head_object(Bucket=where.bucket, Key=where.key)
        except Exception as exc:  # noqa: BLE001 - every failure is this object's reason
            raise object_error(exc) from None
        return ObjectInfo(int(r["ContentLength"]), _mtime(r["LastModified"]), _etag(r.get("ETag")))

    def get(self, url: str, first: int) -> tuple[bytes, ObjectInfo]:
        """At most the ``first`` bytes of the object (all of it when it is that small) and its info.

        One ranged GET: the response's Content-Range gives the full size.
        """
        where = ObjectUrl.parse(url)
        try:
            r = self.client.get_object(Bucket=where.bucket, Key=where.key, Range=f"bytes=0-{max(first, 1) - 1}")
            body = r["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        except Exception as exc:  # noqa: BLE001 - every failure is this object's reason
            code, status = _error_code(exc)
            if code == "InvalidRange" or status == 416:  # S3 refuses any range of an empty object
                return b"", self.head(url)
            raise object_error(exc) from None
        total = r.get("ContentRange", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(r.get("ContentLength", len(data)))
        return data, ObjectInfo(size, _mtime(r["LastModified"]), _etag(r.get("ETag")))


    def presigned_get(self, url: str, expires_s: int) -> str:
        """A GET URL for the object, valid ``expires_s`` seconds, for a reader that is not boto3 (FFmpeg).

        Signed with SigV4 (boto3 presigns S3 with SigV2 by default, which newer AWS regions refuse).  The
        URL holds the access key id and a signature: a secret, like the credentials themselves.
        """
        where = ObjectUrl.parse(url)
        try:
            return self._client("presign").generate_presigned_url(
                "get_object", Params={"Bucket": where.bucket, "Key": where.key}, ExpiresIn=expires_s)
        except Exception as exc:  # noqa: BLE001 - no credentials in the chain: this object's reason
            raise object_error(exc) from None


def quiet_sdk_logs() -> None:
    """Keep boto3's and botocore's DEBUG records (request headers, with the access key id) out of every log.

    A process that logs at DEBUG (``--loglevel DEBUG``) would otherwise write
    each request's Authorization header.  Only loggers left at their default
    level are raised; one an operator set on purpose is kept.
    """
    for name in ("boto3", "botocore", "s3transfer"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def walk_objects(url: str, wanted: Callable[[str], bool], endpoint_url: str | None,
                 on_skip: Callable[[str, str], None] | None = None) -> Iterator[ObjectPath]:
    """:meth:`ObjectStore.walk` for the walker: a listing that fails part-way is reported, as a directory is."""
    try:
        yield from object_store(endpoint_url).walk(url, wanted)
    except ObjectError as exc:
        if on_skip is not None:
            on_skip(url, exc.message)


_STORES: dict[str | None, ObjectStore] = {}
_STORES_LOCK = threading.Lock()


def object_store(endpoint_url: str | None = None) -> ObjectStore:
    """The process's store for ``endpoint_url`` (None: boto3's default endpoint), made once."""
    with _STORES_LOCK:
        store = _STORES.get(endpoint_url)
        if store is None:
            store = _STORES[endpoint_url] = ObjectStore(endpoint_url)
        return store


def store_of_scan(audit: dict | None) -> ObjectStore:
    """The store a scan listed its ``s3://`` roots from, by its audit record (``walk.s3_endpoint_url``).

    What reads a scan's objects again later (the report's thumbnails, ``dfscan explain``) asks the same endpoint.
    """
    walk = (audit or {}).get("walk") or {}
    return object_store(walk.get("s3_endpoint_url"))


def forget_stores() -> None:
    """Drop this process's stores and their clients: the next use makes new ones (credentials changed)."""
    with _STORES_LOCK:
        _STORES.clear()
