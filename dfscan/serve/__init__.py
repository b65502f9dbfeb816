"""`dfscan serve`: an HTTP API for scans and for scoring uploads, with dynamic batching.

:func:`create_app` builds the FastAPI application over one :class:`Settings`;
the command in :mod:`dfscan.commands.serve` runs it on uvicorn, and :func:`ops_app`
(metrics, the OpenAPI document and its pages) on a second bind when ``ops_bind`` is set.
"""

from dfscan.serve._ops import ops_app
from dfscan.serve.app import create_app

__all__ = ["create_app", "ops_app"]
