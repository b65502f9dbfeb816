"""Writing and reading what files say about their own origin (``result_provenance``, ``scan_provenance``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from ._views import rows_of_paths, view_select
from .models import ResultProvenance, scan_provenance
from .paths import path_hash
from .records import ResultRow

__all__ = ["iter_provenance", "replace_provenance"]

_IN_LIST_SIZE = 500


def replace_provenance(session: Session, scan_id: int, rows: Sequence[ResultRow]) -> None:
    """Replace the provenance of the rows' paths (a re-scored file is read again): one delete, one insert."""
    read = [row for row in rows if row.provenance is not None]
    keys = [path_hash(row.path) for row in read]
    for start in range(0, len(keys), _IN_LIST_SIZE):
        session.execute(delete(ResultProvenance).where(
            ResultProvenance.scan_id == scan_id, ResultProvenance.path_hash.in_(keys[start : start + _IN_LIST_SIZE])))
    values = []
    for row, key in zip(read, keys):
        p = row.provenance
        assert p is not None
        values.append({"scan_id": scan_id, "path": row.path, "path_hash": key, "c2pa": p.c2pa,
                       "c2pa_state": p.c2pa_state,
                       "c2pa_codes": p.codes, "signer": p.signer, "issuer": p.issuer, "generator": p.generator,
                       "claim_generator": p.claim_generator, "creator_tool": p.creator_tool,
                       "settings_key": p.settings_key, "source_type": p.source_type, "watermark": p.watermark,
                       "watermark_ber": p.watermark_ber, "synthetic_declared": p.synthetic_declared,
                       "error": p.error})
    if values:
        session.execute(insert(ResultProvenance), values)


def iter_provenance(session: Session, *, scan_id: int, paths: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the ``scan_provenance`` view for a scan (or some of its paths), by path."""
    view = scan_provenance.c
    stmt = view_select(scan_provenance).where(view.scan_id == scan_id).order_by(view.path)
    if paths is None:
        return [dict(r) for r in session.execute(stmt).mappings()]
    return list(rows_of_paths(session, stmt, scan_provenance, paths))
