"""The core commands: ``scan`` (embedded, or the producer with --broker), ``results`` and ``export``."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from dfscan.commands._progress import ScanProgressBar
from dfscan.commands._options import (
    batch_size_option,
    broker_option,
    db_option,
    face_options,
    face_settings,
    json_option,
    migrated_database,
    max_outstanding_option,
    model_option,
    one_line,
    reports_errors,
    reuse_verdicts_option,
    runtime_options,
    s3_endpoint_option,
    scan_id_option,
    setting_option,
    stop_on_signals,
    threads_option,
    provenance_options,
    provenance_settings,
    video_options,
    video_settings,
)
from dfscan.core.redact import mask_url
from dfscan.core.settings import from_env, parse_extensions

@click.command()
@click.argument("roots", nargs=-1, type=click.Path())
@model_option
@db_option
@click.option("--name", envvar="DFSCAN_NAME", show_envvar=True, help="A name for the scan.")
@setting_option("--threshold", field="threshold", type=float,
                help="Decision threshold on p_fake [default: the model's, else 0.5].")
@click.option("--paths-from", type=click.Path(allow_dash=True), multiple=True, envvar="DFSCAN_PATHS_FROM",
              show_envvar=True, help="A file listing paths, one per line ('-' for stdin). Repeatable.")
@setting_option("--extensions", field="extensions",
                help="Comma-separated image extensions to take from directories (case-insensitive).")
@batch_size_option
@setting_option("--chunk-size", field="chunk_size", type=int, help="Paths per chunk.")
@runtime_options
@setting_option("--max-pixels", field="max_pixels", type=int, help="Refuse images whose header declares more pixels.")
@threads_option
@face_options
@s3_endpoint_option
@video_options
@provenance_options
@click.option("--no-follow-symlinks", is_flag=True, help="Do not follow symbolic links while walking.")
@click.option("--incremental", is_flag=True, envvar="DFSCAN_INCREMENTAL", show_envvar=True,
              help="Skip files whose path, size and mtime already have an 'ok' (or 'no-face') row from this model.")
@reuse_verdicts_option
@broker_option
@click.option("--wait", is_flag=True, help="With --broker: follow progress until the scan completes.")
@max_outstanding_option
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@json_option("the summary")
@reports_errors
def scan(roots: tuple[str, ...], model: Path | None, db_url: str, name: str | None, threshold: float | None,
         paths_from: tuple[str, ...], extensions: str | None, batch_size: int | None, chunk_size: int | None,
         runtime: str | None, decoder: str | None, precision: str | None, engine_dir: Path | None,
         max_pixels: int | None, intra_op_threads: int | None, s3_endpoint_url: str | None, no_follow_symlinks: bool, incremental: bool, reuse_verdicts: bool | None, broker_url: str | None, wait: bool,
         max_outstanding_chunks: int | None, progress: bool | None, as_json: bool, **stages: Any) -> None:
    """Scan ROOTS (files and directories, recursively, or s3://BUCKET/PREFIX) and store one row per image or video.

    Exit status 0 means the scan completed, even where some images failed:
    those are rows with status 'error' and a reason.  With --broker the scan
    is registered and its chunks enqueued for workers; the command prints the
    scan id and returns once every chunk is enqueued (--wait: once scored).
    """
    from dfscan.scanner import ScanSource, WalkOptions, check_roots
    from dfscan.workers.scoring.local import LocalScan

    from dfscan.scanner.sources import NAME_MAX

    if not roots and not paths_from:
        raise click.UsageError("give at least one ROOT or --paths-from FILE")
    if name is not None and len(name) > NAME_MAX:
        raise click.BadParameter(f"at most {NAME_MAX} characters, got {len(name)}", param_hint="--name")
    settings = from_env(
        db_url=db_url, model=model, threshold=threshold, extensions=parse_extensions(extensions),
        batch_size=batch_size, chunk_size=chunk_size, runtime=runtime, decoder=decoder, precision=precision,
        engine_dir=engine_dir, max_pixels=max_pixels,
        intra_op_threads=intra_op_threads, follow_symlinks=False if no_follow_symlinks else None,
        broker_url=broker_url, max_outstanding_chunks=max_outstanding_chunks, s3_endpoint_url=s3_endpoint_url,
        reuse_verdicts=reuse_verdicts, batches=stages.pop("batches", None),
        **face_settings(stages), **video_settings(stages), **provenance_settings(stages),
    )
    # Not following links, the scan is confined to its roots' real paths (scanner.confine): resolved here.
    source = ScanSource(tuple(check_roots(roots, settings.s3_endpoint_url, resolve=not settings.follow_symlinks)),
                        tuple(paths_from),
                        WalkOptions(extensions=settings.scan_extensions, follow_symlinks=settings.follow_symlinks,
                                    s3_endpoint_url=settings.s3_endpoint_url))
    show = sys.stderr.isatty() if progress is None else progress
    if settings.broker_url:
        from dfscan.commands.distributed import produce_scan

        _check_broker(settings.broker_url)
        produce_scan(settings, source, name=name, incremental=incremental, wait=wait, progress=show,
                     as_json=as_json)
        return
    if wait:
        raise click.UsageError("--wait needs --broker (the embedded scan always runs to the end)")
    from dfscan.core.chatter import library_chatter_to_log

    # Image libraries' own warnings (libjpeg, libtiff, Pillow) go to the debug log; stderr gets one line.
    with library_chatter_to_log() as chatter:
        job = LocalScan(settings, source, name=name, incremental=incremental)
        bar = ScanProgressBar(source.count) if show else None
        try:
            with stop_on_signals() as stop:
                summary = job.run(stop=stop, on_batch=(lambda rows, _timings: bar.rows(rows)) if bar else None)
        finally:
            if bar is not None:
                bar.close()
    _print_summary(summary, settings.db_url, as_json, job.warnings, skipped=job.skipped if incremental else None)
    if not as_json and (line := chatter.summary()):
        click.echo(line, err=True)
    if summary.status != "completed":
        raise click.ClickException(
            f"scan {summary.scan_id} was interrupted after {summary.total} images; the rows written are kept. "
            f"Run the same command with --incremental to score only the files not yet scored"
        )


def _check_broker(url: str) -> None:
    """Refuse to start a fleet scan whose broker can't be reached: no scan row is made for it."""
    from dfscan.workers.fleet.broker import check_broker
    from dfscan.workers.fleet.errors import BrokerUnreachable

    try:
        check_broker(url)
    except BrokerUnreachable as exc:
        raise click.ClickException(f"cannot reach the broker at {mask_url(exc.url)}: {one_line(exc.reason)}") from None


def _print_summary(summary: Any, db_url: str, as_json: bool, warnings: list[str], skipped: int | None = None) -> None:
    data = summary_dict(summary)
    if skipped is not None:
        data["skipped"] = skipped
    if as_json:
        data["warnings"] = warnings
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(
        f"scan {summary.scan_id} {summary.status}: {summary.total} images in {summary.elapsed_s:.1f} s "
        f"({summary.images_per_s:.1f} images/s)"
    )
    click.echo(f"  real    {summary.real}")
    click.echo(f"  fake    {summary.fake}")
    click.echo(f"  error   {summary.errors}")
    if summary.no_face:
        click.echo(f"  no-face {summary.no_face} (faces on, no face found: neither a verdict nor an error)")
    click.echo(f"  scored {summary.computed}, copies {summary.copied} (same bytes earlier in this scan), "
               f"reused {summary.reused} (earlier scans, same model)")
    if summary.matched:
        click.echo(f"  matched {summary.matched} files against the hash banks ({summary.matches} matches: "
                   "dfscan results, or the scan_matches view)")
    if summary.manifests or summary.declared_synthetic:
        click.echo(f"  provenance: {summary.manifests} with a C2PA manifest ({summary.invalid_manifests} invalid), "
                   f"{summary.declared_synthetic} declared synthetic (dfscan results --declared)")
    if skipped is not None:
        click.echo(f"  skipped {skipped} (unchanged since an earlier scan with this model)")
    if summary.errors_by_reason:
        click.echo("errors by reason:")
        for reason, count in sorted(summary.errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"  {reason:<18} {count}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"results: {mask_url(db_url)}  (dfscan results --scan {summary.scan_id})")


def summary_dict(summary: Any) -> dict:
    return {
        "scan_id": summary.scan_id,
        "name": summary.name,
        "status": summary.status,
        "model_sha256": summary.model_sha256,
        "total": summary.total,
        "ok": summary.ok,
        "real": summary.real,
        "fake": summary.fake,
        "errors": summary.errors,
        "no_face": getattr(summary, "no_face", 0),
        "computed": summary.computed,
        "copied": summary.copied,
        "reused": summary.reused,
        "manifests": summary.manifests,
        "invalid_manifests": summary.invalid_manifests,
        "declared_synthetic": summary.declared_synthetic,
        "errors_by_reason": dict(summary.errors_by_reason),
        "started_at": summary.started_at,
        "finished_at": summary.finished_at,
        "elapsed_s": round(summary.elapsed_s, 3),
        "images_per_s": round(summary.images_per_s, 3),
    }


RESULT_COLUMNS = ("scan_id", "path", "status", "label", "p_fake", "confidence", "error", "model_sha256", "scanned_at",
                  "faces", "faces_found", "kind", "frames", "duration_s", "notes",
                  "content_hash", "verdict_source", "synthetic_declared", "c2pa", "c2pa_state", "c2pa_codes", "signer",
                  "generator", "source_type", "watermark", "watermark_ber")


@click.command()
@db_option
@scan_id_option
@click.option("--label", type=click.Choice(["real", "fake"]), help="Only rows with this label.")
@click.option("--status", type=click.Choice(["ok", "error", "no-face"]), help="Only rows with this status.")
@click.option("--min-p", type=float, help="Only rows with p_fake >= P.")
@click.option("--limit", type=click.IntRange(min=0),
              help="At most this many rows, in the order of the scan's key (path_hash), which the key's index "
                   "serves without reading the rest of the scan; without --limit, rows are in path order.")
@click.option("--declared", is_flag=True, envvar="DFSCAN_RESULTS_DECLARED", show_envvar=True,
              help="Only files that declare themselves synthetic (C2PA or IPTC source type, generator settings, "
                   "a known watermark).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@reports_errors
def results(db_url: str, scan_id: int | None, label: str | None, status: str | None, min_p: float | None,
            limit: int | None, declared: bool, fmt: str) -> None:
    """Print result rows of a scan, for people (table) or scripts (csv, json).

    Each row carries what the file says about its own origin (the scan_provenance
    view): its C2PA manifest and validation state, signer, generator, IPTC source
    type, watermark, and whether it declares itself synthetic.

    In the table, control characters in file names and errors are shown
    escaped (``\\x1b``), never sent to the terminal.  A reader that stops
    early (``| head``) ends the command quietly, with exit status 141.
    """
    from dfscan import db

    with migrated_database(db_url) as sessions, sessions() as session:
        if scan_id is None:
            scan_id = db.latest_scan_id(session)
            if scan_id is None:
                raise click.ClickException(f"no scans in {mask_url(db_url)}")
        else:
            db.scan_head(session, scan_id)  # ScanNotFound before anything is printed
        rows = db.iter_results(session, scan_id=scan_id, label=label, min_p=min_p, status=status, limit=limit,
                               declared=True if declared else None, provenance=True)
        try:
            _emit_rows(rows, fmt)
            sys.stdout.flush()
        except BrokenPipeError:
            rows.close()  # type: ignore[attr-defined]  # the cursor closes while its connection is open
            _stdout_closed()


def _stdout_closed() -> None:
    """The reader of stdout went away (``dfscan results | head``): stop as SIGPIPE would, without a traceback.

    stdout is pointed at /dev/null so that the interpreter's final flush has nowhere to fail.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise SystemExit(141)


def _printable(text: str) -> str:
    """``text`` for a terminal: control and other non-printable characters as Python escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _emit_rows(rows: Iterator[dict], fmt: str) -> None:
    out = sys.stdout
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(RESULT_COLUMNS)
        for row in rows:
            writer.writerow(["" if row[c] is None else _cell(row[c]) for c in RESULT_COLUMNS])
    elif fmt == "json":
        out.write("[")
        for i, row in enumerate(rows):
            out.write(("," if i else "") + "\n  " + json.dumps({c: row[c] for c in RESULT_COLUMNS}, default=str))
        out.write("\n]\n")
    else:
        out.write(f"{'status':<7} {'label':<5} {'p_fake':>7} {'conf':>6} {'kind':<5} {'frames':>6}  path / error\n")
        for row in rows:
            p = "" if row["p_fake"] is None else f"{row['p_fake']:.4f}"
            c = "" if row["confidence"] is None else f"{row['confidence']:.3f}"
            frames = "" if row["frames"] is None else str(row["frames"])
            tail = {"ok": row["path"], "no-face": f"{row['path']}  [no face]"}.get(
                row["status"], f"{row['path']}  [{row['error']}]")
            tail = _printable(str(tail) + _provenance_tag(row))
            out.write(f"{row['status']:<7} {row['label'] or '':<5} {p:>7} {c:>6} {row['kind']:<5} {frames:>6}  "
                      f"{tail!s}\n")


def _cell(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _provenance_tag(row: dict) -> str:
    """What a table row adds about the file's origin: `` [C2PA invalid: codes; declared synthetic: ...]``."""
    parts = []
    if row.get("c2pa") in ("embedded", "remote", "error"):
        state = row["c2pa_state"] or ("remote, not fetched" if row["c2pa"] == "remote" else row["c2pa"])
        codes = f": {row['c2pa_codes']}" if row.get("c2pa_codes") else ""
        parts.append(f"C2PA {state}{codes}" + (f" ({row['signer']})" if row.get("signer") else ""))
    if row.get("synthetic_declared"):
        why = [v for v in (row.get("source_type"), row.get("generator"), row.get("watermark")) if v]
        parts.append("declared synthetic" + (f" ({', '.join(map(str, why))})" if why else ""))
    return f"  [{'; '.join(parts)}]" if parts else ""


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for model.onnx and model_info.json.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17 or newer).")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Decision threshold stored in model_info.json.")
@click.option("--torch-program/--no-torch-program", default=True, show_default=True,
              help="Also write model.pt2 (torch.export), the file of --runtime torch.")
@click.option("--video/--no-video", default=True, show_default=True, envvar="DFSCAN_EXPORT_VIDEO", show_envvar=True,
              help="Also write model.video.onnx, the sequence graph (N, T, 3, H, W) that scores a video's sampled "
                   "frames through the LSTM.")
@click.option("--frames", type=click.IntRange(1, 1024), envvar="DFSCAN_EXPORT_FRAMES", show_envvar=True,
              help="Frames per video recorded in model_info.json (default: the T the checkpoint was trained "
                   "with, 16 for one trained on images).")
@reports_errors
def export(checkpoint: Path, out_dir: Path, opset: int, threshold: float, torch_program: bool, video: bool,
           frames: int | None) -> None:
    """Export a detector CHECKPOINT to ONNX (and a torch.export program), checked against PyTorch.

    Writes model.onnx (single frames, (N, 3, H, W)) and, unless --no-video,
    model.video.onnx (sequences of sampled video frames, (N, T, 3, H, W), N and
    T dynamic), each checked against PyTorch, and model_info.json naming both.
    """
    from dfscan.detector.export import export_onnx
    from dfscan.trt.model_info import PROGRAM_KEY

    if opset < 17:
        raise click.BadParameter("opset 17 or newer is required", param_hint="--opset")
    result = export_onnx(checkpoint, out_dir, opset=opset, threshold=threshold, torch_program=torch_program,
                         video=video, frames=frames)
    program = result.info.extra.get(PROGRAM_KEY)
    also = f", {result.info.folder.beside(program['file'])}" if isinstance(program, dict) else ""
    also += f", {result.video_path}" if result.video_path else ""
    click.echo(f"wrote {result.onnx_path}{also} and {result.info_path}")
    if result.max_abs_diff is not None:
        click.echo(f"max |logit difference| ONNX Runtime vs PyTorch: {result.max_abs_diff:.2e}")
    if result.video_max_abs_diff is not None:
        click.echo(f"video graph: {result.frames} frames per video, max |logit difference| "
                   f"{result.video_max_abs_diff:.2e}")


COMMANDS = [scan, results, export]
