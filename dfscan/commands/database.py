"""`dfscan migrate`: bring a database's schema up to date (deployments run it once before workers)."""

from __future__ import annotations

import click

from dfscan.commands._options import db_option, reports_errors
from dfscan.core.redact import mask_url


@click.command()
@db_option
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@reports_errors
def migrate(db_url: str, revision: str) -> None:
    """Apply the Alembic migrations to the results database.

    Every command migrates on start, so this is only needed where a deployment
    wants the schema in place before any worker starts (a Kubernetes Job, a
    compose service that runs once).
    """
    from dfscan import db

    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, revision)
    finally:
        engine.dispose()
    click.echo(f"{mask_url(db_url)}: schema at {revision}")


COMMANDS = [migrate]
