"""`dfscan prune`: remove old scans with every row of theirs (retention)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click

from dfscan.commands._options import SCAN_ID, db_option, json_option, reports_errors
from dfscan.commands.scan import _printable
from dfscan.core.durations import DurationError, format_duration, parse_duration
from dfscan.core.redact import mask_url


class Duration(click.ParamType):
    """``90d``, ``12h``, ``2w``, ``30m``, ``45s``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except DurationError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@db_option
@click.option("--older-than", type=Duration(), envvar="DFSCAN_PRUNE_OLDER_THAN", show_envvar=True,
              help="Prune scans that ended (or, unfinished, started) longer ago than this: 90d, 12h, 2w, 30m.")
@click.option("--scan", "scan_ids", type=SCAN_ID, multiple=True,
              help="Prune this scan (repeatable). With --older-than: only those of them that are old enough.")
@click.option("--dry-run", is_flag=True, envvar="DFSCAN_PRUNE_DRY_RUN", show_envvar=True,
              help="Count what would be removed; change nothing.")
@click.option("--include-running", is_flag=True, envvar="DFSCAN_PRUNE_INCLUDE_RUNNING", show_envvar=True,
              help="Prune running scans too (cancel them first: their workers would go on writing).")
@click.option("--yes", "-y", is_flag=True, envvar="DFSCAN_PRUNE_YES", show_envvar=True,
              help="Do not ask for confirmation.")
@json_option("what was removed (or would be)")
@reports_errors
def prune(db_url: str, older_than: timedelta | None, scan_ids: tuple[int, ...], dry_run: bool,
          include_running: bool, yes: bool, as_json: bool) -> None:
    """Remove scans with their rows: results, faces, frames, explanations, matches, provenance, chunks, reviews.

    Every table with a scan_id column is emptied of the scan's rows, then the
    scan itself goes. On PostgreSQL a results table partitioned by scan loses
    the scan's partition (DETACH, DROP) rather than its rows one by one;
    elsewhere rows go in batches, each its own short transaction. Running
    scans are left alone unless --include-running. Asks before removing
    anything unless --yes (or --dry-run, which only counts).
    """
    from dfscan import db
    from dfscan.db.errors import ScanRunning
    from dfscan.db.retention import prune as prune_scans

    if older_than is None and not scan_ids:
        raise click.UsageError("give --older-than DURATION (e.g. 90d) or --scan N")
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine)
        ask = not (dry_run or yes)
        try:
            report = prune_scans(engine, older_than=older_than, scan_ids=scan_ids, include_running=include_running,
                                 dry_run=dry_run or ask)
            if ask and report.scans:
                _print(report, older_than, db_url)
                click.confirm(f"Remove {len(report.scans)} scan(s) and their rows?", abort=True, err=True)
                report = prune_scans(engine, older_than=older_than,
                                     scan_ids=scan_ids or [s.scan_id for s in report.scans],
                                     include_running=include_running)
        except ScanRunning as exc:
            raise click.ClickException(f"{exc}: cancel it first (dfscan cancel {exc.scan_id}), "
                                       "or pass --include-running") from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(_as_dict(report), indent=2, default=str))
    else:
        _print(report, older_than, db_url)


def _as_dict(report: Any) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "cutoff": report.cutoff,
        "scans": [{"scan_id": s.scan_id, "name": s.name, "status": s.status, "ended_at": s.ended_at,
                   "rows": s.rows, "partitions_dropped": list(s.partitions)} for s in report.scans],
        "rows_by_table": report.rows_by_table(),
        "skipped_running": report.skipped_running,
    }


def _print(report: Any, older_than: timedelta | None, db_url: str) -> None:
    verb = "would remove" if report.dry_run else "removed"
    age = f" older than {format_duration(older_than)} (ended before {report.cutoff:%Y-%m-%d %H:%M} UTC)" \
        if older_than is not None else ""
    click.echo(f"{mask_url(db_url)}: {verb} {len(report.scans)} scan(s){age}")
    for s in report.scans:
        parts = f"; partition {', '.join(s.partitions)} {'to drop' if report.dry_run else 'dropped'}" \
            if s.partitions else ""
        click.echo(f"  scan {s.scan_id:<6} {s.status:<10} ended {s.ended_at:%Y-%m-%d %H:%M}  "
                   f"{s.total_rows:>12,} rows{parts}  {_printable(s.name)}")
    rows = report.rows_by_table()
    if rows:
        click.echo("rows by table:")
        width = max(len(t) for t in rows)
        for table, n in sorted(rows.items()):
            click.echo(f"  {table:<{width}} {n:>14,}")
    if report.skipped_running:
        click.echo(f"left alone: running scan(s) {', '.join(map(str, report.skipped_running))} "
                   "(--include-running prunes them too)")


COMMANDS = [prune]
