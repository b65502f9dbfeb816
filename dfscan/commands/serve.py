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
    provenance_options,
    provenance_settings,
    json_option,
    migrated_database,
    model_option,
    reports_errors,
    runtime_options,
    setting_option,
    threads_option,
)
from dfscan.core.settings import from_env, parse_allow, parse_roots
from dfscan.db.models import API_KEY_ROLES


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
@setting_option("--ops-bind", field="ops_bind",
                help="HOST:PORT where /metrics, /docs and /openapi.json are served without a key (a private "
                     "address); unset, they are served on the API's bind to admin keys only.")
@setting_option("--callback-allow", field="callback_allow",
                help="Hosts, addresses or CIDR networks callbacks may reach besides public addresses, "
                     "comma-separated (an internal receiver).")
@setting_option("--callback-deadline", field="callback_deadline_s", type=float,
                help="Seconds one callback delivery may take in all (connect, send, read).")
@setting_option("--callback-max-response-bytes", field="callback_max_response_bytes", type=int,
                help="Most bytes of a callback receiver's answer read.")
@setting_option("--callback-parallel", field="callback_parallel", type=int,
                help="Callback deliveries at once.")
@setting_option("--max-scans", field="max_scans", type=int,
                help="Scans run at once (each on the server's one model); the rest wait, status 'queued'.")
@setting_option("--max-queued-scans", field="max_queued_scans", type=int,
                help="Scans waiting for a slot at most (429 with Retry-After beyond).")
@setting_option("--max-uploads-per-key", field="max_uploads_per_key", type=int,
                help="/v1/score requests of one API key in flight at once (429 with Retry-After beyond).")
@setting_option("--max-uploads", field="max_uploads", type=int,
                help="/v1/score requests in flight at once, all keys together (429 with Retry-After beyond).")
@setting_option("--max-connections", field="max_connections", type=int,
                help="Connections served at once (503 beyond).")
@runtime_options
@face_options
@provenance_options
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
        intra_op_threads=intra_op_threads, broker_url=broker_url, batches=faces.pop("batches", None),
        **face_settings(faces),
        **provenance_settings(faces), **_callback_settings(faces), **_limit_settings(faces), ops_bind=faces.pop("ops_bind", None),
    )
    if settings.model is None:
        raise click.UsageError("no model given: pass --model PATH or set DFSCAN_MODEL")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.serve_host, port=settings.serve_port, log_level=log_level,
                            timeout_keep_alive=5, timeout_graceful_shutdown=30,
                            limit_concurrency=settings.max_connections,
                            server_header=False, lifespan="on")
    server = uvicorn.Server(config)
    ops = _start_ops_server(app, settings, log_level)
    try:
        server.run()
    finally:
        if ops is not None:
            ops.should_exit = True
    if not server.started:
        raise click.ClickException("the server did not start (see the log above)")


def _start_ops_server(app: Any, settings: Any, log_level: str) -> Any:
    """With ``--ops-bind``, the operations endpoints' server in a thread of its own, started; else ``None``."""
    import threading
    import time

    import uvicorn

    from dfscan.core.settings import parse_bind
    from dfscan.serve import ops_app

    if settings.ops_bind is None:
        return None
    host, port = parse_bind(settings.ops_bind)
    server = uvicorn.Server(uvicorn.Config(ops_app(app), host=host, port=port, log_level=log_level, lifespan="off",
                                           server_header=False, limit_concurrency=64))
    thread = threading.Thread(target=server.run, name="ops-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise click.ClickException(f"the operations server did not start on {settings.ops_bind} (see the log)")
        time.sleep(0.05)
    return server


def _callback_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the callback options from the command's keyword arguments (for ``from_env``)."""
    names = ("callback_allow", "callback_deadline_s", "callback_max_response_bytes", "callback_parallel")
    values = {name: kwargs.pop(name, None) for name in names}
    values["callback_allow"] = parse_allow(values["callback_allow"])
    return values


def _limit_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the limits on work in flight from the command's keyword arguments (for ``from_env``)."""
    names = ("max_scans", "max_queued_scans", "max_uploads_per_key", "max_uploads", "max_connections")
    return {name: kwargs.pop(name, None) for name in names}


@click.group("api-key")
def api_key() -> None:
    """Bearer tokens of `dfscan serve`: stored hashed; each key's requests are counted."""


@api_key.command("create")
@click.option("--name", required=True, help="Who or what uses the key (a service, a team).")
@click.option("--role", type=click.Choice(API_KEY_ROLES), default=API_KEY_ROLES[0], show_default=True,
              envvar="DFSCAN_API_KEY_ROLE", show_envvar=True,
              help="scanner: sees and cancels the scans it starts; reviewer: reviews the scans of its team's keys "
                   "(/review); admin: every scan (command-line and scheduled ones too) and /metrics, /docs, "
                   "/openapi.json.")
@click.option("--team", default=None, envvar="DFSCAN_API_KEY_TEAM", show_envvar=True,
              help="The key's team: a reviewer key sees the scans started by keys of its team.")
@db_option
@json_option("the new key")
@reports_errors
def create(name: str, role: str, team: str | None, db_url: str, as_json: bool) -> None:
    """Create a key; its token and callback-signing secret are printed once, never stored in clear."""
    from dfscan.db.api_keys import create_api_key

    with migrated_database(db_url) as sessions, sessions.begin() as session:
        new = create_api_key(session, name, role, team)
    if as_json:
        click.echo(json.dumps({"id": new.info.id, "name": new.info.name, "prefix": new.info.prefix, "role": role,
                               "team": team,
                               "token": new.token, "signing_secret": new.signing_secret}))
        return
    click.echo(f"API key {new.info.id} ({new.info.name}, {role}) created. Shown once; keep both:")
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
    click.echo(f"{'id':>4}  {'name':<24} {'prefix':<10} {'role':<8} {'requests':>9}  {'state':<8} last used")
    for k in keys:
        state = "revoked" if k.revoked_at else "active"
        click.echo(f"{k.id:>4}  {k.name:<24} {k.prefix:<10} {k.role:<8} {k.requests:>9}  {state:<8} "
                   f"{k.last_used_at or '-'}")


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
