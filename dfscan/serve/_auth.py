"""Who may call what: the bearer-key check of every request, and the dependencies routes declare.

Every ``/v1`` request needs a valid key. A ``scanner`` key (the default role) sees, cancels and reviews the
scans it started; a ``reviewer`` key only reads and reviews the scans started by keys of its team
(:data:`REVIEWER_MAY`; ``db.api_keys.visible_to``); an ``admin`` key sees every scan, those started from
the command line, by the fleet or the schedule included. The operations endpoints (:data:`OPS_PATHS`) need
an admin key when they are served on the main bind; on a bind of their own (``--ops-bind``) they need none.

Routes take the checked key as :data:`Key`; admin-only routes take :data:`AdminKey` instead.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from dfscan.db.api_keys import AuthorizedKey, check_scan_visible
from dfscan.serve._keys import KeyCache
from dfscan.serve.errors import Forbidden

__all__ = ["OPS_PATHS", "AdminKey", "Key", "admin_key", "api_key", "authorize", "check_visible"]

OPS_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
NEEDS_ADMIN = "this endpoint needs an admin key (dfscan api-key create --role admin)"
# What a reviewer key may call: read a scan, its results and its review queue, and post decisions.
REVIEWER_MAY = (("GET", re.compile(r"/v1/scans/[0-9]+(/results|/queue)?")),
                ("POST", re.compile(r"/v1/scans/[0-9]+/reviews")))
REVIEWER_ONLY = "a reviewer key only reads scans and posts reviews"


def _refuse(detail: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def authorize(scope: dict, keys: KeyCache, *, ops_need_admin: bool) -> JSONResponse | None:
    """The refusal of a request without the key its path needs, or ``None`` (the key then in ``request.state``).

    Checked before the body is read, so an unauthenticated upload costs the server nothing.
    """
    path = scope["path"]
    ops = ops_need_admin and path in OPS_PATHS
    if not (path.startswith("/v1/") or ops):
        return None
    request = Request(scope)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return _refuse("missing API key: send Authorization: Bearer <key>", 401)
    found = keys.cached(token) or await asyncio.to_thread(keys.check, token)
    if found is None:
        return _refuse("invalid or revoked API key", 401)
    if ops and not found.is_admin:
        return _refuse(NEEDS_ADMIN, 403)
    if found.is_reviewer and not any(scope["method"] in (method, "HEAD" if method == "GET" else method)
                                     and pattern.fullmatch(path) for method, pattern in REVIEWER_MAY):
        return _refuse(REVIEWER_ONLY, 403)
    request.state.api_key = found
    return None


def api_key(request: Request) -> AuthorizedKey:
    """The key :func:`authorize` checked for this request."""
    return request.state.api_key


Key = Annotated[AuthorizedKey, Depends(api_key)]


def admin_key(key: Key) -> AuthorizedKey:
    """The request's key when it is an admin key; 403 for any other."""
    if not key.is_admin:
        raise Forbidden(NEEDS_ADMIN)
    return key


AdminKey = Annotated[AuthorizedKey, Depends(admin_key)]


def check_visible(session: Session, scan_id: int, key: AuthorizedKey) -> None:
    """404 (``ScanNotFound``) for a scan that does not exist or that ``key`` may not see."""
    check_scan_visible(session, scan_id, key)
