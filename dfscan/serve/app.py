"""The FastAPI application: scoring uploads, scans, API keys' checks, health and metrics.

Everything heavy (model, runtime, decoder, database) is opened in the lifespan,
before the server accepts a connection, and closed after the last in-flight
request has its answer (uvicorn waits for them on SIGTERM).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.routing import Match

from dfscan import __version__, db
from dfscan.db.callbacks import callback_state
from dfscan.serve import _results
from dfscan.serve._auth import Key, authorize, check_visible
from dfscan.serve._keys import KeyCache
from dfscan.serve._limits import UploadSlots
from dfscan.serve._openapi import CALLBACK_URL_PATTERN, CSV_PAGE, ROOT_PATTERN, SCAN_ID_MAX, errors, score_body
from dfscan.serve._ops import NOT_READY, metrics_response, readiness
from dfscan.serve._uploads import decode_uploads, parse_uploads, read_body, result_fields, row_fields, upload_item
from dfscan.serve.batcher import DynamicBatcher
from dfscan.serve.callbacks import CallbackDispatcher, summary_dict
from dfscan.serve.errors import ServeError
from dfscan.serve.metrics import ServeMetrics, method_label
from dfscan.serve.scans import ScanRequest, ScanService
from dfscan.core.settings import Settings
from dfscan.workers.reading.errors import ImageError

__all__ = ["create_app"]


class ScanBody(BaseModel):
    """A scan of files and directories on the server's storage (inside the allowed prefixes)."""

    roots: list[Annotated[str, Field(min_length=1, max_length=4096, pattern=ROOT_PATTERN)]] = Field(
        min_length=1, max_length=1000, description="Absolute paths: files or directories inside the allowed prefixes.")
    name: str | None = Field(None, max_length=255)
    incremental: bool = False
    callback_url: str | None = Field(None, max_length=2000, pattern=CALLBACK_URL_PATTERN,
                                     description="POSTed the scan's summary when it ends, signed with the key's secret.")


class _Gate:
    """Every /v1 request needs a valid key, checked before its body is read (``_auth.authorize``); the operations
    endpoints an admin key unless they have a bind of their own; every request is counted.

    Plain ASGI rather than ``@app.middleware``: it stays out of the way of the body stream and costs less
    per request.
    """

    def __init__(self, app: Any, *, state: "State", router: Any) -> None:
        self.app = app
        self.state = state
        self.router = router

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            denied = await authorize(scope, self.state.keys, ops_need_admin=self.state.settings.ops_bind is None)
            if denied is not None:
                await denied(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            path = _route_path(self.router, scope)
            metrics = self.state.metrics
            metrics.requests.labels(path, method_label(scope["method"]), str(status[0])).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - started)


def _route_path(router: Any, scope: dict) -> str:
    """The route's template (``/v1/scans/{scan_id}``), also for requests refused before routing: few label values."""
    route = scope.get("route")
    if route is not None:
        return route.path
    for candidate in router.routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return candidate.path
    return "unmatched"


class State:
    """What the lifespan opens: one per application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.ctx: Any = None
        self.batcher: DynamicBatcher | None = None
        self.scans: ScanService | None = None
        self.keys: KeyCache | None = None
        self.callbacks: CallbackDispatcher | None = None
        self.decode_lock: threading.Lock | None = None
        self.uploads = UploadSlots(per_key=settings.max_uploads_per_key, total=settings.max_uploads,
                                   on_change=self.metrics.uploads_in_flight.set)


def create_app(settings: Settings) -> FastAPI:
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from dfscan.workers.scoring.context import ScanContext

        ctx = await asyncio.to_thread(ScanContext.open, settings)
        state.ctx = ctx.share()  # one model, runtime and decoder for every upload and every scan
        # Pillow's decoder is thread-safe; a DALI pipeline or the face detector is not: one request decodes at a time.
        state.decode_lock = None if ctx.decoder.thread_safe else threading.Lock()
        state.batcher = DynamicBatcher(ctx.runtime, ctx.verdict, max_batch=settings.batch_size,
                                       max_delay_s=settings.max_batch_delay_ms / 1000.0,
                                       on_batch=state.metrics.batch)
        state.batcher.start()
        state.scans = ScanService(settings, ctx)
        state.keys = KeyCache(ctx.sessions)
        state.keys.start()
        state.callbacks = CallbackDispatcher(ctx.sessions, max_attempts=settings.callback_attempts,
                                             summary=summary_dict, busy=state.scans.active, settings=settings)
        state.callbacks.start()
        try:
            yield
        finally:
            await state.batcher.stop()
            await asyncio.to_thread(state.scans.shutdown)
            await asyncio.to_thread(state.callbacks.stop)
            await asyncio.to_thread(state.keys.stop)
            ctx.close()

    # With a bind of their own (--ops-bind) the document and its pages are served there (_ops), not here.
    docs = {} if settings.ops_bind is None else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(title="dfscan", version=__version__, lifespan=lifespan, **docs,
                  description="Deepfake scoring of uploads (dynamically batched) and scans of the server's storage. "
                              "Send `Authorization: Bearer <key>` (`dfscan api-key create`): a `scanner` key sees "
                              "the scans it started, a `reviewer` key reads and reviews the scans of its team's "
                              "keys, an `admin` key every scan and /metrics, /docs, /openapi.json.")
    app.state.dfscan = state

    app.add_middleware(_Gate, state=state, router=app.router)

    _operations(app, state)
    _scoring(app, state, settings)
    _scans(app, state)
    from dfscan.serve._banks import mount as mount_banks  # hash banks: /v1/match, /v1/banks

    mount_banks(app)
    from dfscan.serve.review import mount as mount_review  # the review page and API: /review, /v1/scans/{id}/queue

    mount_review(app)
    return app


def _operations(app: FastAPI, state: State) -> None:
    """Errors as JSON, and the health, readiness and metrics endpoints."""
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A body that isn't the JSON it claims to be is a 400; well-formed JSON with wrong fields a 422.
        errors = jsonable_encoder(exc.errors())
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        return JSONResponse({"detail": "malformed JSON body" if malformed else errors},
                            status_code=400 if malformed else 422)

    @app.exception_handler(db.ScanNotFound)
    async def scan_not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process is alive (answered on the event loop: no thread pool or database in the way)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses=NOT_READY)
    def readyz() -> JSONResponse:
        """The model is loaded and the database answers (what failed goes to the log, not to the caller)."""
        ready = readiness(state)
        return JSONResponse(ready, status_code=200 if ready["ready"] else 503)

    if state.settings.ops_bind is None:
        @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse, responses=errors(401, 403))
        def metrics() -> Response:
            """Prometheus metrics; admin keys only (or on the bind of --ops-bind, without a key)."""
            return metrics_response(state.metrics)


async def _upload_slot(request: Request, key: Key) -> AsyncIterator[None]:
    """One of the key's uploads in flight while the request runs (429 with Retry-After past the limits)."""
    with request.app.state.dfscan.uploads.hold(key.id):
        yield


UploadSlot = Annotated[None, Depends(_upload_slot)]


def _scoring(app: FastAPI, state: State, settings: Settings) -> None:
    """``/v1/score``: uploads scored as a scan scores files (the same stages' decoder and verdict)."""
    async def _score(uploads: list, decoded: list) -> list[dict]:
        """Every input of every upload (the image, or each face's crop) through the batcher; a row per upload."""
        inputs = [[] if isinstance(d, ImageError) else [inp.array for inp in d.inputs()] for d in decoded]
        flat = [array for arrays in inputs for array in arrays]
        scored = iter(await state.batcher.score(flat)) if flat else iter(())
        now = datetime.now(timezone.utc)
        results = []
        for up, d, arrays in zip(uploads, decoded, inputs):
            if isinstance(d, ImageError):
                results.append(row_fields(up.name, len(up.data), "error", error=d.message, error_code=d.code))
                continue
            decisions = [next(scored) for _ in arrays]
            failed = next((v for v in decisions if isinstance(v, ImageError)), None)
            if failed is not None:
                results.append(row_fields(up.name, len(up.data), "error", error=failed.message,
                                          error_code=failed.code))
                continue
            row = d.row(upload_item(up), decisions, state.ctx.verdict, now)
            results.append(result_fields(up.name, len(up.data), row))
        return results

    @app.post("/v1/score", tags=["score"], responses=errors(400, 401, 408, 413, 429),
              openapi_extra=score_body(settings.max_upload_files))
    async def score(request: Request, key: Key, slot: UploadSlot) -> dict:
        """Score uploaded images (multipart, one part per file); per file, the fields a scan row has.

        Files that can't be decoded are results with ``status: error`` and a reason, not HTTP errors.
        Images of concurrent requests are batched together (up to the batch size, within the batch delay).
        """
        body = await read_body(request, max_bytes=settings.max_upload_bytes, timeout_s=settings.request_timeout_s)
        uploads = await parse_uploads(request, body, max_files=settings.max_upload_files)
        decoder = state.ctx.decoder
        # The scan stages' provenance reader (its trust anchors), or none with provenance off.
        reader = getattr(state.ctx.stages.get("provenance"), "reader", None)
        if state.decode_lock is None:
            decoded = await asyncio.to_thread(decode_uploads, decoder, uploads, reader)
        else:
            def locked():
                with state.decode_lock:
                    return decode_uploads(decoder, uploads, reader)
            decoded = await asyncio.to_thread(locked)
        results = await _score(uploads, decoded)
        for r in results:
            state.metrics.images.labels(r["status"]).inc()
        return {"model_sha256": state.ctx.info.sha256, "threshold": state.ctx.verdict.threshold, "results": results}


ScanId = Annotated[int, Path(ge=1, le=SCAN_ID_MAX, description="A scan's id, as POST /v1/scans answered it.")]


def _scans(app: FastAPI, state: State) -> None:
    """Scans of the server's storage: start, status, cancel, results; a key sees only its own (admin: all)."""
    @app.post("/v1/scans", status_code=202, tags=["scans"], responses=errors(400, 401, 403, 422, 429))
    async def start_scan(body: ScanBody, key: Key) -> dict:
        """Start a scan of files and directories on the server's storage; 202 and its id.

        With a broker configured the scan's chunks go to the fleet; without one it runs in this server.
        """
        if body.callback_url:  # 422 for an address the server must not reach (checked again at delivery)
            await state.scans.registering(lambda: state.callbacks.check_url(body.callback_url))
        request = ScanRequest(tuple(body.roots), body.name, body.incremental, body.callback_url)
        scan_id = await state.scans.submit(request, api_key_id=key.id)
        return state.scans.overlay(scan_id, {"scan_id": scan_id, "status": "running", "url": f"/v1/scans/{scan_id}"})

    @app.get("/v1/scans/{scan_id}", tags=["scans"], responses=errors(401, 404, 422))
    def get_scan(scan_id: ScanId, key: Key) -> dict:
        """Status, counts, rate and ETA; the callback's delivery when there is one."""
        with state.ctx.sessions() as session:
            check_visible(session, scan_id, key)
            data = db.scan_summary(session, scan_id).as_dict()
            data["callback"] = callback_state(session, scan_id)
        return state.scans.overlay(scan_id, data)

    @app.post("/v1/scans/{scan_id}/cancel", tags=["scans"], responses=errors(401, 404, 422))
    def cancel_scan(scan_id: ScanId, key: Key) -> dict:
        """Cancel a running scan: the batch in flight is finished, the rest is not scored."""
        with state.ctx.sessions() as session:
            check_visible(session, scan_id, key)
        changed = state.scans.cancel(scan_id)
        with state.ctx.sessions() as session:
            status = db.scan_summary(session, scan_id).status
        return {"scan_id": scan_id, "cancelled": changed, "status": status}

    @app.get("/v1/scans/{scan_id}/results", tags=["scans"], responses={**errors(400, 401, 404, 422), **CSV_PAGE})
    def scan_results(scan_id: ScanId, key: Key,
                     label: Literal["real", "fake"] | None = None,
                     status: Literal["ok", "error"] | None = None,
                     min_p: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
                     declared: Annotated[bool | None, Query(description="Only files whose provenance declares "
                                                            "them synthetic (true) or doesn't (false).")] = None,
                     cursor: str | None = None,
                     limit: Annotated[int, Query(ge=0, le=_results.MAX_PAGE)] = 1000,
                     format: Literal["json", "csv"] = "json") -> StreamingResponse:
        """A page of result rows in path order; ``next_cursor`` continues it. ``limit=0``: every row, streamed."""
        with state.ctx.sessions() as session:
            check_visible(session, scan_id, key)  # 404 for an unknown scan or another key's
        after = _results.decode_cursor(cursor) if cursor else None
        query = _results.Query(scan_id, label, min_p, status, after, limit, declared)
        return _results.respond(state.ctx.sessions, query, format)

