"""PostgreSQL's partitions of ``results``: one per scan, made when the scan is registered (migration 0016).

A scan's rows are one partition: its reads are pruned to it, the write path ``COPY``s straight into it
(no routing of each row through the parent), and dropping it (:func:`drop_partition`, which
:mod:`dfscan.db.retention` calls) drops the scan's rows at once.  A row for a
scan that has no partition is refused: the partition is what ties rows to their scan, where a foreign key
checked each row.  SQLite has one plain table.
"""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ._dialects import dialect_name

__all__ = ["create_partition", "drop_partition", "partition_of"]


def partition_of(scan_id: int) -> str:
    """The name of the scan's partition of ``results`` (PostgreSQL)."""
    return f"results_p{int(scan_id)}"


def create_partition(session: Session, scan_id: int) -> None:
    """Make the scan's partition (PostgreSQL; nothing on SQLite).  In the caller's transaction.

    Made as a table of its own and then attached: ``ATTACH PARTITION`` locks ``results`` in SHARE UPDATE
    EXCLUSIVE mode, which lets other scans' writes and every read go on (``CREATE TABLE ... PARTITION OF``
    would take ACCESS EXCLUSIVE until this transaction commits).  Attaching builds the partition's key
    and indexes from the parent's.
    """
    if dialect_name(session) == "postgresql":
        name, connection = partition_of(scan_id), session.connection()
        connection.exec_driver_sql(f"CREATE TABLE {name} (LIKE results INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        connection.exec_driver_sql(f"ALTER TABLE results ATTACH PARTITION {name} FOR VALUES IN ({int(scan_id)})")


def drop_partition(engine: Engine, parent: str, part: str) -> None:
    """Detach ``part`` from ``parent`` and drop it (PostgreSQL): how a scan's rows go (``dfscan prune``).

    ``DETACH PARTITION ... CONCURRENTLY`` (autocommit) lets the fleet's writes and the analysts' reads of
    the other scans go on; a plain DETACH, the fallback where that is refused (a default partition exists),
    locks ``parent`` for the moment it takes.  A detach left half-done by an earlier prune is finalised.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as auto:
        quote = auto.dialect.identifier_preparer.quote
        pending = auto.execute(text(
            "SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :p AND n.nspname = current_schema()"),
            {"p": part}).scalar()
        detach = f"ALTER TABLE {quote(parent)} DETACH PARTITION {quote(part)}"
        if pending is not None:
            try:
                auto.execute(text(detach + (" FINALIZE" if pending else " CONCURRENTLY")))
            except DBAPIError:
                with engine.begin() as plain:
                    plain.execute(text(detach))
        auto.execute(text(f"DROP TABLE IF EXISTS {quote(part)}"))
