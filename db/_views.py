"""Reading the analysts' views (``scan_faces``, ``scan_frames``, ``scan_matches``, ``scan_provenance``) for
some files of a scan.

The files are found by their keys, ``(scan_id, path_hash)``, which the tables' indexes serve: a lookup by
``path`` would read every row of the scan (no index covers the path, migration 0016).  ``path_hash`` (the
views' last column) is left out of the rows returned: it is a key, not something to show.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Select, Table, select
from sqlalchemy.orm import Session

from .paths import path_hash

__all__ = ["IN_LIST_SIZE", "rows_of_paths", "view_select"]

IN_LIST_SIZE = 500


def view_select(view: Table) -> Select[Any]:
    """``SELECT`` of the view's columns but ``path_hash``."""
    return select(*(c for c in view.c if c.name != "path_hash"))


def rows_of_paths(session: Session, stmt: Select[Any], view: Table, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of ``stmt`` (a select of ``view`` for one scan) for these paths: their keys, in bounded IN lists."""
    keys = list(dict.fromkeys(path_hash(p) for p in paths))
    for start in range(0, len(keys), IN_LIST_SIZE):
        part = stmt.where(view.c.path_hash.in_(keys[start : start + IN_LIST_SIZE]))
        yield from (dict(r) for r in session.execute(part).mappings())
