"""Retention: remove whole scans with every row that belongs to them (`dfscan prune`, the nightly beat entry).

Which tables hold a scan's rows is read from the database itself, never listed here: every table with a
``scan_id`` column (results, faces, frames, explanations, matches, notices, provenance, chunks, workers,
callbacks, reviews, and any table a later migration adds).  They are emptied children first (a table that
refers to another of them goes before it), and the ``scans`` row goes last.

* A table partitioned by scan on PostgreSQL (``PARTITION BY LIST (scan_id)``) loses the scan's partition:
  DETACH (CONCURRENTLY: other scans' writes and reads go on) then DROP, whatever its size, instead of
  deleting its rows one by one.
* Every other table loses the scan's rows in batches of :data:`BATCH_ROWS`, each batch its own short
  transaction, so SQLite's one writer (and PostgreSQL's locks) are never held for a whole scan.

A prune that stops half-way (killed, a lost connection) leaves the scan's ``scans`` row, so running it again
finishes the job.  Running scans are refused (``--scan``) or left alone (``--older-than``) unless asked for:
their workers would go on writing rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, inspect, select, text

from ._partitions import drop_partition
from ._types import utcnow
from .errors import PruneRefused, ScanNotFound, ScanRunning
from .models import Scan

__all__ = ["BATCH_ROWS", "PruneReport", "PrunedScan", "ScanTable", "prune", "scan_tables", "select_scans"]

BATCH_ROWS = 5000
SCANS_TABLE = Scan.__tablename__
_LIST_BOUND = re.compile(r"^FOR VALUES IN \((.*)\)$")


@dataclass(frozen=True)
class ScanTable:
    """A table with a ``scan_id`` column: its name, its key (None: the row id) and whether it is partitioned."""

    name: str
    key: tuple[str, ...] | None
    partitioned: bool = False


@dataclass(frozen=True)
class PrunedScan:
    """One scan removed (or, in a dry run, that would be): rows per table, and the partitions dropped."""

    scan_id: int
    name: str
    status: str
    ended_at: datetime
    rows: dict[str, int]
    partitions: tuple[str, ...] = ()

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass
class PruneReport:
    """What a prune removed (``dry_run``: would remove), and the running scans it left alone."""

    dry_run: bool
    cutoff: datetime | None
    scans: list[PrunedScan] = field(default_factory=list)
    skipped_running: list[int] = field(default_factory=list)

    def rows_by_table(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for scan in self.scans:
            for table, n in scan.rows.items():
                out[table] = out.get(table, 0) + n
        return out


# --- which scans --------------------------------------------------------------------------


def select_scans(connection: Connection, *, older_than: timedelta | None = None, scan_ids: Sequence[int] = (),
                 include_running: bool = False, now: datetime | None = None
                 ) -> tuple[list[tuple[int, str, str, datetime]], list[int], datetime | None]:
    """The scans to prune as (id, name, status, ended_at), the running scans left out, and the age cutoff.

    A scan is older than ``older_than`` when it ended (or, never finished, started) before ``now`` minus it.
    Ids in ``scan_ids`` must exist (:class:`ScanNotFound`) and, unless ``include_running``, not be running
    (:class:`ScanRunning`); running scans that are merely old enough are left out and listed.
    """
    if older_than is None and not scan_ids:
        raise PruneRefused("name the scans to prune: an age (older than) or scan ids")
    ended = func.coalesce(Scan.finished_at, Scan.started_at)
    stmt = select(Scan.id, Scan.name, Scan.status, Scan.finished_at, Scan.started_at).order_by(Scan.id)
    cutoff = None
    if scan_ids:
        wanted = sorted(set(scan_ids))
        stmt = stmt.where(Scan.id.in_(wanted))
    if older_than is not None:
        cutoff = (now or utcnow()) - older_than
        stmt = stmt.where(ended < cutoff)
    rows = connection.execute(stmt).all()
    if scan_ids:
        missing = sorted(set(scan_ids) - {r.id for r in rows})
        if missing and older_than is None:
            raise ScanNotFound(missing[0])
    chosen, running = [], []
    for r in rows:
        if r.status == "running" and not include_running:
            if scan_ids and older_than is None:
                raise ScanRunning(r.id)
            running.append(r.id)
            continue
        chosen.append((r.id, r.name, r.status, r.finished_at or r.started_at))
    return chosen, running, cutoff


# --- which tables -------------------------------------------------------------------------


def scan_tables(connection: Connection) -> list[ScanTable]:
    """Every table of the database with a ``scan_id`` column, children before the tables they refer to.

    Read from the database (not the ORM's metadata), so a table a migration adds is covered without an
    edit here.  PostgreSQL partitions are left out: they are reached through their parent.
    """
    inspector = inspect(connection)
    partitions: set[str] = set()
    partitioned: set[str] = set()
    if connection.dialect.name == "postgresql":
        partitions = set(connection.execute(text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relispartition AND c.relkind IN ('r', 'p') AND n.nspname = current_schema()")).scalars())
        partitioned = set(connection.execute(text(
            "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()")).scalars())
    tables: dict[str, ScanTable] = {}
    refers: dict[str, set[str]] = {}
    for name in inspector.get_table_names():
        if name in partitions or name == SCANS_TABLE:
            continue
        if "scan_id" not in {c["name"] for c in inspector.get_columns(name)}:
            continue
        key = tuple(inspector.get_pk_constraint(name).get("constrained_columns") or ()) or None
        tables[name] = ScanTable(name, key, name in partitioned)
        refers[name] = {fk["referred_table"] for fk in inspector.get_foreign_keys(name)}
    ordered: list[ScanTable] = []
    left = dict(tables)
    while left:
        # A table goes once no table still left refers to it (self-references aside).
        ready = sorted(n for n in left if not any(n in refers[o] for o in left if o != n))
        if not ready:  # a cycle of references: break it by name (the batches still go; cascades do the rest)
            ready = sorted(left)[:1]
        for name in ready:
            ordered.append(left.pop(name))
    return ordered


def _scan_partitions(connection: Connection, table: str, scan_id: int) -> list[str]:
    """The partitions of ``table`` that hold exactly this scan's rows (``FOR VALUES IN (scan_id)``)."""
    bounds = connection.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace n ON n.oid = p.relnamespace WHERE p.relname = :t AND n.nspname = current_schema()"),
        {"t": table}).all()
    out = []
    for name, bound in bounds:
        match = _LIST_BOUND.match(bound or "")
        if match and [v.strip().strip("'") for v in match.group(1).split(",")] == [str(scan_id)]:
            out.append(name)
    return out


# --- removing -----------------------------------------------------------------------------


def prune(engine: Engine, *, older_than: timedelta | None = None, scan_ids: Sequence[int] = (),
          include_running: bool = False, dry_run: bool = False, now: datetime | None = None,
          batch_rows: int = BATCH_ROWS) -> PruneReport:
    """Remove the chosen scans (see :func:`select_scans`) with every row of theirs; ``dry_run`` only counts.

    Owns its transactions: each batch of deleted rows, each dropped partition and each ``scans`` row is
    committed as it goes.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    with engine.connect() as connection:
        chosen, running, cutoff = select_scans(connection, older_than=older_than, scan_ids=scan_ids,
                                               include_running=include_running, now=now)
        tables = scan_tables(connection)
        connection.rollback()
        report = PruneReport(dry_run=dry_run, cutoff=cutoff, skipped_running=running)
        for scan_id, name, status, ended_at in chosen:
            report.scans.append(_prune_scan(connection, tables, scan_id, name, status, ended_at,
                                            dry_run=dry_run, batch_rows=batch_rows))
    return report


def _prune_scan(connection: Connection, tables: Iterable[ScanTable], scan_id: int, name: str, status: str,
                ended_at: datetime, *, dry_run: bool, batch_rows: int) -> PrunedScan:
    rows: dict[str, int] = {}
    dropped: list[str] = []
    quote = connection.dialect.identifier_preparer.quote
    for table in tables:
        parts = _scan_partitions(connection, table.name, scan_id) if table.partitioned else []
        for part in parts:
            rows[table.name] = rows.get(table.name, 0) + connection.execute(
                text(f"SELECT COUNT(*) FROM {quote(part)}")).scalar_one()
            if not dry_run:
                connection.commit()  # a concurrent detach waits for every open transaction, this one's too
                drop_partition(connection.engine, table.name, part)
            dropped.append(part)
        if dry_run:
            if not parts:
                rows[table.name] = connection.execute(
                    text(f"SELECT COUNT(*) FROM {quote(table.name)} WHERE scan_id = :s"), {"s": scan_id}).scalar_one()
            continue
        # After a dropped partition this finds nothing (the parent routes the scan_id to no partition left).
        deleted = _delete_in_batches(connection, table, scan_id, batch_rows)
        rows[table.name] = rows.get(table.name, 0) + deleted
    scans = 1
    if not dry_run:
        scans = connection.execute(text(f"DELETE FROM {quote(SCANS_TABLE)} WHERE id = :s"), {"s": scan_id}).rowcount
        connection.commit()
    else:
        connection.rollback()
    rows[SCANS_TABLE] = scans
    return PrunedScan(scan_id, name, status, ended_at, rows, tuple(dropped))


def _delete_in_batches(connection: Connection, table: ScanTable, scan_id: int, batch_rows: int) -> int:
    """Delete the scan's rows of ``table``, ``batch_rows`` per committed transaction; returns how many."""
    quote = connection.dialect.identifier_preparer.quote
    if table.key:
        key = ", ".join(quote(c) for c in table.key)
        key = f"({key})" if len(table.key) > 1 else key
    else:  # no primary key: the row's own address
        key = "ctid" if connection.dialect.name == "postgresql" else "rowid"
    name = quote(table.name)
    stmt = text(f"DELETE FROM {name} WHERE {key} IN "
                f"(SELECT {key.strip('()')} FROM {name} WHERE scan_id = :s LIMIT :n)")
    total = 0
    while True:
        n = connection.execute(stmt, {"s": scan_id, "n": batch_rows}).rowcount
        connection.commit()
        total += n
        if n < batch_rows:
            return total
