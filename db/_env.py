"""The one place where the database layer reads the environment.

A ``dfscan.settings`` module will replace this: until then ``env.py`` and
callers that have no settings object ask :func:`url_from_env`.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_URL", "ENV_VAR", "url_from_env"]

ENV_VAR = "DFSCAN_DB_URL"
DEFAULT_URL = "sqlite:///dfscan.db"


def url_from_env() -> str:
    """The database URL: ``$DFSCAN_DB_URL``, else the embedded SQLite default."""
    return os.environ.get(ENV_VAR) or DEFAULT_URL
