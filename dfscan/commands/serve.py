"""``dfscan serve`` (the HTTP API) and ``dfscan api-key create|list|revoke`` (its bearer tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dfscan.commands._options import (
    batch_size_option,
    broker_option,
    db_option,
    face_options,
    face_settings,
    json_option,
    migrated_database,
    model_option,
    reports_errors,
    runtime_options,
    setting_option,
    threads_option,
)
from dfscan.core.settings import from_env, parse_roots


@click.command()
@setting_option("--host", field="serve_host", help="Address to listen on.")
@setting_option("--port", field="serve_port", type=int, help="Port to listen on (0: any free port).")
@model_option
@db_option
@setting_option("--roots", field="serve_roots",
                help="Directories a scan through the API may name, separated by ':' (none: no scans).")
@batch_size_option
@setting_option("--max-batch-delay-ms", field="max_batch_delay_ms", type=float,
                help="How long the batcher waits for more uploads to fill a batch.")
@setting_option("--max-upload-bytes", field="max_upload_bytes", type=int,
                help="Largest request body of /v1/score (413 beyond).")
@setting_option("--max-upload-files", field="max_upload_files", type=int, help="Most files per /v1/score request.")
@setting_option("--request-timeout", field="request_timeout_s", type=float,
                help="Seconds a client may take to send its request body (408 after).")
@setting_option("--threshold", field="threshold", type=float,
                help="Decision threshold on p_fake [default: the model's, else 0.5].")
@runtime_options
@face_options
@threads_option
@broker_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@reports_errors
def serve(serve_host: str | None, serve_port: int | None, model: Path | None, db_url: str, serve_roots: str | None,
          batch_size: int | None, max_batch_delay_ms: float | None, max_upload_bytes: int | None,
          max_upload_files: int | None, request_timeout_s: float | None, threshold: float | None,
          runtime: str | None, decoder: str | None, precision: str | None, engine_dir: Path | None,
          intra_op_threads: int | None, broker_url: str | None, log_level: str, **faces: Any) -> None:
    """Run the HTTP API: POST /v1/score (uploads), /v1/scans (scans of the server's storage).

    OpenAPI at /docs and /openapi.json; /healthz, /readyz, /metrics for operations. Every /v1 request
    needs `Authorization: Bearer KEY` (dfscan api-key create). SIGTERM finishes in-flight requests first.
    """
    import uvicorn

    from dfscan.serve import create_app

    settings = from_env(
        db_url=db_url, model=model, serve_host=serve_host, serve_port=serve_port, serve_roots=parse_roots(serve_roots),
        batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms, max_upload_bytes=max_upload_bytes,
        max_upload_files=max_upload_files, request_timeout_s=request_timeout_s, threshold=threshold,
        runtime=runtime, decoder=decoder, precision=precision, engine_dir=engine_dir,
        intra_op_threads=intra_op_threads, broker_url=broker_url, **face_settings(faces),
    )
    if settings.model is None:
        raise click.UsageError("no model given: pass --model PATH or set DFSCAN_MODEL")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.serve_host, port=settings.serve_port, log_level=log_level,
                            timeout_keep_alive=5, timeout_graceful_shutdown=30, limit_concurrency=1024,
                            server_header=False, lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise click.ClickException("the server did not start (see the log above)")


@click.group("api-key")
def api_key() -> None:
    """Bearer tokens of `dfscan serve`: stored hashed; each key's requests are counted."""


@api_key.command("create")
@click.option("--name", required=True, help="Who or what uses the key (a service, a team).")
@db_option
@json_option("the new key")
@reports_errors
def create(name: str, db_url: str, as_json: bool) -> None:
    """Create a key; its token and callback-signing secret are printed once, never stored in clear."""
    from dfscan.db.api_keys import create_api_key

    with migrated_database(db_url) as sessions, sessions.begin() as session:
        new = create_api_key(session, name)
    if as_json:
        click.echo(json.dumps({"id": new.info.id, "name": new.info.name, "prefix": new.info.prefix,
                               "token": new.token, "signing_secret": new.signing_secret}))
        return
    click.echo(f"API key {new.info.id} ({new.info.name}) created. Shown once; keep both:")
    click.echo(f"  token:          {new.token}")
    click.echo(f"  signing secret: {new.signing_secret}   (verifies X-Dfscan-Signature on callbacks)")


@api_key.command("list")
@db_option
@json_option("the keys")
@reports_errors
def list_keys(db_url: str, as_json: bool) -> None:
    """Keys with their request counts (tokens are not stored, only their prefixes)."""
    from dfscan.db.api_keys import list_api_keys

    with migrated_database(db_url) as sessions, sessions() as session:
        keys = list_api_keys(session)
    if as_json:
        click.echo(json.dumps([k.__dict__ for k in keys], default=str))
        return
    click.echo(f"{'id':>4}  {'name':<24} {'prefix':<10} {'requests':>9}  {'state':<8} last used")
    for k in keys:
        state = "revoked" if k.revoked_at else "active"
        click.echo(f"{k.id:>4}  {k.name:<24} {k.prefix:<10} {k.requests:>9}  {state:<8} {k.last_used_at or '-'}")


@api_key.command("revoke")
@click.argument("key")
@db_option
@reports_errors
def revoke(key: str, db_url: str) -> None:
    """Revoke KEY (its id, name or prefix); the server refuses it within a second."""
    from dfscan.db.api_keys import revoke_api_key

    with migrated_database(db_url) as sessions, sessions.begin() as session:
        info = revoke_api_key(session, key)
    click.echo(f"API key {info.id} ({info.name}) revoked")


COMMANDS = [serve, api_key]
