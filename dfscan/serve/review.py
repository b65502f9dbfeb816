"""The review page (``/review``) and its API: analysts decide on a scan's flagged files in the browser.

Two doors to the same handlers: ``GET /v1/scans/{id}/queue`` and ``POST /v1/scans/{id}/reviews`` with a bearer
key, for tools with their own front end; ``/review/api/...`` with the page's session cookie and its CSRF token.
The page is HTML with no inline script or style (a strict Content-Security-Policy); the script renders every
path and every piece of metadata as text. Pictures are re-encoded by the server, never the stored file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from dfscan import db
from dfscan.db.api_keys import AuthorizedKey, visible_scans
from dfscan.db.banks import iter_matches
from dfscan.db.models import Scan
from dfscan.db.reviews import DECISIONS, ORDERS, REVIEW_STATES, QueueFilters, copies_of, file_of
from dfscan.htmlkit import escape
from dfscan.serve._auth import Key, check_visible
from dfscan.serve._openapi import SCAN_ID_MAX, errors
from dfscan.serve._review_media import image_jpeg, strip_jpeg
from dfscan.serve._sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, SessionStore, cookie_flags, csrf_ok, key_name
from dfscan.serve.errors import Forbidden, NotFound, ServeError, Unauthenticated

__all__ = ["CSP", "mount"]

STATIC = FilePath(__file__).with_name("static")
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
THUMB_PX = 384
NO_NUL = r"^[^\x00]*$"  # no stored path or text holds a NUL byte (PostgreSQL text cannot)
MAX_QUEUE_PAGE = 200

router = APIRouter()
ScanId = Annotated[int, Path(ge=1, le=SCAN_ID_MAX, description="A scan's id, as POST /v1/scans answered it.")]


class NotInScanError(ServeError):
    """A decision on a path the scan does not hold."""

    status_code = 422


class ReviewBody(BaseModel):
    """One decision on one file of the scan; ``copies``: the same decision on every copy (same content hash)."""

    path: str = Field(min_length=1, max_length=8192, pattern=NO_NUL, description="The file's path as the scan "
                      "stored it (a result row's `path`).")
    decision: Literal["fake", "real", "unsure", "escalate"]
    note: str | None = Field(None, max_length=4000, pattern=NO_NUL)
    copies: bool = Field(False, description="Also decide every other file of the scan with the same content hash.")


# --- who is asking --------------------------------------------------------------------------------------------------


def _store(request: Request) -> SessionStore:
    return request.app.state.review_sessions


async def _session_key(request: Request) -> tuple[AuthorizedKey, Any] | None:
    """The key behind the request's session cookie, checked again now (a revoked key ends its sessions)."""
    sid = request.cookies.get(COOKIE)
    session = _store(request).get(sid)
    if session is None:
        return None
    keys = request.app.state.dfscan.keys
    found = keys.cached(session.token) or await asyncio.to_thread(keys.check, session.token)
    if found is None:
        _store(request).close(sid)
        return None
    return found, session


async def page_key(request: Request) -> AuthorizedKey:
    """The session's key; 401 without a session, 403 for a state-changing request without its CSRF token."""
    found = await _session_key(request)
    if found is None:
        raise Unauthenticated("sign in at /review first")
    key, session = found
    if request.method not in ("GET", "HEAD") and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise Forbidden("missing or wrong CSRF token (X-CSRF-Token)")
    return key


PageKey = Annotated[AuthorizedKey, Depends(page_key)]


def _sessions(request: Request):
    return request.app.state.dfscan.ctx.sessions


# --- the handlers both doors share ----------------------------------------------------------------------------------


def _queue(request: Request, scan_id: int, key: AuthorizedKey, order: str, filters: QueueFilters,
           cursor: str | None, limit: int) -> dict:
    with _sessions(request)() as session:
        check_visible(session, scan_id, key)
        try:
            page = db.queue(session, scan_id, order=order, filters=filters, after=cursor, limit=limit)
        except db.UnknownDecision as exc:
            raise ServeError(str(exc)) from exc
        paths = [item["path"] for item in page.items]
        details = _details(session, scan_id, paths, [i["content_hash"] for i in page.items])
    items = []
    for item in page.items:
        item.update(details.get(item["path"], {}))
        item["decided_at"] = None if item["decided_at"] is None else item["decided_at"].isoformat()
        items.append(item)
    return {"scan_id": scan_id, "order": order, "items": items, "next_cursor": page.next_cursor}


def _details(session: Any, scan_id: int, paths: list[str], hashes: list[str | None]) -> dict[str, dict]:
    """What else dfscan knows about each path: face boxes, provenance, bank matches, heatmaps, copies."""
    out: dict[str, dict] = {p: {"face_boxes": [], "matched": [], "provenance": None, "explanations": [],
                                "copies": []} for p in paths}
    for f in db.iter_faces(session, scan_id=scan_id, paths=paths):
        out[f["path"]]["face_boxes"].append({k: f[k] for k in ("face_index", "x", "y", "w", "h", "p_fake", "label")})
    for p in db.iter_provenance(session, scan_id=scan_id, paths=paths):
        out[p["path"]]["provenance"] = {k: v for k, v in p.items() if k not in ("scan_id", "path")}
    for row in iter_matches(session, scan_id=scan_id, paths=paths):
        out[row["path"]]["matched"].append({k: row[k] for k in ("bank", "ref", "label", "distance", "frame")})
    for e in db.explanations_for(session, scan_id, paths):  # the n-th of a path is /review/overlay?n=
        out[e.path]["explanations"].append({"face_index": e.face_index, "frame_index": e.frame_index,
                                            "status": e.status, "reason": e.reason, "overlay": e.overlay is not None})
    copies = copies_of(session, scan_id, [h for h in hashes if h])
    for path, h in zip(paths, hashes):
        out[path]["copies"] = [p for p in copies.get(h or "", []) if p != path]
    return out


def _decide(request: Request, scan_id: int, key: AuthorizedKey, body: ReviewBody) -> dict:
    with _sessions(request).begin() as session:
        check_visible(session, scan_id, key)
        try:
            decided = db.record_decision(session, scan_id, body.path, body.decision, key_name(key),
                                         api_key_id=key.id, note=body.note, copies=body.copies)
        except db.NotInScan as exc:
            raise NotInScanError(str(exc)) from exc
    return {"scan_id": scan_id, "path": body.path, "decision": body.decision, "reviewer": key_name(key),
            "decided": decided, "copies": decided[1:]}


def _filters(label: str | None, status: str | None, review: str | None, p_min: float | None, p_max: float | None,
             faces_min: int | None, kind: str | None) -> QueueFilters:
    return QueueFilters(label=label, status=status, review=review, p_min=p_min, p_max=p_max, faces_min=faces_min,
                        kind=kind)


Order = Annotated[Literal["priority", "p_fake", "path"], Query(description="priority (default): bank matches, files "
                  "that declare themselves synthetic, then by p_fake, highest first; or p_fake; or path.")]
Label = Literal["real", "fake"] | None
Status = Literal["ok", "error", "no-face"] | None
Review = Annotated[Literal["undecided", "decided", "fake", "real", "unsure", "escalate"] | None,
                   Query(description="Undecided files, decided ones, or those whose current decision is this one.")]
PRange = Annotated[float | None, Query(ge=0.0, le=1.0)]
Faces = Annotated[int | None, Query(ge=0, le=10_000, description="At least this many faces scored.")]
Kind = Literal["image", "video"] | None
Limit = Annotated[int, Query(ge=1, le=MAX_QUEUE_PAGE)]
assert set(ORDERS) == {"priority", "p_fake", "path"} and set(REVIEW_STATES) == {"undecided", "decided", *DECISIONS}


@router.get("/v1/scans/{scan_id}/queue", tags=["review"], responses=errors(400, 401, 403, 404, 422))
def queue_v1(request: Request, scan_id: ScanId, key: Key, order: Order = "priority", label: Label = None,
             status: Status = None, review: Review = None, p_min: PRange = None, p_max: PRange = None,
             faces_min: Faces = None, kind: Kind = None, cursor: str | None = None, limit: Limit = 50) -> dict:
    """The scan's files to decide, in order, each with its verdict, current decision, face boxes, provenance,
    bank matches, heatmaps and copies; ``next_cursor`` continues the page."""
    return _queue(request, scan_id, key, order, _filters(label, status, review, p_min, p_max, faces_min, kind),
                  cursor, limit)


@router.post("/v1/scans/{scan_id}/reviews", tags=["review"], status_code=201,
             responses=errors(400, 401, 403, 404, 422))
def reviews_v1(request: Request, scan_id: ScanId, key: Key, body: ReviewBody) -> dict:
    """Record a decision on a file of the scan (a changed decision keeps the earlier one in ``reviews``); with
    ``copies``, on its copies too. Recorded as the key's name; ``scan_reviews`` shows the current one."""
    return _decide(request, scan_id, key, body)


@router.get("/review/api/scans/{scan_id}/queue", include_in_schema=False)
def queue_page(request: Request, scan_id: ScanId, key: PageKey, order: Order = "priority", label: Label = None,
               status: Status = None, review: Review = None, p_min: PRange = None, p_max: PRange = None,
               faces_min: Faces = None, kind: Kind = None, cursor: str | None = None, limit: Limit = 50) -> dict:
    return _queue(request, scan_id, key, order, _filters(label, status, review, p_min, p_max, faces_min, kind),
                  cursor, limit)


@router.post("/review/api/scans/{scan_id}/reviews", include_in_schema=False, status_code=201)
def reviews_page(request: Request, scan_id: ScanId, key: PageKey, body: ReviewBody) -> dict:
    return _decide(request, scan_id, key, body)


# --- pictures ---------------------------------------------------------------------------------------------------------


def _scan_file(request: Request, scan_id: int, key: AuthorizedKey, path: str) -> tuple[dict, list[str], Any, list]:
    """The file's result row, the scan's local roots, its object store and the file's frames; 404 for a path the
    scan did not record (nothing else is ever opened)."""
    from dfscan.scanner.objects import store_of_scan

    if "\x00" in path:
        raise NotFound(f"scan {scan_id} has no such file")
    with _sessions(request)() as session:
        check_visible(session, scan_id, key)
        row = file_of(session, scan_id, path)
        if row is None:
            raise NotFound(f"scan {scan_id} has no such file")
        roots, audit = session.execute(select(Scan.roots, Scan.settings).where(Scan.id == scan_id)).one()
        faces = [(f["x"], f["y"], f["w"], f["h"]) for f in db.iter_faces(session, scan_id=scan_id, paths=[path])]
        frames = list(db.iter_frames(session, scan_id=scan_id, paths=[path])) if row["kind"] == "video" else []
    local = [r for r in roots if not r.startswith("s3://")]
    store = store_of_scan(audit) if path.startswith("s3://") else None
    return row, local, store, faces or frames


def _picture(data: bytes | None, reason: str) -> Response:
    if data is None:  # the reason, as text, where the picture would be: the page shows it in the alt text
        return Response(reason.encode(), status_code=404, media_type="text/plain; charset=utf-8",
                        headers=SECURITY_HEADERS)
    return Response(data, media_type="image/jpeg", headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=300"})


@router.get("/review/thumb", include_in_schema=False)
async def thumb(request: Request, key: PageKey, scan: Annotated[int, Query(ge=1, le=SCAN_ID_MAX)],
                path: Annotated[str, Query(min_length=1, max_length=8192)]) -> Response:
    """A re-encoded JPEG of an image with its face boxes, or of a video's flagged track (its sampled frames)."""
    row, roots, store, marks = await asyncio.to_thread(_scan_file, request, scan, key, path)
    if row["kind"] == "video":
        data, reason = await asyncio.to_thread(strip_jpeg, path, marks, THUMB_PX // 2, store, roots or None)
    else:
        data, reason = await asyncio.to_thread(image_jpeg, path, marks, THUMB_PX, store, roots or None)
    return _picture(data, reason)


@router.get("/review/overlay", include_in_schema=False)
def overlay(request: Request, key: PageKey, scan: Annotated[int, Query(ge=1, le=SCAN_ID_MAX)],
            path: Annotated[str, Query(min_length=1, max_length=8192)],
            n: Annotated[int, Query(ge=0, le=10_000)] = 0) -> Response:
    """The ``n``-th Grad-CAM overlay of a file (PNG, as ``dfscan explain`` stored it)."""
    if "\x00" in path:
        raise NotFound("no heatmap")
    with _sessions(request)() as session:
        check_visible(session, scan, key)
        rows = db.explanations_for(session, scan, [path])
    if n >= len(rows) or rows[n].overlay is None:
        raise NotFound("no heatmap")
    return Response(rows[n].overlay, media_type="image/png", headers=SECURITY_HEADERS)


# --- pages ------------------------------------------------------------------------------------------------------------


def _html(title: str, body: str, *, status: int = 200, csrf: str | None = None, scan: int | None = None) -> HTMLResponse:
    meta = f'<meta name="csrf-token" content="{escape(csrf)}">' if csrf else ""
    data = f' data-scan="{scan}"' if scan is not None else ""
    script = '<script src="/review/static/review.js" defer></script>' if scan is not None else ""
    page = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title>{meta}<link rel="stylesheet" href="/review/static/review.css">{script}'
            f'</head>\n<body{data}>\n{body}\n</body></html>\n')
    return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


def _sign_in(request: Request, *, error: str = "", status: int = 200) -> HTMLResponse:
    scan = request.query_params.get("scan", "")
    target = f"/review?scan={quote(scan)}" if scan.isdigit() else "/review"
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (f'<main class="signin"><h1>dfscan review: sign in</h1>{alert}'
            f'<form method="post" action="/review/session">'
            f'<input type="hidden" name="next" value="{escape(target)}">'
            '<label for="api_key">API key</label> '
            '<input id="api_key" name="api_key" type="password" autocomplete="off" required autofocus> '
            '<button type="submit">Sign in</button></form>'
            '<p class="muted">A key from <code>dfscan api-key create --role reviewer --team TEAM</code>. '
            "It is asked once; the page then holds a session.</p></main>")
    return _html("dfscan review: sign in", body, status=status)


def _sign_out_form(csrf: str) -> str:
    return (f'<form method="post" action="/review/signout" class="signout">'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}"><button type="submit">Sign out</button>'
            "</form>")


@router.get("/review", include_in_schema=False)
async def review(request: Request, scan: Annotated[int | None, Query(ge=1, le=SCAN_ID_MAX)] = None) -> HTMLResponse:
    """The scans this key may review, or with ``?scan=ID`` that scan's queue; the sign-in form without a session."""
    found = await _session_key(request)
    if found is None:
        return _sign_in(request)
    key, session = found
    if scan is None:
        def listing() -> list[dict]:
            with _sessions(request)() as s:
                return visible_scans(s, key)
        scans = await asyncio.to_thread(listing)
        rows = "".join(
            f'<tr><td><a href="/review?scan={r["id"]}">{r["id"]}</a></td><td>{escape(r["name"])}</td>'
            f'<td>{escape(r["status"])}</td><td>{r["total"]}</td><td>{r["fake"]}</td><td>{r["errors"]}</td>'
            f'<td>{escape(r["started_at"].strftime("%Y-%m-%d %H:%M"))}</td></tr>' for r in scans)
        table = ('<table><caption>Scans you may review</caption><thead><tr><th scope="col">id</th>'
                 '<th scope="col">name</th><th scope="col">status</th><th scope="col">files</th>'
                 '<th scope="col">fake</th><th scope="col">errors</th><th scope="col">started</th></tr></thead>'
                 f"<tbody>{rows}</tbody></table>") if scans else "<p>No scan to review.</p>"
        body = (f'<header><h1>dfscan review</h1><span class="who">{escape(key_name(key))} ({escape(key.role)})'
                f"</span>{_sign_out_form(session.csrf)}</header><main>{table}</main>")
        return _html("dfscan review", body, csrf=session.csrf)

    def visible() -> str | None:
        with _sessions(request)() as s:
            try:
                check_visible(s, scan, key)
            except db.ScanNotFound:
                return None
            return s.execute(select(Scan.name).where(Scan.id == scan)).scalar()
    name = await asyncio.to_thread(visible)
    if name is None:
        return _html("dfscan review: no such scan", f'<main><h1>No scan {scan}</h1><p>No such scan, or not one you '
                     'may review. <a href="/review">Your scans</a></p></main>', status=404)
    return _html(f"dfscan review: scan {scan}", _queue_body(scan, name, key, session.csrf), csrf=session.csrf,
                 scan=scan)


def _queue_body(scan: int, name: str, key: AuthorizedKey, csrf: str) -> str:
    options = lambda values: "".join(f'<option value="{v}">{v or "any"}</option>' for v in values)  # noqa: E731
    buttons = "".join(
        f'<button type="button" class="decide {d}" data-decision="{d}" aria-keyshortcuts="{d[0]}">'
        f"<kbd>{d[0]}</kbd> {d}</button>" for d in DECISIONS)
    return (
        f'<header><h1><a href="/review">dfscan review</a>: scan {scan} <span class="scan-name">{escape(name)}</span>'
        f'</h1><span class="who">{escape(key_name(key))}</span>{_sign_out_form(csrf)}</header>'
        '<form id="filters" class="filters" aria-label="Filters">'
        f'<label>order <select name="order">{options(["priority", "p_fake", "path"])}</select></label> '
        f'<label>label <select name="label">{options(["", "fake", "real"])}</select></label> '
        f'<label>status <select name="status">{options(["", "ok", "error", "no-face"])}</select></label> '
        f'<label>review <select name="review">{options(["", *REVIEW_STATES])}</select></label> '
        '<label>p_fake from <input name="p_min" type="number" min="0" max="1" step="0.01" size="4"></label> '
        '<label>to <input name="p_max" type="number" min="0" max="1" step="0.01" size="4"></label> '
        '<label>faces at least <input name="faces_min" type="number" min="0" step="1" size="3"></label> '
        f'<label>kind <select name="kind">{options(["", "image", "video"])}</select></label> '
        '<button type="submit">Apply</button></form>'
        '<div class="layout"><nav aria-label="Queue"><ol id="queue"></ol><button type="button" id="more" hidden>'
        "More</button></nav>"
        '<main><section id="item" aria-live="polite" aria-label="Item to decide" tabindex="-1"></section>'
        f'<div class="actions" role="group" aria-label="Decision">{buttons}'
        '<label><input type="checkbox" id="copies"> decide its copies too</label> '
        '<label>note <input type="text" id="note" maxlength="4000"></label> '
        '<button type="button" id="prev" aria-keyshortcuts="k"><kbd>k</kbd> previous</button>'
        '<button type="button" id="next" aria-keyshortcuts="j"><kbd>j</kbd> next</button>'
        '<button type="button" id="help-button" aria-keyshortcuts="?"><kbd>?</kbd> keys</button></div>'
        '<p id="status" role="status" aria-live="polite"></p></main></div>'
        '<dialog id="help" aria-labelledby="help-title"><h2 id="help-title">Keys</h2><dl>'
        "<dt><kbd>f</kbd></dt><dd>fake</dd><dt><kbd>r</kbd></dt><dd>real</dd><dt><kbd>u</kbd></dt><dd>unsure</dd>"
        "<dt><kbd>e</kbd></dt><dd>escalate</dd><dt><kbd>j</kbd></dt><dd>next item</dd><dt><kbd>k</kbd></dt>"
        "<dd>previous item</dd><dt><kbd>?</kbd></dt><dd>this list</dd></dl>"
        '<form method="dialog"><button>Close</button></form></dialog>'
    )


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 16_384:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _same_origin(request: Request) -> bool:
    """A form posted from another site is refused (login CSRF): its Origin, when sent, must be this host.

    Browsers send the Origin of a POST; "null" (an opaque origin: a sandboxed frame, a no-referrer page) is refused:
    the page itself sends a Referrer-Policy of same-origin, so its own forms carry their origin."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


@router.post("/review/session", include_in_schema=False)
async def sign_in(request: Request) -> Response:
    """Check the key typed in the form; open a session (cookie) and go to the page asked for."""
    if not _same_origin(request):
        return _sign_in(request, error="sign-in refused: the form came from another site", status=403)
    form = await _form(request)
    token = form.get("api_key", "").strip()
    keys = request.app.state.dfscan.keys
    found = await asyncio.to_thread(keys.check, token) if token else None
    if found is None:
        return _sign_in(request, error="invalid or revoked API key", status=401)
    target = form.get("next", "/review")
    if not (target == "/review" or (target.startswith("/review?scan=") and target[13:].isdigit())):
        target = "/review"
    sid, _ = _store(request).open(token)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, sid, max_age=int(_store(request).ttl_s), **cookie_flags(request.url.hostname))
    return response


@router.post("/review/signout", include_in_schema=False)
async def sign_out(request: Request) -> Response:
    sid = request.cookies.get(COOKIE)
    session = _store(request).get(sid)
    form = await _form(request)
    if session is not None and not csrf_ok(session, form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)):
        return JSONResponse({"detail": "missing or wrong CSRF token"}, status_code=403, headers=SECURITY_HEADERS)
    _store(request).close(sid)
    response = RedirectResponse("/review", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, **cookie_flags(request.url.hostname))
    return response


@router.get("/review/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise NotFound("no such file")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers=SECURITY_HEADERS)


def mount(app: FastAPI) -> None:
    """The review routes on ``app`` (each with its own path template, as the metrics label them), and the sessions."""
    app.state.review_sessions = SessionStore()
    app.router.routes.extend(router.routes)
