"""``/v1/match`` and ``/v1/banks``: look an image or a hash up in the hash banks, and manage the banks.

``POST /v1/match`` takes one image (multipart) or a hash (JSON ``{"hash":
HEX, "kind": "pdq"}``) and answers the bank entries it matches, as a scan
would: an image's PDQ at full size (and, with dihedral hashes on, its
rotations and mirrors) within each PDQ bank's distance, its MD5 and SHA-256
against the exact banks.  ``GET /v1/banks`` lists the banks for any key;
creating (``POST /v1/banks/NAME``), importing into (``.../hashes``),
enabling, disabling and dropping (``.../enable|disable|drop``) need an admin
key.  Each path takes one method, so a 405's ``Allow`` names it.
The matcher (an index per bank) is built once per server and rebuilt for a
bank whose version moved.  While the server runs, it delivers the match
notices of matched files (:mod:`dfscan.serve.match_notices`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import BaseModel, Field

from dfscan.db import banks
from dfscan.db.errors import DatabaseError
from dfscan.serve._auth import AdminKey, Key
from dfscan.serve._openapi import errors
from dfscan.serve._uploads import parse_uploads, read_body
from dfscan.serve.addresses import AddressPolicy
from dfscan.serve.errors import BadRequest, Conflict, NotFound, ServeError
from dfscan.serve.match_notices import MatchNoticeDispatcher
from dfscan.workers.hashing import BadHash, BadLine, Matcher, PdqHash, check_hash, parse_bank_lines
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.scoring.hashes import pdq_of_bytes
from dfscan.workers.scoring.matches import bank_matcher, match_file

__all__ = ["mount", "router"]

@asynccontextmanager
async def _notices(app: FastAPI) -> AsyncIterator[None]:
    """Inside the application's lifespan (its context open): match notices delivered while the server runs."""
    state = app.state.dfscan
    dispatcher = MatchNoticeDispatcher(state.ctx.sessions, state.settings)
    dispatcher.start()
    try:
        yield
    finally:
        await asyncio.to_thread(dispatcher.stop)


router = APIRouter(tags=["banks"])


def mount(app: FastAPI) -> None:
    """This module's routes on ``app`` as its own routes (each with its path template, which the metrics label
    requests by), and the notices' dispatcher inside the application's lifespan."""
    app.router.routes.extend(router.routes)
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with outer(a) as state, _notices(a):
            yield state

    app.router.lifespan_context = lifespan
BankName = Annotated[str, Path(min_length=1, max_length=255, description="A bank's name.")]


class HashQuery(BaseModel):
    hash: str = Field(description="A hash as hex: PDQ (64 digits, most significant bit first), MD5 (32) or SHA-256 "
                                  "(64); one of the wrong length for its kind is refused (422).")
    kind: Literal["pdq", "md5", "sha256"] = "pdq"


class Unprocessable(ServeError):
    status_code = 422


# /v1/match reads its body itself (its size is checked first): an image as multipart, or a hash as JSON.
MATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "One image, as a part with a filename."}}}},
    "application/json": {"schema": {"type": "object", "required": ["hash"], "properties": {
        "hash": {"type": "string", "pattern": "^[0-9a-fA-F]{32}([0-9a-fA-F]{32})?$"},
        "kind": {"type": "string", "enum": ["pdq", "md5", "sha256"], "default": "pdq"}}}}}}}


class BankBody(BaseModel):
    kind: Literal["pdq", "md5", "sha256"] = "pdq"
    distance: int = Field(31, ge=0, le=256, description="PDQ: match within this many bits of 256.")
    webhook_url: str | None = Field(None, description="POST each matched file here, signed with the secret answered.")


_LOCK = threading.Lock()


def _state(request: Request) -> Any:
    return request.app.state.dfscan


def _matcher(request: Request) -> Matcher:
    """The server's matcher, made on first use, its banks brought up to date (one small query)."""
    state = _state(request)
    with _LOCK:
        matcher = getattr(request.app.state, "bank_matcher", None)
        if matcher is None:
            matcher = bank_matcher(state.ctx.sessions, state.settings.db_retry_seconds)
            request.app.state.bank_matcher = matcher
        matcher.refresh()
    return matcher


def _answer(looked: bool, found: list, **extra: Any) -> dict:
    return {**extra, "matched": looked,
            "matches": [{"bank": f.bank, "ref": f.ref, "label": f.label, "distance": f.distance, "hash": f.hash}
                        for f in found]}


def _match_image(request: Request, data: bytes) -> dict:
    """The file's matches; a file that is no image still has its exact hashes matched (``status: error``)."""
    settings = _state(request).settings
    exact = {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    try:
        image: PdqHash | None = pdq_of_bytes(data, settings.max_pixels, dihedral=settings.pdq_dihedral)
    except ImageError as exc:
        looked, found = match_file(_matcher(request), None, exact)
        return _answer(looked, found, status="error", error=exc.message, error_code=exc.code, pdq=None,
                       pdq_quality=None, **exact, note=None)
    assert image is not None
    looked, found = match_file(_matcher(request), image, exact)
    note = None if image.matchable else f"PDQ quality {image.quality} under 50: not matched"
    return _answer(looked, found, status="ok", pdq=image.hex, pdq_quality=image.quality, **exact, note=note)


def _match_hash(request: Request, query: HashQuery) -> dict:
    try:
        value = check_hash(query.hash, query.kind)
    except BadHash as exc:
        raise Unprocessable(str(exc)) from None
    matcher = _matcher(request)
    if query.kind == "pdq":
        looked, found = match_file(matcher, PdqHash(value, 100), {})
    else:
        looked, found = match_file(matcher, None, {query.kind: value})
    return _answer(looked, found, hash=value, kind=query.kind)


@router.post("/v1/match", responses=errors(400, 401, 408, 413, 422), openapi_extra=MATCH_BODY)
async def match(request: Request, key: Key) -> dict:
    """Match one image (multipart) or one hash (JSON ``{"hash": ..., "kind": "pdq"}``) against the enabled banks.

    A file that can't be decoded is an answer with ``status: error`` and a reason (its MD5 and SHA-256 are still
    matched against the exact banks), not an HTTP error.
    """
    settings = _state(request).settings
    body = await read_body(request, max_bytes=settings.max_upload_bytes, timeout_s=settings.request_timeout_s)
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        try:
            query = HashQuery.model_validate_json(body)
        except ValueError as exc:
            raise BadRequest(f"expected JSON {{\"hash\": HEX, \"kind\": \"pdq\"}}: {str(exc).splitlines()[0]}") from None
        return await asyncio.to_thread(_match_hash, request, query)
    uploads = await parse_uploads(request, body, max_files=1)
    return await asyncio.to_thread(_match_image, request, uploads[0].data)


def _bank_dict(info: banks.BankInfo) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in info.as_dict().items()}


@router.get("/v1/banks", responses=errors(401))
def list_banks(request: Request, key: Key) -> dict:
    """Every hash bank: kind, distance, hashes, whether it is matched."""
    with _state(request).ctx.sessions() as session:
        return {"banks": [_bank_dict(b) for b in banks.list_banks(session)]}


def _write(request: Request, work) -> Any:
    try:
        with _state(request).ctx.sessions.begin() as session:
            return work(session)
    except banks.BankNotFound as exc:
        raise NotFound(str(exc)) from None
    except banks.BankExists as exc:
        raise Conflict(str(exc)) from None
    except DatabaseError as exc:
        raise BadRequest(str(exc)) from None


@router.post("/v1/banks/{name}", status_code=201,
             responses={**errors(400, 401, 403, 422), 409: {"description": "A bank of that name exists already."}})
def create_bank(request: Request, name: BankName, body: BankBody, key: AdminKey) -> dict:
    """Create an empty bank (admin keys); a webhook's signing secret is answered once.

    A webhook URL the server must not reach (an internal address, not http(s)) is refused (422), as a scan's
    callback URL is; it is checked again at each delivery.
    """
    if body.webhook_url is not None:
        AddressPolicy(_state(request).settings.callback_allow).check(body.webhook_url)
    info, secret = _write(request, lambda s: banks.create_bank(s, name, kind=body.kind, distance=body.distance,
                                                               webhook_url=body.webhook_url))
    return {**_bank_dict(info), "webhook_secret": secret}


@router.post("/v1/banks/{name}/hashes", responses=errors(400, 401, 403, 404, 408, 413, 422))
async def import_hashes(request: Request, name: BankName, key: AdminKey,
                        strict: Annotated[bool, Query(description="Refuse the whole body at a bad line.")] = False) -> dict:
    """Add hashes (text body: one a line, optionally ``,REF,LABEL``); bad lines are answered with their numbers."""
    settings = _state(request).settings
    body = await read_body(request, max_bytes=settings.max_upload_bytes, timeout_s=settings.request_timeout_s)
    lines = body.decode("utf-8", errors="replace").splitlines()

    def work(session) -> dict:
        parsed = list(parse_bank_lines(lines, banks.get_bank(session, name).kind))
        bad = [p for p in parsed if isinstance(p, BadLine)]
        if bad and strict:
            raise BadRequest(f"{bad[0]} (strict: nothing imported)")
        added = banks.add_hashes(session, name, [p for p in parsed if not isinstance(p, BadLine)])
        return {"bank": name, "added": added, "bad_lines": [{"line": b.lineno, "error": b.message} for b in bad]}

    return await asyncio.to_thread(_write, request, work)


@router.post("/v1/banks/{name}/{action}", responses=errors(401, 403, 404, 422))
def bank_action(request: Request, name: BankName, action: Literal["enable", "disable", "drop"],
                key: AdminKey) -> dict:
    """``enable``: match against the bank again; ``disable``: stop (its hashes stay); ``drop``: delete the bank
    and its hashes (matches already found keep its name)."""
    if action == "drop":
        _write(request, lambda s: banks.drop_bank(s, name))
        return {"name": name, "dropped": True}
    return _bank_dict(_write(request, lambda s: banks.set_enabled(s, name, action == "enable")))
