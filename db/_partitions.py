"""PostgreSQL's partitions of ``results``: one per scan, made when the scan is registered (migration 0016).

A scan's rows are one partition: its reads are pruned to it, the write path ``COPY``s straight into it
(no routing of each row through the parent), and dropping it drops the scan's rows at once
(:mod:`dfscan.db.retention`).  A row for a
scan that has no partition is refused: the partition is what ties rows to their scan, where a foreign key
checked each row.  SQLite has one plain table.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ._dialects import dialect_name

__all__ = ["create_partition", "partition_of"]


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
