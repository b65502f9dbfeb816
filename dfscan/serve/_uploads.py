"""Reading an upload request within its limits, and turning its files into scan-row fields.

The body is read with a size limit (413 beyond it) and a deadline (408: a slow
client can't hold the server), then parsed as multipart with a file-count
limit; anything that is not what its headers claim is a 400 with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from dfscan.db.records import ProvenanceRow, ResultRow
from dfscan.serve.errors import BadRequest, RequestTimeout, TooLarge
from dfscan.workers.provenance import ProvenanceReader
from dfscan.workers.reading import FileData, ImageError
from dfscan.workers.scoring import Item, Payload, TensorPayload

__all__ = ["Upload", "read_body", "parse_uploads", "decode_uploads", "row_fields"]


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


async def read_body(request: Request, *, max_bytes: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length {declared!r}") from None
        if n > max_bytes:
            raise TooLarge(f"request body of {n} bytes is over the {max_bytes}-byte limit")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for block in request.stream():
                size += len(block)
                if size > max_bytes:
                    raise TooLarge(f"request body is over the {max_bytes}-byte limit")
                parts.append(block)
    except TimeoutError:
        raise RequestTimeout(f"the request body took longer than {timeout_s:g} s to arrive") from None
    except ClientDisconnect:
        raise BadRequest("the client went away before sending the whole body") from None
    return b"".join(parts)


async def parse_uploads(request: Request, body: bytes, *, max_files: int) -> list[Upload]:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise BadRequest(f"expected multipart/form-data with image files, got {ctype or 'no Content-Type'!r}")

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=100).parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    uploads: list[Upload] = []
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(value.filename or f"file{len(uploads)}", await value.read()))
    finally:
        await form.close()
    if not uploads:
        raise BadRequest("no files in the request: send images as multipart parts with a filename (curl -F file=@x.jpg)")
    if _cut_short(body):
        raise BadRequest("the multipart body ends before its closing boundary")
    return uploads


def _cut_short(body: bytes) -> bool:
    """A body cut short parses as fewer parts: its closing boundary (``--BOUNDARY--``) is missing."""
    return not body.rstrip().endswith(b"--")


def decode_uploads(decoder, uploads: list[Upload], reader: ProvenanceReader | None = None) -> list[Payload | ImageError]:
    """Each upload decoded exactly as the scan's reader and decoder would (same checks, same tensor or face crops),
    and its provenance read (``reader``: the scan stages' own, with their trust anchors; None: provenance off)."""
    out: list[Payload | ImageError | None] = [None] * len(uploads)
    files: list[FileData] = []
    where: list[int] = []
    now = time.time()
    for i, up in enumerate(uploads):
        if not up.data:
            out[i] = ImageError("empty", "empty file")
        else:
            files.append(FileData(path=up.name, size=len(up.data), mtime=now, data=up.data))
            where.append(i)
    if files:
        for i, decoded in zip(where, decoder.decode_batch(files)):
            out[i] = TensorPayload(decoded) if isinstance(decoded, np.ndarray) else decoded
            if reader is not None and not isinstance(out[i], ImageError):
                out[i] = _Declaring(out[i], reader.image(uploads[i].data))  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


@dataclass
class _Declaring:
    """An upload's payload whose row carries the upload's provenance."""

    payload: Payload
    provenance: ProvenanceRow

    @property
    def kind(self) -> str:
        return self.payload.kind

    def inputs(self):
        return self.payload.inputs()

    def row(self, item, decisions, verdict, now) -> ResultRow:
        return replace(self.payload.row(item, decisions, verdict, now), provenance=self.provenance,
                       synthetic_declared=self.provenance.synthetic_declared)


def result_fields(name: str, size: int, row: ResultRow) -> dict:
    """:func:`row_fields` of a scan row made for an upload; with faces, each face and how many were found."""
    fields = row_fields(name, size, row.status, row.label, row.p_fake, row.confidence, row.error, row.error_code)
    if row.faces_found is not None:
        fields["faces"] = [{"index": f.index, "x": f.x, "y": f.y, "w": f.w, "h": f.h, "detector_score": f.detector_score,
                            "p_fake": f.p_fake, "label": f.label} for f in row.face_rows]
        fields["faces_found"] = row.faces_found
    if row.provenance is not None:
        fields["provenance"] = provenance_fields(row.provenance)
    return fields


def provenance_fields(p: ProvenanceRow) -> dict:
    """A file's provenance as ``scan_provenance`` names it (``c2pa_codes`` a list), with the reason of an error."""
    return {"c2pa": p.c2pa, "c2pa_state": p.c2pa_state, "c2pa_codes": p.codes.split(",") if p.codes else [],
            "signer": p.signer, "issuer": p.issuer, "generator": p.generator, "source_type": p.source_type,
            "settings_key": p.settings_key, "watermark": p.watermark, "watermark_ber": p.watermark_ber,
            "synthetic_declared": p.synthetic_declared, "error": p.error}


def upload_item(up: Upload) -> Item:
    return Item(up.name, len(up.data))


def row_fields(name: str, size: int, status: str, label: str | None = None, p_fake: float | None = None,
               confidence: float | None = None, error: str | None = None, error_code: str | None = None) -> dict:
    """The fields a scan row has (``dfscan results --format json``), for one uploaded file."""
    return {"name": name, "size": size, "status": status, "label": label, "p_fake": p_fake,
            "confidence": confidence, "error": error, "error_code": error_code}
