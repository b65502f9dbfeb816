"""Distributed mode: ``worker``, ``status``, ``resume``, ``cancel``, ``beat``, and ``scan --broker``.

Celery, the model and the runtime are imported inside the commands: ``dfscan
--help`` loads this module.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from dfscan.commands._progress import ScanProgressBar
from dfscan.commands._options import (
    batch_size_option,
    broker_option,
    db_option,
    json_option,
    max_attempts_option,
    max_outstanding_option,
    model_option,
    provenance_options,
    provenance_settings,
    reports_errors,
    runtime_options,
    s3_endpoint_option,
    setting_option,
    stop_on_signals,
    threads_option,
    visibility_timeout_option,
)
from dfscan.core.settings import Settings, from_env


def _settings(**overrides: Any) -> Settings:
    """``DFSCAN_*`` variables for every field, the command's options on top."""
    return from_env(**overrides)


def _need_broker(settings: Settings) -> None:
    if not settings.broker_url:
        raise click.UsageError("no broker: pass --broker redis://HOST:PORT/DB or set DFSCAN_BROKER_URL")


def safe_url(url: str | None) -> str:
    """A URL fit for a terminal or a log: the password masked."""
    from dfscan.core.redact import mask_url

    return mask_url(url) if url else ""


# --- scan --broker ---------------------------------------------------------------------


def produce_scan(settings: Settings, source: Any, *, name: str | None, incremental: bool, wait: bool,
                 progress: bool, as_json: bool) -> None:
    """The producer side of ``dfscan scan --broker``."""
    from dfscan.workers.fleet.producer import Producer

    with Producer(settings) as producer, stop_on_signals() as stop:
        scan_id = producer.register(source, name=name, incremental=incremental)
        click.echo(f"scan {scan_id}: enqueuing chunks on {safe_url(settings.broker_url)}", err=True)
        report = producer.produce(scan_id, stop=stop)
        final = producer.wait(scan_id, on_progress=ScanProgressBar().summary if progress else None, stop=stop) if wait and not report.stopped else producer.progress(scan_id)
    data = {
        "scan_id": scan_id,
        "status": final.status,
        "chunks_enqueued": report.chunks_published,
        "images": report.images_recorded,
        "skipped": report.skipped if incremental else None,
        "walk_done": not report.stopped,
        "progress": final.as_dict(),
    }
    for warning in producer.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(f"scan {scan_id} {final.status}: {report.images_recorded} images in "
                   f"{report.chunks_published} chunks enqueued")
        if incremental:
            click.echo(f"  skipped {report.skipped} (unchanged since an earlier scan with this model)")
        if wait:
            _print_progress(final)
        else:
            click.echo(f"follow it with: dfscan status {scan_id}")
    if report.stopped:
        raise click.ClickException(f"scan {scan_id} was stopped before every chunk was enqueued; "
                                   f"`dfscan resume {scan_id}` goes on")
    if wait and final.status != "completed":
        raise click.ClickException(f"scan {scan_id} is {final.status}")


def _print_progress(p: Any) -> None:
    total = f"{p.images_total}" + ("" if p.walk_done else "+ (walk in progress)")
    click.echo(f"scan {p.scan_id} ({p.name}) {p.status}")
    click.echo(f"  images   {p.images_done} of {total} done: {p.ok} ok, {p.errors} errors")
    click.echo(f"  verdicts {p.computed} scored, {p.copied} copies (same bytes earlier in this scan), "
               f"{p.reused} reused (earlier scans)")
    if p.matched:
        click.echo(f"  matched  {p.matched} files against the hash banks ({p.matches} matches)")
    if p.manifests or p.declared_synthetic:
        click.echo(f"  origin   {p.manifests} with a C2PA manifest ({p.invalid_manifests} invalid), "
                   f"{p.declared_synthetic} declared synthetic")
    click.echo(f"  chunks   {p.chunks_queued} queued, {p.chunks_done} done, {p.chunks_failed} failed")
    if p.skipped:
        click.echo(f"  skipped  {p.skipped} unchanged files (incremental)")
    click.echo(f"  rate     {p.images_per_s:.1f} images/s over {p.elapsed_s:.0f} s")
    if p.eta_s is not None:
        click.echo(f"  eta      {_duration(p.eta_s)}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --- worker ----------------------------------------------------------------------------


@click.command()
@broker_option
@db_option
@model_option
@click.option("--concurrency", type=int, default=1, show_default=True, envvar="DFSCAN_CONCURRENCY", show_envvar=True,
              help="Pool processes; one per GPU (each loads the model once).")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork", show_default=True,
              help="Celery pool: prefork gives each chunk a process that can die alone.")
@click.option("--queues", "-Q", envvar="DFSCAN_QUEUES", show_envvar=True,
              help="Comma-separated queues to consume [the scoring queue, 'dfscan'].")
@runtime_options
@batch_size_option
@threads_option
@max_attempts_option
@visibility_timeout_option
@setting_option("--lease-seconds", field="lease_seconds", type=int,
                help="A chunk being scored is leased for this long, renewed while it scores; a chunk whose lease "
                     "runs out (its worker's host died) is enqueued again.")
@setting_option("--lease-renew", field="lease_renew_seconds", type=float,
                help="Seconds between lease renewals, and between passes of the worker's reaper of expired leases.")
@setting_option("--metrics-port", field="metrics_port", type=int,
                help="Serve Prometheus metrics on this port (summed over the pool's processes).")
@setting_option("--metrics-bind", field="metrics_bind",
                help="Address the metrics endpoint listens on (0.0.0.0: every interface; it has no authentication).")
@s3_endpoint_option
@provenance_options
@click.option("--events", "-E", is_flag=True, envvar="DFSCAN_EVENTS", show_envvar=True,
              help="Send task events, for Flower's task views (`celery -A dfscan.workers flower`).")
@click.option("--hostname", "-n", help="Celery node name [dfscan-PID@HOST].")
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Celery log level.")
@click.option("--include", "-I", multiple=True, help="Extra module to import in the worker (signal handlers). Repeatable.")
@reports_errors
def worker(broker_url: str | None, db_url: str, model: Path | None, concurrency: int, pool: str, queues: str | None,
           runtime: str | None, decoder: str | None, precision: str | None, engine_dir: Path | None, batch_size: int | None, intra_op_threads: int | None,
           max_attempts: int | None, visibility_timeout: int | None, lease_seconds: int | None,
           lease_renew_seconds: float | None, metrics_port: int | None, metrics_bind: str | None,
           s3_endpoint_url: str | None, events: bool,
           hostname: str | None, loglevel: str, include: tuple[str, ...], **provenance: Any) -> None:
    """Start a Celery worker that scores chunks and writes their rows.

    The model is found from the scan (the path and SHA-256 it was registered
    with; --model names another copy of the same file) and loaded once per
    pool process, on its first chunk.
    """
    import os

    from dfscan import db
    from dfscan.workers.fleet.app import create_app, set_app

    settings = _settings(broker_url=broker_url, db_url=db_url, model=model, runtime=runtime, decoder=decoder,
                         precision=precision, engine_dir=engine_dir,
                         batch_size=batch_size, intra_op_threads=intra_op_threads, max_attempts=max_attempts,
                         visibility_timeout=visibility_timeout, lease_seconds=lease_seconds,
                         lease_renew_seconds=lease_renew_seconds, metrics_port=metrics_port,
                         metrics_bind=metrics_bind, s3_endpoint_url=s3_endpoint_url,
                         batches=provenance.pop("batches", None), **provenance_settings(provenance))
    _need_broker(settings)
    if concurrency < 1:
        raise click.BadParameter("must be at least 1", param_hint="--concurrency")
    if settings.metrics_port is not None:
        _serve_metrics(settings)
    # Migrate once here, before the pool forks: no connection crosses a fork.
    engine = db.make_engine(settings.db_url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    app = create_app(settings)
    set_app(app)
    argv = [
        "worker", f"--loglevel={loglevel}", f"--pool={pool}", f"--concurrency={concurrency}",
        f"--queues={queues or settings.queue}", f"--hostname={hostname or f'dfscan-{os.getpid()}@%h'}",
        # Mingle and gossip are cluster chatter dfscan does not use. Heartbeats stay:
        # with --events they tell Flower which workers are online.
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    if events:
        argv.append("--task-events")
    if include:
        argv.append(f"--include={','.join(include)}")
    app.worker_main(argv)


def _serve_metrics(settings: Settings) -> None:
    """Start the metrics endpoint in the main process, before the pool forks.

    Pool processes write their metrics to files in PROMETHEUS_MULTIPROC_DIR
    (prometheus_client's multiprocess mode, chosen when it is first imported,
    hence the variable is set first); the endpoint serves their sum.
    """
    import os
    import tempfile

    directory = tempfile.mkdtemp(prefix="dfscan-prom-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from dfscan.core.constants import producer_queue
    from dfscan.workers.fleet.metrics import WorkerMetrics, redis_queue_depth, start_metrics_server

    metrics = WorkerMetrics()
    metrics.set_queue_depth(redis_queue_depth(settings.broker_url, [settings.queue, producer_queue(settings.queue)]))
    server = start_metrics_server(settings.metrics_port, settings.metrics_bind, metrics=metrics,
                                  multiprocess_dir=directory)
    click.echo(f"metrics on http://{server.address}:{server.port}/metrics", err=True)


# --- status / resume / cancel ----------------------------------------------------------


def _producer(settings: Settings):
    from dfscan.workers.fleet.producer import Producer

    return Producer(settings)


@click.command()
@click.argument("scan_id", type=int)
@db_option
@json_option("the counts")
@reports_errors
def status(scan_id: int, db_url: str, as_json: bool) -> None:
    """Where scan SCAN_ID stands: images done, errors, chunks queued, images/s and ETA.

    Also lists the chunks whose lease expired (their worker vanished) and when
    they were enqueued again.
    """
    with _producer(_settings(db_url=db_url)) as producer:
        p = producer.progress(scan_id)
        leases = producer.lease_records(scan_id)
    if as_json:
        data = p.as_dict()
        data["expired_leases"] = [dataclasses.asdict(r) for r in leases]
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_progress(p)
        _print_leases(leases)


def _print_leases(leases: list[Any], limit: int = 10) -> None:
    if not leases:
        return
    waiting = sum(r.expired for r in leases)
    requeued = sum(r.requeues for r in leases)
    click.echo(f"  leases   {len(leases)} chunks lost their worker: {requeued} re-enqueues"
               + (f", {waiting} expired and not yet re-enqueued" if waiting else ""))
    for r in leases[:limit]:
        if r.expired:
            what = f"lease of {r.lease_owner} expired at {_time(r.lease_until)}, waiting for a reaper"
        else:
            what = (f"lease expired at {_time(r.lease_expired_at)}, re-enqueued at "
                    f"{_time(r.requeued_at)}" + (f" ({r.requeues} times)" if r.requeues > 1 else ""))
        click.echo(f"    chunk {r.seq} ({r.status}): {what}")
    if len(leases) > limit:
        click.echo(f"    ... and {len(leases) - limit} more (--json lists them all)")


def _time(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "?"


@click.command()
@click.argument("scan_id", type=int)
@broker_option
@db_option
@click.option("--wait", is_flag=True, help="Follow progress until the scan completes.")
@max_outstanding_option
@click.option("--progress/--no-progress", default=None, help="Progress bar with --wait (default: on a terminal).")
@reports_errors
def resume(scan_id: int, broker_url: str | None, db_url: str, wait: bool, max_outstanding_chunks: int | None,
           progress: bool | None) -> None:
    """Enqueue again every chunk of SCAN_ID without results, and finish its walk if it was cut short.

    For after the broker lost its data (a Redis restart without persistence)
    or the producer was killed.  Chunks still in the broker are delivered
    twice; the second delivery finds them done.
    """
    settings = _settings(broker_url=broker_url, db_url=db_url, max_outstanding_chunks=max_outstanding_chunks)
    _need_broker(settings)
    show = sys.stderr.isatty() if progress is None else progress
    with _producer(settings) as producer, stop_on_signals() as stop:
        report = producer.resume(scan_id, stop=stop)
        final = producer.wait(scan_id, on_progress=ScanProgressBar().summary if show else None, stop=stop) if wait else producer.progress(scan_id)
    click.echo(f"scan {scan_id}: {report.chunks_published} chunks enqueued again; {final.status}")
    if wait:
        _print_progress(final)
    if report.stopped:
        raise click.ClickException(f"scan {scan_id}: resume was stopped before every chunk was enqueued")


@click.command()
@click.argument("scan_id", type=int)
@db_option
@reports_errors
def cancel(scan_id: int, db_url: str) -> None:
    """Cancel SCAN_ID: workers drop its remaining chunks unscored; the rows written are kept."""
    with _producer(_settings(db_url=db_url)) as producer:
        changed = producer.cancel(scan_id)
        p = producer.progress(scan_id)
    click.echo(f"scan {scan_id} {'cancelled' if changed else 'was already ' + p.status}: "
               f"{p.images_done} images have rows, {p.chunks_queued} chunks left unscored")


# --- beat ------------------------------------------------------------------------------


@click.command()
@click.option("--schedule", "schedule_file", required=True, envvar="DFSCAN_SCHEDULE", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Schedule file (TOML).")
@broker_option
@db_option
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("dfscan-beat.db"), show_default=True, help="Where beat remembers the last runs.")
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Celery log level.")
@click.option("--check", is_flag=True, help="Validate the schedule file, print its entries, and exit.")
@reports_errors
def beat(schedule_file: Path, broker_url: str | None, db_url: str, state_file: Path, loglevel: str, check: bool) -> None:
    """Run the nightly schedules of SCHEDULE with Celery beat.

    Each due entry sends one producer task (queue 'dfscan.producer'), which a
    worker started with `dfscan worker -Q dfscan.producer` runs as an
    incremental scan: it walks, records and enqueues the chunks for the
    scoring workers. With DFSCAN_RETENTION set (e.g. 90d) beat also sends a
    prune of the scans older than that, at DFSCAN_RETENTION_CRON (UTC,
    default 15 3 * * *), to the same producer queue.
    """
    from dfscan.workers.fleet.schedule import beat_schedule, load_schedule, retention_schedule

    entries = load_schedule(schedule_file)
    settings = _settings(broker_url=broker_url, db_url=db_url)
    retention = retention_schedule(settings)  # DFSCAN_RETENTION: the nightly prune, off by default
    if check:
        for e in entries:
            click.echo(f"{e.name:<20} {e.cron:<16} {', '.join(e.roots)}  model={e.model}")
        for name in retention:
            click.echo(f"{name:<20} {settings.retention_cron:<16} prune scans older than {settings.retention}")
        return
    _need_broker(settings)
    from dfscan.workers.fleet.app import create_app, set_app

    app = create_app(settings)
    app.conf.beat_schedule = {**beat_schedule(entries), **retention}
    set_app(app)
    click.echo(f"beat: {len(entries)} schedule(s) on {safe_url(settings.broker_url)}", err=True)
    app.start(["beat", f"--loglevel={loglevel}", f"--schedule={state_file}"])


COMMANDS = [worker, status, resume, cancel, beat]

__all__ = ["COMMANDS", "produce_scan", "safe_url"]
