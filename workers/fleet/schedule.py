"""Nightly scans: a schedule file of cron entries, run by Celery beat as incremental scans.

A schedule file is TOML, one ``[[scan]]`` table per entry::

    [[scan]]
    name = "archive-nightly"          # scans are named "archive-nightly <run id>"
    cron = "30 2 * * *"               # minute hour day-of-month month day-of-week, UTC
    roots = ["/data/archive"]         # or "s3://bucket/prefix" (the worker's --s3-endpoint-url)
    model = "/models/deepfake/model.onnx"
    # optional: paths_from, extensions, chunk_size, threshold, follow_symlinks, max_outstanding,
    # reuse_verdicts (true: take an earlier scan's verdict for the same bytes and model)

Beat sends one producer task per due entry; the task (:func:`run_entry`)
registers an incremental scan and enqueues its chunks.  A redelivered task
(its worker died) finds its scan by name and resumes it, so one run never
becomes two scans.

Retention is one more entry, made from the settings rather than the file
(:func:`retention_schedule`): with ``DFSCAN_RETENTION=90d`` beat sends a prune
task at ``DFSCAN_RETENTION_CRON`` (UTC), which a producer worker runs as
`dfscan prune --older-than 90d --yes` would (:func:`run_retention`).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfscan.core.settings import Settings, SettingsError, parse_extensions

__all__ = ["RETENTION_ENTRY", "ScheduleEntry", "ScheduleError", "beat_schedule", "cron_schedule", "load_schedule",
           "retention_schedule", "run_entry", "run_retention"]

RETENTION_ENTRY = "dfscan-retention"  # the beat entry's name; a schedule file may not use it

_KNOWN = {"name", "cron", "roots", "paths_from", "model", "extensions", "chunk_size", "threshold",
          "follow_symlinks", "max_outstanding", "reuse_verdicts"}  # fmt: skip


class ScheduleError(SettingsError):
    """The schedule file is unreadable or an entry is invalid."""


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    cron: str
    roots: tuple[str, ...]
    model: str
    paths_from: tuple[str, ...] = ()
    extensions: tuple[str, ...] | None = None
    chunk_size: int | None = None
    threshold: float | None = None
    follow_symlinks: bool = True
    max_outstanding: int | None = None
    reuse_verdicts: bool | None = None  # None: the worker's DFSCAN_REUSE_VERDICTS
    options: dict[str, Any] = field(default_factory=dict)

    def crontab(self):
        return cron_schedule(self.name, self.cron)

    def message(self) -> dict[str, Any]:
        """The JSON the producer task carries."""
        data = asdict(self)
        data["roots"] = list(self.roots)
        data["paths_from"] = list(self.paths_from)
        data["extensions"] = list(self.extensions) if self.extensions else None
        return data


def cron_schedule(name: str, cron: str):
    """Celery's crontab for five cron fields (UTC); :class:`ScheduleError` naming the entry otherwise."""
    from celery.schedules import crontab

    parts = cron.split()
    if len(parts) != 5:
        raise ScheduleError(f"schedule {name!r}: cron {cron!r} needs 5 fields "
                            "(minute hour day-of-month month day-of-week)")
    minute, hour, dom, month, dow = parts
    try:
        return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    except ValueError as exc:
        raise ScheduleError(f"schedule {name!r}: cron {cron!r}: {exc}") from None


def load_schedule(path: str | Path) -> list[ScheduleEntry]:
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScheduleError(f"{path}: {exc}") from None
    tables = doc.get("scan")
    if not isinstance(tables, list) or not tables:
        raise ScheduleError(f"{path}: no [[scan]] entries")
    entries, names = [], set()
    for i, table in enumerate(tables):
        entry = _entry(table, f"{path}: entry {i + 1}")
        if entry.name in names:
            raise ScheduleError(f"{path}: two entries are named {entry.name!r}")
        if entry.name == RETENTION_ENTRY:
            raise ScheduleError(f"{path}: the name {RETENTION_ENTRY!r} is the retention entry's (DFSCAN_RETENTION)")
        names.add(entry.name)
        entry.crontab()  # fails now, not at 2 a.m.
        entries.append(entry)
    return entries


def _entry(table: dict[str, Any], where: str) -> ScheduleEntry:
    unknown = set(table) - _KNOWN
    if unknown:
        raise ScheduleError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KNOWN)}")
    for key in ("name", "cron", "model"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise ScheduleError(f"{where}: {key!r} (a string) is required")
    roots = table.get("roots", [])
    paths_from = table.get("paths_from", [])
    if isinstance(roots, str):
        roots = [roots]
    if isinstance(paths_from, str):
        paths_from = [paths_from]
    if not roots and not paths_from:
        raise ScheduleError(f"{where}: give 'roots' or 'paths_from'")
    extensions = table.get("extensions")
    try:
        return ScheduleEntry(
            name=table["name"].strip(),
            cron=table["cron"].strip(),
            roots=tuple(str(r) for r in roots),
            model=table["model"],
            paths_from=tuple(str(p) for p in paths_from),
            extensions=parse_extensions(extensions) if extensions is not None else None,
            chunk_size=table.get("chunk_size"),
            threshold=table.get("threshold"),
            follow_symlinks=bool(table.get("follow_symlinks", True)),
            max_outstanding=table.get("max_outstanding"),
            reuse_verdicts=_flag(table.get("reuse_verdicts"), "reuse_verdicts"),
        )
    except SettingsError as exc:
        raise ScheduleError(f"{where}: {exc}") from None


def _flag(value: Any, key: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise SettingsError(f"{key!r} must be true or false, got {value!r}")
    return value


def beat_schedule(entries: list[ScheduleEntry]) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for ``entries``: one producer task per entry."""
    from dfscan.workers.fleet.app import SCHEDULED_SCAN_TASK

    return {
        e.name: {"task": SCHEDULED_SCAN_TASK, "schedule": e.crontab(), "kwargs": {"entry": e.message()}}
        for e in entries
    }


def retention_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The nightly prune entry of ``beat_schedule`` when ``settings.retention`` is set; empty (off) otherwise."""
    if settings.retention is None:
        return {}
    from dfscan.workers.fleet.app import RETENTION_TASK

    return {RETENTION_ENTRY: {"task": RETENTION_TASK, "schedule": cron_schedule(RETENTION_ENTRY, settings.retention_cron),
                              "kwargs": {"older_than": settings.retention}}}


def run_retention(settings: Settings, older_than: str) -> dict[str, Any]:
    """Prune the scans older than ``older_than`` (running scans left alone); what was removed, for the log."""
    from dfscan import db
    from dfscan.core.durations import parse_duration
    from dfscan.db.retention import prune

    engine = db.make_engine(settings.db_url)
    try:
        report = prune(engine, older_than=parse_duration(older_than))
    finally:
        engine.dispose()
    return {"scans": [s.scan_id for s in report.scans], "rows": report.rows_by_table(),
            "skipped_running": report.skipped_running}


def run_entry(settings: Settings, message: dict[str, Any], *, run_key: str) -> int:
    """Run one due entry as an incremental scan (in a worker); returns the scan id.

    ``run_key`` (the task id) names the scan, so a redelivered task resumes the
    scan its first delivery started.
    """
    from dfscan import db
    from dfscan.scanner import ScanSource, WalkOptions, check_roots
    from dfscan.workers.fleet.producer import Producer

    entry = ScheduleEntry(**{k: message[k] for k in message if k in _KNOWN})
    settings = settings.with_(
        model=Path(entry.model), extensions=tuple(entry.extensions) if entry.extensions else None,
        chunk_size=entry.chunk_size, threshold=entry.threshold, max_outstanding_chunks=entry.max_outstanding,
        reuse_verdicts=entry.reuse_verdicts,
    )
    name = f"{entry.name} {run_key}"
    with Producer(settings) as producer:
        with producer.sessions() as session:
            existing = db.find_scan_by_name(session, name)
        if existing is not None:
            with producer.sessions() as session:
                running = db.scan_head(session, existing).status == "running"
            if running:
                producer.resume(existing)
            return existing
        roots = check_roots(entry.roots, settings.s3_endpoint_url, resolve=not entry.follow_symlinks)
        source = ScanSource(tuple(roots), tuple(entry.paths_from),
                            WalkOptions(settings.scan_extensions, entry.follow_symlinks, settings.s3_endpoint_url))
        scan_id = producer.register(source, name=name, incremental=True)
        producer.produce(scan_id)
        return scan_id
