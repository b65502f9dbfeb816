"""The operations endpoints: readiness, metrics, and the API's document and pages on a bind of their own.

By default ``/metrics``, ``/docs`` and ``/openapi.json`` are served on the API's own bind to admin keys
(``_auth``). With ``--ops-bind HOST:PORT`` they move to :func:`ops_app`, a second listener that asks for
no key (put it on an address only the operators' network reaches), and the API's bind no longer serves them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import text

from dfscan.core.errors import first_line
from dfscan.serve.metrics import ServeMetrics

__all__ = ["NOT_READY", "metrics_response", "ops_app", "readiness"]

_log = logging.getLogger("dfscan.serve")

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "Not ready: the model is not loaded or the database does not answer (the log says why).",
          "content": {"application/json": {"schema": {"type": "object"}}}}}


def metrics_response(metrics: ServeMetrics) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def readiness(state: Any) -> dict[str, bool]:
    """Whether the model is loaded and the database answers. A database error is logged, never answered:
    its text can name hosts, users and schema."""
    checks = {"model": state.ctx is not None, "database": False}
    if state.ctx is not None:
        try:
            with state.ctx.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception as exc:  # noqa: BLE001 - not ready; the reason goes to the log
            _log.warning("not ready: the database does not answer: %s", first_line(exc))
    return {"ready": checks["model"] and checks["database"], **checks}


def ops_app(api: FastAPI) -> FastAPI:
    """The app of ``--ops-bind``: the metrics, document and pages of ``api`` (from ``create_app``), without a key."""
    state = api.state.dfscan
    ops = FastAPI(title="dfscan operations", openapi_url=None, docs_url=None, redoc_url=None)

    @ops.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return metrics_response(state.metrics)

    @ops.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(api.openapi())

    @ops.get("/docs", response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dfscan - Swagger UI")

    @ops.get("/readyz")
    def readyz() -> JSONResponse:
        ready = readiness(state)
        return JSONResponse(ready, status_code=200 if ready["ready"] else 503)

    return ops
