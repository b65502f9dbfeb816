"""Where the database layer gets its URL when no caller passes one.

``dfscan.core.settings`` is the one module that reads the environment; Alembic's
command line (``env.py``) and callers without a settings object ask here.
"""

from __future__ import annotations

__all__ = ["url_from_env"]


def url_from_env() -> str:
    """The database URL: ``$DFSCAN_DB_URL``, else the embedded SQLite default."""
    from dfscan.core.settings import from_env

    return from_env().db_url
